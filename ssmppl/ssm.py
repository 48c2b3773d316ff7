"""``SSM``: a user's NumPyro scan model, seen as a state-space model."""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from numpyro import handlers

from ._jit import jit_by_arrays, traced_floats
from .inference import DEFAULT_BACKEND
from .inference.base import Backend, Capability, require, require_key
from .inference.validation import invalid_input_message, parameter_checks
from .models.tracing import (
    RelaxedValidation,
    ScanInterceptor,
    SiteNames,
    discover,
    state_columns,
    trace_model,
    trace_state_space,
)


def _is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def _checked(method, key, capabilities=(), needed_by="ssm.filter"):
    require(method, *capabilities, needed_by=needed_by)
    return require_key(method, key)


class SSM:
    """A NumPyro model with a ``scan`` over time, read as a state-space model.

    The model samples its global sites (``numpyro.param``, or ``numpyro.sample``
    with a prior), then the initial state z_0, then calls
    ``numpyro.contrib.control_flow.scan`` with a step holding one latent site
    (the state z_t) and one emission site (y_t, ``obs=`` the data or ``None``).
    Observation t is emitted by the state after t transitions.

    Every method takes ``params`` first: a dict of global site values that
    override the model's own (``None``: the ``numpyro.param`` initial values),
    then the model's own ``*args, **kwargs`` unchanged. States are returned as
    flat vectors (dz = size of the latent site), emissions likewise (dy).

    latent, obs: names of the state and emission sites in the scan body;
    found automatically when omitted.
    """

    def __init__(self, model, latent: Optional[str] = None, obs: Optional[str] = None):
        if not callable(model):
            raise TypeError(f"SSM needs a NumPyro model function, got {model!r}")
        self.model = model
        self.latent = latent
        self.obs = obs

    def __repr__(self):
        return f"SSM({getattr(self.model, '__name__', self.model)!r})"

    # Two SSMs of the same model function and site names are the same program: compiled functions
    # are keyed on the SSM, so ``SSM(model)`` built anew in each call still reuses them.
    def _identity(self):
        return (self.model, self.latent, self.obs)

    def __eq__(self, other):
        return type(other) is type(self) and self._identity() == other._identity()

    def __hash__(self):
        return hash(self._identity())

    # -- structure -----------------------------------------------------------
    def site_names(self, *args, **kwargs) -> SiteNames:
        """The state, emission, initial-state and global site names for these arguments."""
        return discover(self.model, args, kwargs, self.latent, self.obs)

    def state_columns(self, *args, **kwargs) -> dict:
        """Which columns of the flat state (``filtered_means[:, cols]`` etc.) hold what: {label: slice}.

        A carry that is the latent site itself gives ``{latent: slice(0, dz)}``. A tuple (pytree)
        carry such as ``(z, z_prev)`` for an AR(2) is stacked: its leaves, flattened, are
        concatenated in ``jax.tree.leaves`` order, the latent site's leaf under its name and the
        others as ``"carry" + key path``, e.g. ``{"z": slice(0, 1), "carry[1]": slice(1, 2)}``.
        """
        return state_columns(self.model, args, kwargs, self.latent, self.obs)

    def state_space(self, params, *args, **kwargs):
        """The ``StateSpace`` handed to backends (call inside jit for speed)."""
        return trace_state_space(self.model, args, kwargs, params, self.latent, self.obs)

    def _trace(self, params, args, kwargs):
        """(StateSpace, global-site messages) for these parameters and arguments."""
        return trace_model(self.model, args, kwargs, params, self.latent, self.obs)

    # -- parameters and simulation -------------------------------------------
    def init_params(self, key, *args, **kwargs) -> dict:
        """Global site values: ``numpyro.param`` initial values and prior draws of sample sites."""
        names = self.site_names(*args, **kwargs)
        interceptor = ScanInterceptor(latent=self.latent, obs=self.obs)
        with handlers.seed(rng_seed=key), interceptor:
            self.model(*args, **kwargs)
        return {k: interceptor.outer_sites[k]["value"] for k in names.globals}

    def sample(self, key, params, *args, **kwargs):
        """Simulate ``(states, emissions)`` in the model's own shapes: the latent site's values
        ``(T, *state_shape)`` and the emission site's ``(T, *obs_shape)``, e.g. ``(T,)`` and ``(T,)``
        for a scalar state and observation, ``(T, dz)`` and ``(T, dy)`` for vector sites (as
        NumPyro's ``Predictive`` returns them). The emissions can be passed back as the
        observations: ``ssm.log_likelihood(params, ssm.sample(key, params, T=100)[1])``.

        Call with the observations left ``None`` (e.g. ``ssm.sample(key, params, T=100)``);
        global sample sites missing from ``params`` are drawn from their priors. For a tuple
        (pytree) carry the states are the latent site's values, the columns
        ``ssm.state_columns(...)[latent]`` of the stacked state that the filters return.
        """
        return jit_by_arrays(SSM._sample, self, key, traced_floats(params), *args, **kwargs)

    def _sample(self, key, params, *args, **kwargs):
        names = self.site_names(*args, **kwargs)
        model = handlers.substitute(handlers.seed(self.model, key), data=dict(params or {}))
        tr = handlers.trace(RelaxedValidation(model)).get_trace(*args, **kwargs)  # zero variances allowed
        # The model's own shapes (not flattened to (T, d)), so that sample -> log_likelihood round-trips:
        # the emission site of a scalar-observation model checks for (T,).
        return tr[names.latent]["value"], tr[names.obs]["value"]

    # -- filtering and smoothing ---------------------------------------------
    def filter(self, params, *args, method: Backend = DEFAULT_BACKEND, key=None, **kwargs):
        """Filter: a ``FilterResult`` with ``filtered_means (T, dz)``, ``filtered_covariances
        (T, dz, dz)``, ``predicted_means``, ``predicted_covariances`` and, for backends with a
        likelihood, ``marginal_loglik`` and ``log_predictive (T,)``."""
        _checked(method, key)
        result, checks = jit_by_arrays(SSM._filter, self, method, key, traced_floats(params), *args, **kwargs)
        self._raise_if_unusable(method, result, checks, params, args, kwargs)
        return result

    def _filter(self, method, key, params, *args, **kwargs):
        problem, outer = self._trace(params, args, kwargs)
        return method.filter(problem, key), parameter_checks(problem, outer)

    def smooth(self, params, *args, method: Backend = DEFAULT_BACKEND, key=None, **kwargs):
        """Filter and smooth: a ``SmoothResult`` holding the filter's result (``.filtered``,
        whose fields it also answers) and ``smoothed_means (T, dz)``, ``smoothed_covariances``,
        ``smoothed_cross_covariances (T-1, dz, dz)`` (Cov[z_t, z_{t+1} | y]) and the smoothed
        initial state."""
        _checked(method, key, (Capability.SMOOTH,), "ssm.smooth")
        result, checks = jit_by_arrays(SSM._smooth, self, method, key, traced_floats(params), *args, **kwargs)
        self._raise_if_unusable(method, result, checks, params, args, kwargs)
        return result

    def _smooth(self, method, key, params, *args, **kwargs):
        problem, outer = self._trace(params, args, kwargs)
        return method.smooth(problem, key), parameter_checks(problem, outer)

    def log_likelihood(self, params, *args, method: Backend = DEFAULT_BACKEND, key=None, **kwargs):
        """log p(y_{1:T} | params), the latent path integrated out (an estimate for sampling backends)."""
        _checked(method, key, (Capability.LIKELIHOOD,), "ssm.log_likelihood")
        ll, checks = jit_by_arrays(SSM._log_likelihood, self, method, key, traced_floats(params), *args,
                                   **kwargs)
        if _is_concrete(ll):
            self._raise_if_invalid(checks)
            if not bool(jnp.isfinite(ll)):  # explain it from the filter
                self.filter(params, *args, method=method, key=key, **kwargs)
                raise ValueError(f"{type(method).__name__} returned a log-likelihood of {float(ll)}")
        return ll

    def _log_likelihood(self, method, key, params, *args, **kwargs):
        problem, outer = self._trace(params, args, kwargs)
        return method.log_likelihood(problem, key), parameter_checks(problem, outer)

    def _raise_if_invalid(self, checks):
        message = invalid_input_message(checks)
        if message:
            raise ValueError(message)

    def _raise_if_unusable(self, method, result, checks, params, args, kwargs):
        """Bad input gets an error, not a silent NaN: parameters and data are checked first, then
        the backend explains a non-finite result; a finite result gets the backend's warnings
        (``Backend.result_warnings``). Concrete results only: not under jit/vmap/grad."""
        if not _is_concrete(result.filtered_means):
            return
        self._raise_if_invalid(checks)
        filtered = getattr(result, "filtered", result)
        ll = getattr(filtered, "marginal_loglik", None)
        if ll is not None and not bool(jnp.isfinite(ll)) or not bool(jnp.isfinite(result.filtered_means).all()):
            message = method.diagnose(self.state_space(params, *args, **kwargs), filtered)
            raise ValueError(message or f"{type(method).__name__} returned a non-finite result")
        # finite but untrustworthy (a diverged ensemble, an unstable analysis): the backend's own checks
        for warning in method.result_warnings(filtered, lambda: self.state_space(params, *args, **kwargs)):
            warnings.warn(warning, stacklevel=3)  # user -> filter/smooth -> here

    def forecast(self, params, num_steps: int, *args, method: Backend = DEFAULT_BACKEND, key=None, **kwargs):
        """Moments of the next ``num_steps`` states and emissions after the data:
        ``state_means (H, dz)``, ``state_covariances``, ``emission_means (H, dy)``,
        ``emission_covariances``."""
        _checked(method, key, (Capability.FORECAST,), "ssm.forecast")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        return jit_by_arrays(SSM._forecast, self, method, key, num_steps, traced_floats(params), *args, **kwargs)

    def _forecast(self, method, key, num_steps, params, *args, **kwargs):
        problem = self.state_space(params, *args, **kwargs)
        if key is not None:
            key, filter_key = jax.random.split(key)
        else:
            filter_key = None
        return method.forecast(problem, method.filter(problem, filter_key), num_steps, key)

    def posterior_predictive(self, params, *args, method: Backend = DEFAULT_BACKEND, key=None, **kwargs):
        """Smoothed emission means and standard deviations, each (T, dy):
        E[y_t | y_{1:T}] and sd[y_t | y_{1:T}] (emission noise included)."""
        _checked(method, key, (Capability.SMOOTH, Capability.POSTERIOR_PREDICTIVE),
                 "ssm.posterior_predictive")
        return jit_by_arrays(SSM._posterior_predictive, self, method, key, traced_floats(params), *args,
                             **kwargs)

    def _posterior_predictive(self, method, key, params, *args, **kwargs):
        problem = self.state_space(params, *args, **kwargs)
        return method.posterior_predictive(problem, method.smooth(problem, key))

    # -- learning parameters -------------------------------------------------
    def fit_em(self, params, *args, num_iters: int = 100, method: Backend = DEFAULT_BACKEND, frozen=(), tol=None,
               progress_bar: bool = True, m_step: str = "auto", m_step_iters: int = 15, m_step_optimizer=None,
               key=None, acceleration=None, **kwargs):
        """Fit the global sites by expectation-maximisation; returns ``(params, log_liks (n,))``.

        ``params``: starting values (missing ``numpyro.param`` sites take their
        initial values; ``numpyro.sample`` sites must be given). Observations may be
        one sequence (T, dy) or a batch (B, T, dy) of independent sequences sharing
        the parameters (other per-sequence inputs then carry the same leading B).

        log_liks[i] is log p(y | params_i) plus the log prior of global sample sites,
        at the parameters iteration i started from; it never decreases for an exact
        E-step. ``tol``: stop once |log_liks[i] - log_liks[i-1]| <= tol * |log_liks[i]|.
        ``frozen``: global sites kept exactly at their given values.

        ``m_step``: "auto" (closed form when the model carries one as
        ``model.closed_form_m_step``, as ``ssmppl.models.linear_gaussian_ssm`` does;
        generalised otherwise), "closed_form" or "generalised": maximise the expected
        log joint under the smoothed posterior (cubature; exact for linear Gaussian
        structure) in the unconstrained space with ``m_step_iters`` steps of
        ``m_step_optimizer``: "newton" (damped Newton with exact Hessians; the
        default up to 300 free scalars), "lbfgs" (the default above), or an optax
        optimiser. A step is kept only if it increases the objective.

        If the log-likelihood turns non-finite, EM stops with a ``RuntimeWarning`` and
        returns the last parameters whose log-likelihood was finite.
        If EM stops raising the log-likelihood (changes at rounding level) while its
        gradient is not small, an ``EMStallWarning`` (``ssmppl.learning.em``) says so:
        in float32 the E-step's statistics can lose the precision the M-step needs;
        enable float64 (``jax.config.update("jax_enable_x64", True)``) or continue
        with ``fit_sgd``.

        ``progress_bar``: a live bar in a terminal or notebook; elsewhere (logs, CI)
        one line on stderr when the fit ends, and the fit runs as one compiled chunk.

        ``key``: needed by sampling backends (``EnKF``); their smoother then runs with
        this same key at every iteration (common random numbers), so EM climbs one
        fixed Monte Carlo surrogate of the likelihood.

        ``acceleration="squarem"``: each iteration is one SQUAREM cycle (Varadhan &
        Roland 2008): two EM maps, an extrapolation along their steps in the
        unconstrained space, and a third EM map; the extrapolation is kept only if it
        does not lower the log-likelihood, so log_liks stays monotone. An iteration
        then costs three E-steps; slow EM (flat likelihood ridges, weakly identified
        noise variances) needs several times fewer of them.
        """
        from .learning.em import fit_em

        require(method, Capability.SMOOTH, Capability.LIKELIHOOD, needed_by="fit_em")
        return fit_em(self, params, args, kwargs, num_iters=num_iters, method=method, frozen=frozen,
                      tol=tol, progress_bar=progress_bar, m_step=m_step, m_step_iters=m_step_iters,
                      m_step_optimizer=m_step_optimizer, key=key, acceleration=acceleration)

    def fit_sgd(self, params, *args, optimizer=None, num_epochs: int = 1000, method: Backend = DEFAULT_BACKEND, frozen=(),
                batch_size=None, key=None, progress_bar: bool = True, **kwargs):
        """Fit the global sites by gradient descent; returns ``(params, losses (num_epochs,))``.

        The loss is -(log p(y | params) + log prior of global sample sites) per
        observed scalar (MAP; plain maximum likelihood for ``numpyro.param`` sites),
        so ``-losses * num_observed`` is the log-likelihood curve. The optimiser
        (optax; default ``optax.adam(1e-2)``) runs in the unconstrained space of the
        sites' constraints. ``batch_size``: minibatches of sequences for batched data
        (B, T, dy), reshuffled every epoch with ``key`` (B % batch_size leftover
        sequences sit out each epoch). ``frozen``: sites kept exactly at their values.

        If the loss or the parameters become non-finite (e.g. a learning rate too
        large), the fit stops with a ``RuntimeWarning``, returns the last parameters
        whose loss was finite and the losses up to there.

        ``progress_bar``: a live bar in a terminal or notebook; elsewhere (logs, CI)
        one line on stderr when the fit ends, and the fit runs as one compiled chunk.
        """
        from .learning.sgd import fit_sgd

        return fit_sgd(self, params, args, kwargs, optimizer=optimizer, num_epochs=num_epochs,
                       method=require(method, Capability.LIKELIHOOD, needed_by="fit_sgd"), frozen=frozen,
                       batch_size=batch_size, key=key,
                       progress_bar=progress_bar)

    def fit_mle(self, params, *args, method: Backend = DEFAULT_BACKEND, frozen=(), max_iters: int = 200,
                gtol: Optional[float] = None, memory_size: int = 10, max_linesearch_steps: int = 20, key=None,
                **kwargs):
        """Maximum likelihood by L-BFGS, with standard errors; returns a
        ``ssmppl.learning.mle.MLEResult`` (``params``, ``log_likelihood``, ``num_iters``,
        ``converged``, ``stderr``, ``covariance``, ``summary()``).

        For models with few global sites (variances, a few coefficients): quasi-Newton
        (``optax.lbfgs`` with its zoom line search) in the unconstrained space of the
        sites' constraints, one compiled ``lax.while_loop`` until the largest
        |gradient| of the per-observation negative log-likelihood is <= ``gtol``
        (default 1e-6 in float64, 1e-4 in float32) or ``max_iters``. The objective is
        log p(y | params) alone: the log prior of global ``numpyro.sample`` sites is
        not added (they are treated as parameters with their support as constraint),
        unlike ``fit_em`` / ``fit_sgd`` which maximise the posterior density.

        ``params``: starting values (missing ``numpyro.param`` sites take their initial
        values). Batched data (B, T, dy) and ``frozen`` as in ``fit_sgd``. Standard
        errors come from the observed information: the Hessian H of the negative
        log-likelihood in the unconstrained space (``jax.hessian``), inverted, mapped
        to the constrained parameters by the delta method, J H^-1 J^T with J the
        Jacobian of the transform (statsmodels' ``cov_type='approx'``, a numerical
        Hessian; its ``'oim'`` uses Harvey's analytic information instead). A ``RuntimeWarning`` is raised if the fit stops without
        converging or H is not positive definite (standard errors then NaN).

        The fit compiles once per model, backend, settings and data shape: new data
        of the same shape or new starting values reuse the compiled program.
        """
        from .learning.mle import fit_mle

        require(method, Capability.LIKELIHOOD, needed_by="fit_mle")
        return fit_mle(self, params, args, kwargs, method=method, frozen=frozen, max_iters=max_iters, gtol=gtol,
                       memory_size=memory_size, max_linesearch_steps=max_linesearch_steps, key=key)

    # -- Bayesian inference --------------------------------------------------
    def sample_posterior(self, key, *args, num_warmup: int = 1000, num_samples: int = 1000, num_chains: int = 4,
                         method: Optional[Backend] = DEFAULT_BACKEND, backend: str = "numpyro",
                         chain_method: str = "vectorized", progress_bar: bool = True, params=None,
                         target_accept_prob: float = 0.8, dense_mass: bool = False, max_tree_depth: int = 10,
                         init_params=None, **kwargs):
        """NUTS (or PMMH, see below) on the model's global ``numpyro.sample`` sites; returns a
        ``ssmppl.bayes.Posterior``.

        ``method``: the backend integrating the latent path out (``ssmppl.marginalize``),
        so NUTS moves in the parameters only; ``None`` samples parameters and path
        jointly (plain NUTS on the model, missing observations masked).
        ``backend``: "numpyro" (NumPyro's NUTS kernel, ``numpyro.infer.hmc.hmc``, with its
        warm-up adaptation) or "blackjax" (``blackjax.nuts`` after
        ``blackjax.window_adaptation``), on the same log density. Either way all chains run
        in one compiled program, cached by model, backend, settings and argument shapes: a
        second call with new data, keys or initial values of the same shapes only samples.
        ``chain_method``: "vectorized" (chains vmapped), "sequential" (``lax.map`` over
        chains: less memory) or "parallel" (chains sharded over the available devices by
        ``jax.sharding``; one device: as "vectorized"). ``init_params``: {site: value} to start every chain from (NUTS; by default
        NumPyro's uniform(-2, 2) in the unconstrained space, which is far from the mass
        for sharp likelihoods such as a chaotic model's). ``params``: values of global
        sites held fixed (``numpyro.param`` sites, which are always fixed, default to their
        initial values; sample sites given here are conditioned on). Divergent transitions are counted in
        ``posterior.sample_stats['diverging']`` and raise a ``DivergenceWarning``.

        A backend with a noisy likelihood (``method.noisy_likelihood``: particle
        filters, e.g. ``method=BootstrapPF(500)``) cannot drive NUTS: the posterior is
        then sampled by particle marginal Metropolis-Hastings (``ssmppl.bayes.pmmh``:
        a Gaussian random walk whose covariance and scale are tuned during warm-up),
        exact despite the noise, into the same ``Posterior``. Its ``sample_stats``
        hold ``acceptance_rate``, ``is_accepted``, ``lp``, ``diverging`` (all False)
        and ``loglik_sd`` (per chain: sd of the log-likelihood estimate at the end of
        warm-up; above 2 a ``PMMHWarning`` asks for more particles). ``backend`` is
        then unused; changing the NUTS options ``target_accept_prob``, ``dense_mass``
        or ``max_tree_depth`` raises a ``ValueError``.

        An ensemble Kalman filter (``method=EnKF(...)``) drives NUTS: its likelihood is a
        smooth function of the parameters for a fixed key, and the sampler holds one
        fixed key (common random numbers), so the draws target the posterior under that
        Gaussian-approximation likelihood.
        """
        from .bayes.nuts import sample_posterior

        if method is not None:
            require(method, Capability.LIKELIHOOD, needed_by="sample_posterior")
        return sample_posterior(self, key, args, kwargs, num_warmup=num_warmup, num_samples=num_samples,
                                num_chains=num_chains, method=method, backend=backend, chain_method=chain_method,
                                progress_bar=progress_bar, params=params, target_accept_prob=target_accept_prob,
                                dense_mass=dense_mass, max_tree_depth=max_tree_depth, init_params=init_params)

    def fit_svi(self, key, *args, guide="normal", optimizer=None, num_steps: int = 5000,
                method: Optional[Backend] = DEFAULT_BACKEND, num_samples: int = 1000, num_particles: int = 1,
                progress_bar: bool = True, params=None, **kwargs):
        """Variational inference on the global ``numpyro.sample`` sites of the marginal model.

        ``guide``: "normal" (``AutoNormal``: independent normals in the unconstrained
        space), "mvn" (``AutoMultivariateNormal``), "delta" (``AutoDelta``: MAP), or a
        NumPyro guide. ``optimizer``: optax (default ``optax.adam(1e-2)``). Returns
        ``(guide_params, losses (num_steps,), posterior)``: the ELBO loss trace
        (negative ELBO) and a ``Posterior`` of ``num_samples`` guide draws (one chain).
        """
        from .bayes.svi import fit_svi

        if method is not None:
            require(method, Capability.LIKELIHOOD, needed_by="fit_svi")
        return fit_svi(self, key, args, kwargs, guide=guide, optimizer=optimizer, num_steps=num_steps, method=method,
                       num_samples=num_samples, num_particles=num_particles, progress_bar=progress_bar, params=params)
