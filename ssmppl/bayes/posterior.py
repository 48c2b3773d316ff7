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
from ..errors import ModelStructureError
from ..inference.base import Backend
from ..inference.kalman import Kalman
from ..models.dependence import reads

_DRAW_BATCH = 64  # draws vectorised together inside the map over draws


def _map_draws(fn, draws, keys):
    """fn(params, key) over flat draws ({name: (N, ...)}, keys (N, 2))."""
    n = keys.shape[0]
    return lax.map(lambda a: fn(*a), (draws, keys), batch_size=min(n, _DRAW_BATCH))


def _params_of(fixed, draw):
    return {**fixed, **draw}


def _states_of_draws(ssm, method, fixed, draws, keys, args, kwargs):
    def one(draw, key):
        problem = ssm.state_space(_params_of(fixed, draw), *args, **kwargs)
        return method.sample_states(problem, key)

    return _map_draws(one, draws, keys)


def _log_predictive_of_draws(ssm, method, fixed, draws, keys, args, kwargs):
    def one(draw, key):
        problem = ssm.state_space(_params_of(fixed, draw), *args, **kwargs)
        return method.log_predictive(problem, key if method.requires_key else None)

    return _map_draws(one, draws, keys)


def _check_forecastable(problem):
    """Forecasting needs the step's distributions not to read the scan's inputs (unknown in the future)."""
    if problem.xs is None:
        return
    z, x0 = jnp.zeros(problem.state_dim, problem.observations.dtype), problem.xs_example()
    for fn, site in ((problem.transition, problem.names.latent), (problem.emission, problem.names.obs)):
        if reads(lambda x: jax.tree.leaves(fn(z, x)), 0, x0):
            raise ModelStructureError(
                f"cannot forecast: the distribution of site {site!r} reads the scan's inputs, whose future values "
                "are unknown. Extend the inputs over the forecast horizon with NaN observations and use "
                "predictive(key) instead"
            )


def _predict_draws(ssm, fixed, draws, states, keys, num_steps, args, kwargs):
    """Per draw: emissions y_t ~ p(y | z_t) for t = 1..T, then ``num_steps`` simulated steps ahead."""

    def one(draw_and_states, key):
        draw, zs = draw_and_states
        problem = ssm.state_space(_params_of(fixed, draw), *args, **kwargs)
        k_emit, k_ahead = jax.random.split(key)
        T = zs.shape[0]
        xs = problem.xs

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

    return _map_draws(one, (draws, states), keys)


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
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.samples.values())).shape[1])

    @property
    def num_divergences(self) -> int:
        div = self.sample_stats.get("diverging")
        return 0 if div is None else int(np.sum(np.asarray(div)))

    def _flat(self, tree):
        n = self.num_chains * self.num_draws
        return jax.tree.map(lambda a: jnp.reshape(a, (n,) + a.shape[2:]), tree)

    def _unflat(self, tree):
        c, d = self.num_chains, self.num_draws
        return jax.tree.map(lambda a: jnp.reshape(a, (c, d) + a.shape[1:]), tree)

    def _keys(self, key):
        if key is None:
            raise ValueError("pass key=jax.random.PRNGKey(...): draws are random")
        return jax.random.split(key, self.num_chains * self.num_draws)

    def _derived_method(self):
        # Joint samplers have no filter of their own; derived filter quantities use the exact one.
        return self.method if self.method is not None else Kalman()

    def params(self, chain: int, draw: int) -> dict:
        """The complete global-site dict of one draw (as ``SSM`` methods take it)."""
        return _params_of(self.fixed, {k: v[chain, draw] for k, v in self.samples.items()})

    # -- derived quantities ------------------------------------------------------
    def sample_states(self, key=None):
        """Latent paths, one per parameter draw: (chains, draws, T, dz).

        Marginal samplers: one draw of p(z_{1:T} | y, theta) per parameter draw
        theta (forward filtering, backward sampling for ``Kalman``: exact). Joint
        samplers: the path draws themselves (``key`` unused), so together with the
        parameter draws they are draws of the joint posterior either way.
        """
        if self.states is not None:
            return self.states
        method = self.method
        flat = jit_by_arrays(_states_of_draws, self.ssm, method, self.fixed, self._flat(self.samples),
                             self._keys(key), self.args, self.kwargs)
        return self._unflat(flat)

    def log_likelihood(self, key=None):
        """log p(y_t | y_{1:t-1}, theta) for every time step and draw: (chains, draws, T).

        Missing steps contribute 0. Summed over time, the marginal log-likelihood of
        each draw. Joint samplers use the exact ``Kalman`` filter here.
        """
        method = self._derived_method()
        if method.requires_key and key is None:
            raise ValueError(f"{type(method).__name__} samples: pass key=jax.random.PRNGKey(...)")
        keys = jax.random.split(key if key is not None else jax.random.PRNGKey(0), self.num_chains * self.num_draws)
        flat = jit_by_arrays(_log_predictive_of_draws, self.ssm, method, self.fixed, self._flat(self.samples), keys,
                             self.args, self.kwargs)
        return self._unflat(flat)

    def predictive(self, key, num_steps: int = 0, states=None) -> dict:
        """Posterior predictive draws, one per parameter draw.

        Returns ``emissions`` (chains, draws, T, dy): y_t ~ p(y_t | z_t, theta) with
        z from ``sample_states``; with ``num_steps > 0`` also ``forecast_states``
        (chains, draws, num_steps, dz) and ``forecast_emissions`` (..., dy), paths
        simulated forward from each draw's z_T. ``states``: reuse path draws from
        ``sample_states`` instead of drawing new ones.
        """
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
        k_states, k_pred = jax.random.split(key)
        if states is None:
            states = self.sample_states(k_states)
        if num_steps:
            _check_forecastable(self.ssm.state_space(self.params(0, 0), *self.args, **self.kwargs))
        flat = jit_by_arrays(_predict_draws, self.ssm, self.fixed, self._flat(self.samples), self._flat(states),
                             self._keys(k_pred), num_steps, self.args, self.kwargs)
        return self._unflat(flat)

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
