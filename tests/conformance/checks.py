"""Running the conformance problems and comparing them with the oracle (shared by the
conformance test files).

``run(name, pid, seed, dtype)`` is ``ssm.filter`` of problem ``pid`` (``cases.PROBLEMS``) by
backend ``name`` (``cases.BACKENDS``), cached: call it under the x64 setting that matches
``dtype`` (the ``x64`` fixture for "float64"), as the cache does not see that setting.
``oracle(pid)`` is the dense joint Gaussian's answer (``tests/oracles.py``).
``check_against_oracle(name, pid, fields)`` compares the fields the backend reports with the
tolerance its nature allows (``cases.NATURE``).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from conformance import cases as C
from oracles import brute_force

FILTERED = ("marginal_loglik", "log_predictive", "filtered_means", "filtered_covariances")
PREDICTED = ("predicted_means", "predicted_covariances")


@functools.lru_cache(maxsize=None)
def run(name, pid, seed=0, dtype="float64"):
    """``ssm.filter`` of problem ``pid`` by backend ``name`` with key ``seed`` (cached)."""
    ssm, params, args = C.problem(pid, np.dtype(dtype))
    backend = C.make_backend(name)
    return ssm.filter(params, *args, method=backend, key=C.key_for(backend, seed))


@functools.lru_cache(maxsize=None)
def oracle(pid):
    return brute_force(*C.oracle_inputs(pid))


POINT_SD = 1e-6  # an exact posterior sd below this is a point mass (rounding of a zero variance)


def scales(field, ref):
    """The exact posterior sd of each element of ``field``: sd for means, sd_i sd_j for
    covariances; 0 where the posterior is a point (sd below ``POINT_SD``)."""
    kind = "filtered" if field.startswith("filtered") else "predicted"
    sd = np.sqrt(np.maximum(np.diagonal(ref[f"{kind}_covariances"], axis1=-2, axis2=-1), 0.0))
    sd = np.where(sd < POINT_SD, 0.0, sd)
    return sd if field.endswith("means") else sd[..., :, None] * sd[..., None, :]


def assert_exact(results, ref, fields):
    (result,) = results
    for field in fields:
        value = getattr(result, field, None)
        if value is not None:
            np.testing.assert_allclose(np.asarray(value), ref[field], rtol=C.EXACT_TOL, atol=C.EXACT_TOL,
                                       err_msg=field)


def assert_mc_field(samples, exact, scale, what):
    """Each element's mean error over the keys within ``Z_FIELD`` of its standard error (estimated
    from its spread over the keys); elements whose exact sd is 0 (a point posterior) must
    match to 1e-6."""
    samples = np.asarray(samples, np.float64)
    K = samples.shape[0]
    point = np.broadcast_to(scale == 0, exact.shape)
    err = samples - exact
    assert np.all(np.abs(err[:, point]) <= 1e-6), f"{what}: not exact where the posterior is a point"
    if point.all():
        return
    e = err[:, ~point] / np.broadcast_to(scale, exact.shape)[~point]
    se = np.sqrt(e.var(axis=0, ddof=1) / K)
    z = np.abs(e.mean(axis=0)) / np.maximum(se, 1e-12)
    i = int(np.argmax(z))
    assert z[i] <= C.Z_FIELD, (
        f"{what}: mean error over {K} keys {e.mean(axis=0)[i]:.3g} posterior sd, {z[i]:.1f} standard errors "
        f"(element {i} of the non-degenerate ones)")


def assert_mc(results, ref, fields):
    if "marginal_loglik" in fields:
        lls = np.array([float(r.marginal_loglik) for r in results])
        sd = lls.std(ddof=1)
        err = lls.mean() - ref["marginal_loglik"]
        assert abs(err) <= C.Z_LL * sd / np.sqrt(len(lls)) + 0.5 * sd ** 2 + 1e-9, (
            f"log-likelihood: mean error {err:.4g} over {len(lls)} keys, sd {sd:.4g}")
    for field in fields:
        if field not in ("marginal_loglik", "log_predictive") and getattr(results[0], field, None) is not None:
            assert_mc_field([getattr(r, field) for r in results], ref[field], scales(field, ref), field)


def assert_ensf_close(results, ref, fields):
    """EnSF has no likelihood; its filtered means are biased at any ensemble size (a damped,
    paired approximation of the posterior score: EnSF(200) and EnSF(1000) gave the same errors,
    about 0.7 posterior sd RMS on the vector model, 0.5 on the scalar one, at most 1.5), so
    it cannot be held to a Monte Carlo tolerance. What it must do is assimilate: land within the
    exact posterior's spread (RMS error below 1 posterior sd, every element below 2.5 sd) and
    closer to the exact filtered mean than the forecast it starts from (the exact predicted mean)."""
    scale = scales("filtered_means", ref)
    keep = scale > 0
    e = np.array([(np.asarray(r.filtered_means) - ref["filtered_means"])[keep] / scale[keep] for r in results])
    assert np.all(np.isfinite(e))
    rms, worst = np.sqrt((e ** 2).mean()), np.abs(e).max()
    forecast = (ref["predicted_means"] - ref["filtered_means"])[keep] / scale[keep]
    rms_forecast = np.sqrt((forecast ** 2).mean())
    assert rms < C.ENSF_RMS_SD and worst < C.ENSF_MAX_SD, (
        f"EnSF filtered means: RMS error {rms:.3f} sd, worst {worst:.3f} sd")
    assert rms < rms_forecast, f"EnSF RMS error {rms:.3f} sd is no better than the forecast's {rms_forecast:.3f}"


_REFUSAL = re.compile(r"(?i)zero|singular|degenerate|noiseless")


def check_against_oracle(name, pid, fields):
    ref = oracle(pid)
    try:
        results = [run(name, pid, seed) for seed in range(C.num_keys(name))]
    except ValueError as error:
        # a backend that cannot use a zero-noise observation may refuse it, clearly
        if pid in C.DEGENERATE_EMISSION and C.NATURE[name] != "exact":
            message = str(error)
            assert "'y'" in message and _REFUSAL.search(message), f"unclear refusal: {message}"
            return
        raise
    {"exact": assert_exact, "monte_carlo": assert_mc, "no_likelihood": assert_ensf_close}[C.NATURE[name]](
        results, ref, fields)
