"""``Posterior`` -> ``arviz.InferenceData``, with named dimensions.

Axes of a parameter site get names from what they index: an axis of the state's
size is ``state``, of the emission's size ``emission`` (a second such axis in the
same site gets ``state_2``...), anything else ``<site>_dim_<i>``. Time is
``time``, forecast steps ``horizon``.
"""

from __future__ import annotations

import jax
import numpy as np


def site_dims(name, shape, dz, dy):
    """Dimension names for the non-sample axes of a site of this shape."""
    dims = []
    for i, n in enumerate(shape):
        base = "state" if n == dz else "emission" if n == dy else f"{name}_dim_{i}"
        candidate, k = base, 2
        while candidate in dims:
            candidate, k = f"{base}_{k}", k + 1
        dims.append(candidate)
    return dims


def to_inference_data(posterior, key=None, num_forecast: int = 0, states: bool = True, predictive: bool = True,
                      log_likelihood: bool = True):
    """Groups: ``posterior`` (parameters, deterministic sites and, with ``states``,
    the latent paths as ``<latent site>`` (chain, draw, time, state)),
    ``sample_stats``, ``observed_data`` (``<emission site>`` (time, emission), NaN
    where missing), ``log_likelihood`` (one-step-ahead log predictive density of
    each step, per draw; missing steps 0), ``posterior_predictive`` (emission draws
    (chain, draw, time, emission) and, with ``num_forecast``,
    ``<emission site>_forecast`` (chain, draw, horizon, emission) and
    ``<latent site>_forecast``).

    ``key`` drives the random draws (paths, predictive); default PRNGKey(0).
    """
    import arviz as az

    key = jax.random.PRNGKey(0) if key is None else key
    problem = posterior.ssm.state_space(posterior.params(0, 0), *posterior.args, **posterior.kwargs)
    names = problem.names
    dz, dy, T = problem.state_dim, problem.obs_dim, problem.length
    what = (("states",) if states else ()) + (("log_predictive",) if log_likelihood else ()) + (
        ("predictive",) if predictive else ())
    derived = posterior.derived(key, what, num_steps=num_forecast if predictive else 0) if what else {}
    dims, data = {}, {}
    for name, value in {**posterior.samples, **posterior.deterministic}.items():
        value = np.asarray(value)
        data[name] = value
        dims[name] = site_dims(name, value.shape[2:], dz, dy)
    groups = {"posterior": data}
    if states:
        data[names.latent] = np.asarray(derived["states"])
        dims[names.latent] = ["time", "state"]
    if posterior.sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in posterior.sample_stats.items()}
    groups["observed_data"] = {names.obs: np.asarray(problem.observations)}
    dims.setdefault(names.obs, ["time", "emission"])
    if predictive:
        group = {names.obs: np.asarray(derived["emissions"])}
        if num_forecast:
            group[f"{names.obs}_forecast"] = np.asarray(derived["forecast_emissions"])
            group[f"{names.latent}_forecast"] = np.asarray(derived["forecast_states"])
            dims[f"{names.obs}_forecast"] = ["horizon", "emission"]
            dims[f"{names.latent}_forecast"] = ["horizon", "state"]
        groups["posterior_predictive"] = group
    coords = {"time": np.arange(1, T + 1), "state": np.arange(dz), "emission": np.arange(dy)}
    if num_forecast:
        coords["horizon"] = np.arange(T + 1, T + num_forecast + 1)
    attrs = {"inference_library": "ssmppl", "sampler": posterior.sampler}
    idata = az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)
    if log_likelihood:
        # Same variable name as the emission site (ArviZ's convention), but one value per time step.
        ll = np.asarray(derived["log_predictive"])
        idata.extend(az.from_dict(log_likelihood={names.obs: ll}, coords=coords, dims={names.obs: ["time"]},
                                  attrs=attrs))
    return idata
