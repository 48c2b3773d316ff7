"""``Posterior``: parameter draws of a state-space model, and what follows from them.

Every derived quantity (latent paths, predictive emissions, forecasts, the
per-step log predictive density) is computed draw by draw from the parameter
draws and the model's own arguments, in one compiled ``lax.map`` over draws.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._jit import jit_by_arrays
from ..inference import DEFAULT_BACKEND
from ..inference.base import Backend, Capability, check_forecastable, require

def _params_of(fixed, draw):
    return {**fixed, **draw}


def _predict(problem, zs, key, num_steps):
    """Emissions y_t ~ p(y | z_t) for t = 1..T, then ``num_steps`` simulated steps ahead of z_T."""
    k_emit, k_ahead = jax.random.split(key)
    T, xs = zs.shape[0], problem.xs

    def emit(z, x, k):
        return jnp.reshape(problem.emission(z, x).sample(k), (-1,))

    emis_keys = jax.random.split(k_emit, T)
    if xs is None:
        ys = jax.vmap(lambda z, k: emit(z, None, k))(zs, emis_keys)
    else:
        ys = jax.vmap(emit)(zs, xs, emis_keys)
    out = {"emissions": ys}
    if num_steps:
        x_last = None if xs is None else problem.xs_at(T - 1)

        def step(z, k):
            k_z, k_y = jax.random.split(k)
            z = jnp.reshape(problem.transition(z, x_last).sample(k_z), (-1,))
            return z, (z, emit(z, x_last, k_y))

        _, (fz, fy) = lax.scan(step, zs[-1], jax.random.split(k_ahead, num_steps))
        out["forecast_states"], out["forecast_emissions"] = fz, fy
    return out


def _derived_of_draws(ssm, method, fixed, draws, states, keys, what, num_steps, args, kwargs):
    """Per draw, in one ``lax.map`` (one compilation; sequential because compiling a
    vmapped filter takes longer than running thousands of draws in turn):
    ``states`` (method's path sampler, unless path draws are given), ``log_predictive``
    (T,), and the predictive draws of ``_predict``."""

    def one(inputs):
        draw, zs, key = inputs
        problem = ssm.state_space(_params_of(fixed, draw), *args, **kwargs)
        k_states, k_ll, k_pred = jax.random.split(key, 3)
        out = {}
        if zs is None and ("states" in what or "predictive" in what):
            zs = method.sample_states(problem, k_states)
        if "states" in what:
            out["states"] = zs
        if "log_predictive" in what:
            out["log_predictive"] = method.log_predictive(problem, k_ll if method.requires_key else None)
        if "predictive" in what:
            if num_steps:
                check_forecastable(problem)  # at trace time
            out.update(_predict(problem, zs, k_pred, num_steps))
        return out

    return lax.map(one, (draws, states, keys))


@dataclasses.dataclass(frozen=True, eq=False)
class Posterior:
    """Draws of a state-space model's global parameters, with the model and its arguments.

    samples: {site: (chains, draws, *site shape)} constrained draws of the inferred
    global ``numpyro.sample`` sites; deterministic: other recorded global values
    (``numpyro.deterministic``); sample_stats: {name: (chains, draws)} sampler
    statistics in ArviZ's names (``diverging``, ``tree_depth``, ``n_steps``,
    ``step_size``, ``energy``, ``acceptance_rate``, ``lp``; empty for SVI);
    fixed: values of the global sites held fixed; method: the backend that
    integrated the latent path out (None: sampled jointly, then ``states`` holds
    the path draws (chains, draws, T, dz)).
    """

    ssm: object
    args: tuple
    kwargs: dict
    samples: dict
    sample_stats: dict
    fixed: dict
    method: Optional[Backend]
    sampler: str
    states: Optional[jax.Array] = None
    deterministic: dict = dataclasses.field(default_factory=dict)

    def __repr__(self):
        c, d = self.num_chains, self.num_draws
        return (f"Posterior({self.sampler}, {c} chain(s) x {d} draws of {list(self.samples)}, "
                f"{self.num_divergences} divergences)")

    # -- shapes ------------------------------------------------------------------
    @property
    def num_chains(self) -> int:
        """Number of chains (the leading axis of every draw)."""
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> int:
        """Draws per chain (the second axis)."""
        return int(next(iter(self.samples.values())).shape[1])

    @property
    def num_divergences(self) -> int:
        """Divergent transitions over all chains (``sample_stats["diverging"]``; 0 when not recorded)."""
        div = self.sample_stats.get("diverging")
        return 0 if div is None else int(np.sum(np.asarray(div)))

    def _flat(self, tree):
        n = self.num_chains * self.num_draws
        return jax.tree.map(lambda a: jnp.reshape(a, (n,) + a.shape[2:]), tree)

    def _unflat(self, tree):
        c, d = self.num_chains, self.num_draws
        return jax.tree.map(lambda a: jnp.reshape(a, (c, d) + a.shape[1:]), tree)

    def _derived_method(self):
        # Joint samplers have no filter of their own; derived filter quantities use the default one.
        return self.method if self.method is not None else DEFAULT_BACKEND

    def params(self, chain: int, draw: int) -> dict:
        """The complete global-site dict of one draw (as ``SSM`` methods take it)."""
        return _params_of(self.fixed, {k: v[chain, draw] for k, v in self.samples.items()})

    # -- derived quantities ------------------------------------------------------
    def derived(self, key, what=("states", "log_predictive", "predictive"), num_steps: int = 0, states=None) -> dict:
        """Per-draw quantities in one compiled pass, each (chains, draws, ...): ``states``
        (T, dz), ``log_predictive`` (T,), ``emissions`` (T, dy) and, with ``num_steps``,
        ``forecast_states`` / ``forecast_emissions``. See the methods below."""
        what = tuple(what)
        if states is None:
            states = self.states
        method = self._derived_method()
        if "states" in what and states is None:
            require(method, Capability.SAMPLE_STATES, needed_by="Posterior.sample_states")
        if "log_predictive" in what:
            require(method, Capability.LIKELIHOOD, needed_by="Posterior.log_likelihood")
        random = ("predictive" in what or ("states" in what and states is None)
                  or ("log_predictive" in what and method.requires_key))
        if key is None:
            if random:
                raise ValueError("pass key=jax.random.PRNGKey(...): these draws are random")
            key = jax.random.PRNGKey(0)
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
        keys = jax.random.split(key, self.num_chains * self.num_draws)
        flat = jit_by_arrays(_derived_of_draws, self.ssm, method, self.fixed,
                             self._flat(self.samples), None if states is None else self._flat(states), keys, what,
                             num_steps if "predictive" in what else 0, self.args, self.kwargs)
        return self._unflat(flat)

    def sample_states(self, key=None):
        """Latent paths, one per parameter draw: (chains, draws, T, dz).

        Marginal samplers: one draw of p(z_{1:T} | y, theta) per parameter draw
        theta (forward filtering, backward sampling for ``Kalman``: exact). Joint
        samplers: the path draws themselves (``key`` unused), so together with the
        parameter draws they are draws of the joint posterior either way.
        """
        if self.states is not None:
            return self.states
        return self.derived(key, ("states",))["states"]

    def log_likelihood(self, key=None):
        """log p(y_t | y_{1:t-1}, theta) for every time step and draw: (chains, draws, T).

        Missing steps contribute 0. Summed over time, the marginal log-likelihood of
        each draw. Joint samplers use the exact ``Kalman`` filter here. ``key``: only
        for sampling backends.
        """
        return self.derived(key, ("log_predictive",))["log_predictive"]

    def predictive(self, key, num_steps: int = 0, states=None) -> dict:
        """Posterior predictive draws, one per parameter draw.

        Returns ``emissions`` (chains, draws, T, dy): y_t ~ p(y_t | z_t, theta) with
        z a path draw (as ``sample_states``); with ``num_steps > 0`` also
        ``forecast_states`` (chains, draws, num_steps, dz) and ``forecast_emissions``
        (..., dy), paths simulated forward from each draw's z_T. ``states``: path
        draws to reuse (chains, draws, T, dz).
        """
        out = self.derived(key, ("predictive",), num_steps=num_steps, states=states)
        return {k: v for k, v in out.items() if k != "states"}

    def observations(self):
        """The data the posterior conditions on: (T, dy), NaN where missing."""
        return self.ssm.state_space(self.params(0, 0), *self.args, **self.kwargs).observations

    # -- export ------------------------------------------------------------------
    def to_arviz(self, key=None, num_forecast: int = 0, states: bool = True, predictive: bool = True,
                 log_likelihood: bool = True):
        """An ``arviz.InferenceData``; see ``ssmppl.bayes.inference_data.to_inference_data``."""
        from .inference_data import to_inference_data

        return to_inference_data(self, key=key, num_forecast=num_forecast, states=states, predictive=predictive,
                                 log_likelihood=log_likelihood)
