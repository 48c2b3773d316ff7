"""Models, data sets and tolerances shared by the backend conformance tests.

Everything here uses the public API only (``ssmppl.SSM``, ``ssmppl.inference``). Two small
linear Gaussian models, on which every backend has a known answer (the Kalman filter's):

* ``vector_model``: a 2-d state driven by a 1-d input through the scan's ``xs`` and a 3-d
  emission. The transition is a ``MultivariateNormal`` with covariance ``Q`` (so invalid
  covariances can be expressed), the emission independent ``Normal``s with scales ``r`` (so
  a zero-noise component can be: a ``MultivariateNormal`` needs a Cholesky factor).
* ``scalar_model(q, r)``: a scalar state and a scalar emission, no inputs; ``q`` and ``r`` (the
  noise scales) are the initial values of its ``numpyro.param`` sites, so ``scalar_model(q=0.0)``
  is a model whose own transition is ``Normal(loc, 0.0)``.

Every case of a model is a change of data or parameter values, never of shapes or of the
params dict's keys, so one compiled filter per backend and model serves all of them
(``jit_by_arrays`` keys on the structure, shapes and dtypes of its arguments).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan

import ssmppl
import ssmppl.inference as inference
from ssmppl.inference import (EKF, UKF, AuxiliaryPF, BootstrapPF, EnKF, EnSF, GaussHermite, GuidedPF, Kalman,
                              MomentMatching)

# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------

#: One entry per backend configuration, default settings but for the sample sizes. Every
#: ``Backend`` subclass exported in ``ssmppl.inference.__all__`` must have an entry named after
#: it (``test_every_exported_backend_has_an_entry`` fails otherwise); the Kalman forms other than
#: the default are extra entries.
BACKENDS = {
    "Kalman": lambda: Kalman(),
    "Kalman[square_root]": lambda: Kalman(square_root=True),
    "Kalman[parallel]": lambda: Kalman(parallel=True),
    "EKF": lambda: EKF(),
    "UKF": lambda: UKF(),
    "GaussHermite": lambda: GaussHermite(),
    "MomentMatching": lambda: MomentMatching(),
    "BootstrapPF": lambda: BootstrapPF(2000),
    "GuidedPF": lambda: GuidedPF(2000),
    "AuxiliaryPF": lambda: AuxiliaryPF(2000),
    "EnKF": lambda: EnKF(200),
    "EnSF": lambda: EnSF(200),
}

#: How a backend's answer relates to the Kalman filter's on a linear Gaussian model.
#: "exact": the same numbers up to rounding (float64: 1e-8). "monte_carlo": a random estimate,
#: checked against its own spread over keys (``mc_tolerance``). "no_likelihood": EnSF, filtered
#: means only (``ENSF_MEAN_TOL``).
NATURE = {
    "Kalman": "exact", "Kalman[square_root]": "exact", "Kalman[parallel]": "exact", "EKF": "exact",
    "UKF": "exact", "GaussHermite": "exact", "MomentMatching": "exact",
    "BootstrapPF": "monte_carlo", "GuidedPF": "monte_carlo", "AuxiliaryPF": "monte_carlo",
    "EnKF": "monte_carlo", "EnSF": "no_likelihood",
}


# tolerances (how they are used: checks.py)
EXACT_TOL = 1e-8  # rtol and atol of an exact backend against the float64 oracle
K_MC = 16  # keys per problem for a Monte Carlo backend (a particle filter run costs ~5 ms at T = 8)
K_ENSF = 4  # EnSF: its error is bias (checks.assert_ensf_close), a few keys show it
Z_LL = 5.0  # standard errors allowed for the mean log-likelihood error over the keys
Z_FIELD = 6.0  # the same for each element of a moment field: the largest of up to 32 t-statistics
#                of 15 degrees of freedom, so a little more room (P(|t_15| > 6) = 2e-5)
ENSF_RMS_SD, ENSF_MAX_SD = 1.0, 2.5  # EnSF's filtered means: RMS and largest error in posterior sds


def num_keys(name):
    """How many keys a backend's problem is run with (1 for a deterministic backend)."""
    return {"exact": 1, "monte_carlo": K_MC, "no_likelihood": K_ENSF}[NATURE[name]]


def exported_backends():
    """Names of the ``Backend`` subclasses in ``ssmppl.inference.__all__`` (``Backend`` itself excluded)."""
    out = []
    for name in inference.__all__:
        obj = getattr(inference, name)
        if isinstance(obj, type) and issubclass(obj, inference.Backend) and obj is not inference.Backend:
            out.append(name)
    return out


def make_backend(name):
    return BACKENDS[name]()


def key_for(backend, seed=0):
    """A key for a sampling backend, None for a deterministic one."""
    return jax.random.PRNGKey(seed) if backend.requires_key else None


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------

DZ, DY, DU = 2, 3, 1
T = 8

# Python lists, not numpy arrays: JAX caches the constant it makes of a numpy array inside a
# trace, so a module-level array first traced under float64 comes back as float64 in a later
# float32 trace of the same process (jax 0.10), breaking the float32 tests after the float64 ones.
VECTOR_PARAMS = {
    "m0": [0.5, -0.3],
    "P0": [[1.0, 0.3], [0.3, 0.8]],
    "F": [[0.9, 0.2], [-0.1, 0.7]],
    "B": [[0.5], [-0.4]],
    "Q": [[0.09, 0.02], [0.02, 0.16]],
    "H": [[1.0, 0.0], [0.5, 1.0], [-0.3, 0.8]],
    "D": [[0.2], [0.0], [-0.1]],
    "r": [0.5, 0.4, 0.3],
}


def vector_model(y=None, u=None, T=None):
    """z_0 ~ N(m0, P0); z_t ~ N(F z_{t-1} + B u_t, Q); y_t ~ N(H z_t + D u_t, diag(r^2)).

    u (T, 1) rides in the scan's xs beside y (T, 3)."""
    p = {k: numpyro.param(k, jnp.asarray(v)) for k, v in VECTOR_PARAMS.items()}

    def step(z_prev, xs):
        y_t, u_t = xs
        z = numpyro.sample("z", dist.MultivariateNormal(p["F"] @ z_prev + p["B"] @ u_t, p["Q"]))
        numpyro.sample("y", dist.Normal(p["H"] @ z + p["D"] @ u_t, p["r"]).to_event(1), obs=y_t)
        return z, None

    z0 = numpyro.sample("z0", dist.MultivariateNormal(p["m0"], p["P0"]))
    scan(step, z0, (y, u), length=T)


def scalar_model(q=None, r=None):
    """z_0 ~ N(0.2, 1); z_t ~ N(0.8 z_{t-1} + 0.1, q^2); y_t ~ N(1.5 z_t - 0.2, r^2), all scalar.

    ``q``, ``r`` None: ``numpyro.param`` sites of those names (initial values 0.3 and 0.5), to be
    overridden through ``params``. A number: a literal constant of the model, so ``scalar_model(q=0.0)``
    writes ``dist.Normal(loc, 0.0)`` in its step."""

    def model(y=None, T=None):
        qs = numpyro.param("q", jnp.asarray(SCALAR_DEFAULTS["q"])) if q is None else q
        rs = numpyro.param("r", jnp.asarray(SCALAR_DEFAULTS["r"])) if r is None else r

        def step(z_prev, y_t):
            z = numpyro.sample("z", dist.Normal(0.8 * z_prev + 0.1, qs))
            numpyro.sample("y", dist.Normal(1.5 * z - 0.2, rs), obs=y_t)
            return z, None

        z0 = numpyro.sample("z0", dist.Normal(0.2, 1.0))
        scan(step, z0, y, length=T)

    model.__name__ = f"scalar_model_q{q}_r{r}"
    return model


SCALAR_DEFAULTS = {"q": 0.3, "r": 0.5}


def vector_params(dtype=np.float64, **overrides):
    """The vector model's parameters as a params dict (arrays of ``dtype``), with overrides."""
    return {k: np.asarray(v, dtype) for k, v in {**VECTOR_PARAMS, **overrides}.items()}


def inputs(T_=T, dtype=np.float64):
    return np.asarray(np.sin(0.7 * np.arange(T_)) + 0.5, dtype)[:, None]


def vector_data(T_=T, seed=0, dtype=np.float64):
    """(y (T, 3), u (T, 1)): a draw from the vector model, simulated in numpy (no backend involved)."""
    rng = np.random.default_rng(seed)
    p = {k: np.asarray(v) for k, v in VECTOR_PARAMS.items()}
    u = inputs(T_)
    z = rng.multivariate_normal(p["m0"], p["P0"])
    ys = []
    for t in range(T_):
        z = p["F"] @ z + p["B"] @ u[t] + rng.multivariate_normal(np.zeros(DZ), p["Q"])
        ys.append(p["H"] @ z + p["D"] @ u[t] + p["r"] * rng.normal(size=DY))
    return np.asarray(ys, dtype), np.asarray(u, dtype)


def scalar_data(T_=T, seed=1, q=0.3, r=0.5):
    """y (T,): a draw from the scalar model (numpy), with its default noise scales."""
    rng = np.random.default_rng(seed)
    z = 0.2 + rng.normal()
    ys = []
    for _ in range(T_):
        z = 0.8 * z + 0.1 + q * rng.normal()
        ys.append(1.5 * z - 0.2 + r * rng.normal())
    return np.asarray(ys)


# ------------------------------------------------------------------------------------------------
# problems: a model, its parameters and data, by name
# ------------------------------------------------------------------------------------------------

def _missing_step(y):
    y = y.copy()
    y[3] = np.nan
    return y


def _partly_missing(y):
    y = y.copy()
    y[1, 0] = np.nan
    y[4, 1:] = np.nan
    y[6, 2] = np.nan
    return y


def _identity(y):
    return y


ZERO_R = [0.5, 0.0, 0.3]

#: The vector model's cases: parameter overrides and a change of the data. Same shapes for all.
VECTOR_CASES = {
    "linear_gaussian": ({}, _identity),
    "missing_step": ({}, _missing_step),
    "partly_missing": ({}, _partly_missing),
    # the second emission component observed without noise: a singular observed R block at the
    # steps where it is observed with others, next to steps where it is missing
    "singular_R_partly_missing": ({"r": ZERO_R}, _partly_missing),
    "zero_R_component": ({"r": ZERO_R}, _identity),
}

#: The scalar model's cases: zero-variance noise given as parameter values (traced, not literal).
SCALAR_CASES = {
    "linear_gaussian": {},
    "zero_Q": {"q": 0.0},
    "zero_R": {"r": 0.0},
}

#: Zero-variance noise written into the model itself: ``dist.Normal(loc, 0.0)``.
LITERAL_CASES = {"zero_Q": {"q": 0.0}, "zero_R": {"r": 0.0}}

PROBLEMS = ([f"vector/{c}" for c in VECTOR_CASES] + ["vector_T1"] + [f"scalar/{c}" for c in SCALAR_CASES]
            + [f"literal/{c}" for c in LITERAL_CASES])

#: Problems where some observed component has zero noise: the emission density is a point mass
#: there, which a filter that weights by that density (bootstrap and auxiliary particle filters),
#: or needs R^{-1} (ensemble filters), cannot use. Such a backend may refuse them (a ValueError
#: naming the emission site and its zero noise) instead of agreeing with the exact answer.
DEGENERATE_EMISSION = ("vector/singular_R_partly_missing", "vector/zero_R_component", "scalar/zero_R",
                       "literal/zero_R")

VECTOR_SSM = ssmppl.SSM(vector_model)
_SCALAR_SSMS = {}


def scalar_ssm(q=None, r=None):
    """One ``SSM`` per scalar model variant, shared, so its compiled filters are reused."""
    if (q, r) not in _SCALAR_SSMS:
        _SCALAR_SSMS[(q, r)] = ssmppl.SSM(scalar_model(q, r))
    return _SCALAR_SSMS[(q, r)]


def problem(pid, dtype=np.float64):
    """``(ssm, params, args)`` of a named problem (one of ``PROBLEMS``): call
    ``ssm.filter(params, *args, method=..., key=...)``."""
    kind, _, case = pid.partition("/")
    if kind == "vector":
        overrides, change = VECTOR_CASES[case]
        y, u = vector_data(dtype=dtype)
        return VECTOR_SSM, vector_params(dtype, **overrides), (change(y), u)
    if kind == "vector_T1":
        y, u = vector_data(T_=1, dtype=dtype)
        return VECTOR_SSM, vector_params(dtype), (y, u)
    if kind == "scalar":  # every case passes both sites: one params structure, one compiled filter
        params = {k: np.asarray(v, dtype) for k, v in {**SCALAR_DEFAULTS, **SCALAR_CASES[case]}.items()}
        return scalar_ssm(), params, (np.asarray(scalar_data(), dtype),)
    if kind == "literal":
        return scalar_ssm(**LITERAL_CASES[case]), {}, (np.asarray(scalar_data(), dtype),)
    raise KeyError(pid)


def oracle_inputs(pid):
    """Arguments of ``oracles.brute_force`` (the dense joint Gaussian) for a problem."""
    kind, _, case = pid.partition("/")
    if kind in ("vector", "vector_T1"):
        _, params, (y, u) = problem(pid)
        p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        T_ = len(y)
        return (p["m0"], p["P0"], [p["F"]] * T_, [p["B"] @ u[t] for t in range(T_)], [p["Q"]] * T_,
                [p["H"]] * T_, [p["D"] @ u[t] for t in range(T_)], [np.diag(p["r"] ** 2)] * T_, y)
    noise = {**SCALAR_DEFAULTS, **(SCALAR_CASES[case] if kind == "scalar" else LITERAL_CASES[case])}
    y = scalar_data()
    T_ = len(y)
    one = lambda x: [np.array([[x]])] * T_  # noqa: E731
    vec = lambda x: [np.array([x])] * T_  # noqa: E731
    return (np.array([0.2]), np.eye(1), one(0.8), vec(0.1), one(noise["q"] ** 2), one(1.5), vec(-0.2),
            one(noise["r"] ** 2), y[:, None])
