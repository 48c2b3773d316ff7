"""Independent references: a linear Gaussian SSM as one joint Gaussian, in numpy.

z_0 ~ N(m0, P0); z_t = F_t z_{t-1} + c_t + N(0, Q_t); y_t = H_t z_t + d_t + N(0, R_t).
Everything is built as explicit linear maps of the independent noises, so no
recursion is shared with the filters under test.
"""

import numpy as np


def joint_gaussian(m0, P0, F, c, Q, H, d, R):
    """Mean and covariance of (z_0, z_1..z_T, y_1..y_T), flattened.

    F, c, Q, H, d, R are per-step lists (length T).
    """
    T = len(F)
    dz, dy = len(m0), len(d[0])
    nz = (T + 1) * dz
    n_noise = dz + T * dz + T * dy
    # x = mean + A @ e with e ~ N(0, blockdiag(P0, Q_1..Q_T, R_1..R_T))
    A = np.zeros((nz + T * dy, n_noise))
    mean = np.zeros(nz + T * dy)
    noise_cov = np.zeros((n_noise, n_noise))
    noise_cov[:dz, :dz] = P0
    A[:dz, :dz] = np.eye(dz)
    mean[:dz] = m0
    for t in range(1, T + 1):
        zi = slice(t * dz, (t + 1) * dz)
        zp = slice((t - 1) * dz, t * dz)
        qi = slice(dz + (t - 1) * dz, dz + t * dz)
        noise_cov[qi, qi] = Q[t - 1]
        A[zi] = F[t - 1] @ A[zp]
        A[zi, qi] += np.eye(dz)
        mean[zi] = F[t - 1] @ mean[zp] + c[t - 1]
        yi = slice(nz + (t - 1) * dy, nz + t * dy)
        ri = slice(dz + T * dz + (t - 1) * dy, dz + T * dz + t * dy)
        noise_cov[ri, ri] = R[t - 1]
        A[yi] = H[t - 1] @ A[zi]
        A[yi, ri] += np.eye(dy)
        mean[yi] = H[t - 1] @ mean[zi] + d[t - 1]
    return mean, A @ noise_cov @ A.T


def condition(mean, cov, idx_obs, values):
    """Gaussian conditioning on x[idx_obs] = values: (mean, cov, log p(values))."""
    idx_obs = np.asarray(idx_obs, int)
    rest = np.setdiff1d(np.arange(len(mean)), idx_obs)
    S = cov[np.ix_(idx_obs, idx_obs)]
    C = cov[np.ix_(rest, idx_obs)]
    v = values - mean[idx_obs]
    K = np.linalg.solve(S, C.T).T
    m = mean.copy()
    m[rest] = mean[rest] + K @ v
    P = np.zeros_like(cov)
    P[np.ix_(rest, rest)] = cov[np.ix_(rest, rest)] - K @ C.T
    sign, logdet = np.linalg.slogdet(S)
    ll = -0.5 * (v @ np.linalg.solve(S, v) + logdet + len(v) * np.log(2 * np.pi))
    return m, P, ll


def brute_force(m0, P0, F, c, Q, H, d, R, ys):
    """Filtered, predicted and smoothed moments and log-likelihood by direct conditioning.

    ys (T, dy) with NaN for missing entries. Returns a dict of numpy arrays
    named like ssmppl's result fields.
    """
    T, dy = ys.shape
    dz = len(m0)
    nz = (T + 1) * dz
    mean, cov = joint_gaussian(m0, P0, F, c, Q, H, d, R)
    flat_y = ys.reshape(-1)
    obs_idx = [nz + i for i in range(T * dy) if not np.isnan(flat_y[i])]
    out = {k: [] for k in ("filtered_means", "filtered_covariances", "predicted_means", "predicted_covariances")}
    lls = []
    prev_ll = 0.0
    for t in range(1, T + 1):
        zi = slice(t * dz, (t + 1) * dz)
        before = [i for i in obs_idx if i < nz + (t - 1) * dy]
        upto = [i for i in obs_idx if i < nz + t * dy]
        for name, idx in (("predicted", before), ("filtered", upto)):
            if idx:
                m, P, ll = condition(mean, cov, idx, flat_y[np.array(idx) - nz])
            else:
                m, P, ll = mean, cov, 0.0
            out[name + "_means"].append(m[zi])
            out[name + "_covariances"].append(P[zi, zi])
        lls.append(ll - prev_ll)
        prev_ll = ll
    m, P, ll = condition(mean, cov, obs_idx, flat_y[np.array(obs_idx) - nz]) if obs_idx else (mean, cov, 0.0)
    out = {k: np.array(v) for k, v in out.items()}
    out["log_predictive"] = np.array(lls)
    out["marginal_loglik"] = ll
    out["smoothed_means"] = np.array([m[t * dz:(t + 1) * dz] for t in range(1, T + 1)])
    out["smoothed_covariances"] = np.array([P[t * dz:(t + 1) * dz, t * dz:(t + 1) * dz] for t in range(1, T + 1)])
    out["smoothed_cross_covariances"] = np.array(
        [P[t * dz:(t + 1) * dz, (t + 1) * dz:(t + 2) * dz] for t in range(1, T)]
    )
    out["initial_smoothed_mean"] = m[:dz]
    out["initial_smoothed_covariance"] = P[:dz, :dz]
    out["initial_cross_covariance"] = P[:dz, dz:2 * dz]
    return out


def rk4_numpy(f, x, dt, n):
    """n classical RK4 steps of dx/dt = f(x) in plain NumPy (an independent integrator for the models)."""
    for _ in range(n):
        k1 = f(x)
        k2 = f(x + dt / 2 * k1)
        k3 = f(x + dt / 2 * k2)
        k4 = f(x + dt * k3)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
