"""Reading a NumPyro ``scan`` program as a state-space model.

A user's model samples global sites, then an initial state, then calls
``numpyro.contrib.control_flow.scan`` with a step function holding one latent
sample site (the state) and one emission site. Under any handler, ``scan``
emits a ``control_flow`` message whose ``fn`` is NumPyro's ``scan_wrapper``;
``ScanInterceptor`` swaps that ``fn`` for its own, so every outer handler has
already filled in its keyword arguments (``rng_key``...) when it runs. There it
builds a ``StateSpace``: the initial-state distribution and the step function
turned into pure JAX functions ``(z_prev, xs_t) -> transition`` and
``(z_t, xs_t) -> emission`` (each runs the user's step under ``block`` with the
latent site's value forced), plus the observations. A callback then does
whatever the caller wants with it (store it, or add a marginal-likelihood
factor to the model), and the scan returns NaN placeholders of the right shapes:
the latent path itself is never sampled.

Model structure is found in two passes. ``discover`` runs the model once with
the scan replaced by a probe that records which body site is the state (its
value is the new carry), which is the emission (the observed site, or the other
sample site when simulating) and which outer site is the initial state (its
value is the scan's ``init``). The second pass uses those names: it must know
the initial-state site *before* the scan, to take it out of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.control_flow.scan import scan_wrapper
from numpyro.distributions import constraints
from numpyro.distributions.distribution import enable_validation, validation_enabled
from numpyro.ops.pytree import PytreeTrace
from numpyro.primitives import Messenger
from numpyro.util import not_jax_tracer

from ..errors import ModelStructureError, ObservationShapeError
from .dependence import leaves_reading, reads


@dataclasses.dataclass(frozen=True)
class SiteNames:
    """Names of the model's state-space sites.

    ``init`` is None when the scan starts from a value that is not a sample
    site (a known initial state, treated as a point mass).
    """

    latent: str
    obs: str
    init: Optional[str]
    globals: tuple = ()  # global (outer) sample and param sites, in model order


@dataclasses.dataclass(frozen=True)
class StateSpace:
    """What a backend receives: a state-space model as distributions.

    States are handed to the functions below as flat vectors (dz,); the
    distributions they return have the model's own shapes (``state_shape``,
    ``obs_shape``), and ``flat`` helpers convert.

    initial: distribution of z_0, or None for a point mass at ``initial_value``.
    initial_value: (dz,) flat z_0 when ``initial`` is None.
    transition(z_prev (dz,), xs_t) -> distribution of z_t.
    emission(z (dz,), xs_t) -> distribution of y_t.
    xs: the scan's inputs, leading axis T (or None); ``xs_at(t)`` slices them.
    observations: (T, dy), NaN where missing.

    A scan whose carry is a tuple (pytree), e.g. ``(z_t, z_{t-1})`` for an AR(2), is filtered
    on the stacked state: the concatenation of the carry's flattened leaves in
    ``jax.tree.leaves`` order (``columns`` names them; the latent site's own columns under
    its name). Its transition is then Gaussian with zero variance in the deterministic parts.
    """

    initial: Any
    initial_value: Optional[jax.Array]
    transition: Callable
    emission: Callable
    xs: Any
    length: int
    observations: jax.Array
    state_shape: tuple
    obs_shape: tuple
    names: SiteNames
    columns: Any = None  # {label: slice} of the flat state (``CarryLayout.columns``)

    @property
    def state_dim(self) -> int:
        return int(np.prod(self.state_shape, dtype=int))

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.obs_shape, dtype=int))

    def xs_at(self, t):
        return jax.tree.map(lambda a: a[t], self.xs)

    def xs_example(self):
        """The inputs of the first step (used for trace-time structure checks)."""
        return None if self.xs is None else self.xs_at(0)


# -- argument validation ----------------------------------------------------------------
# NumPyro validates a distribution's arguments when it is built, and refuses a Normal with a
# zero scale or a MultivariateNormal with a singular covariance. In a state-space model these
# are legitimate: a deterministic trend, the lagged components of a companion-form AR(p), an
# exactly observed series. ssmppl runs the user's model with NumPyro's validation off and checks
# each sample site's arguments itself, with the same constraints except that Gaussian noise may
# be degenerate. Like NumPyro's, the check only sees concrete values (not traced ones).


_RELAXED = []  # per active RelaxedValidation (innermost last): whether NumPyro validated before it


def _validation_requested() -> bool:
    """Whether to check arguments: NumPyro's setting, as it was outside any ``RelaxedValidation``."""
    return _RELAXED[-1] if _RELAXED else bool(dist.Distribution._validate_args)


def _lower_triangular_nonnegative_diagonal(L):
    L = jnp.asarray(L)
    diag = jnp.diagonal(L, axis1=-2, axis2=-1)
    return jnp.all(jnp.tril(L) == L, axis=(-2, -1)) & jnp.all(diag >= 0, axis=-1)


def _relaxed_constraint(d, param, constraint):
    """The constraint ssmppl checks: NumPyro's, with zero variances allowed in Gaussian noise.
    Returns (check, requirement in words) or None to skip the parameter."""
    if isinstance(d, dist.Normal) and param == "scale":
        return constraints.nonnegative, "scales must be >= 0; zero is a noiseless component"
    if isinstance(d, dist.MultivariateNormal):
        if param == "covariance_matrix":
            return constraints.positive_semidefinite, "it must be symmetric positive semi-definite"
        if param == "scale_tril":
            if "covariance_matrix" in vars(d) or "precision_matrix" in vars(d):
                return None  # derived from the matrix checked above (NaN when that one is singular)
            return (_lower_triangular_nonnegative_diagonal,
                    "it must be lower triangular with a non-negative diagonal")
    return constraint, None


_COMPILED_CHECKS: dict = {}  # id(constraint) -> (constraint, its jitted check)


def _compiled_check(check):
    """``jax.jit(check)``, one per constraint object (NumPyro's constraints are module-level
    objects, unhashable): one compiled program per constraint and shape instead of one per
    operation inside it (a PSD check run eagerly compiles ~5 small programs)."""
    hit = _COMPILED_CHECKS.get(id(check))
    if hit is None or hit[0] is not check:
        if len(_COMPILED_CHECKS) > 256:  # constraints built per call (e.g. interval(a, b)): stay bounded
            _COMPILED_CHECKS.clear()
        hit = _COMPILED_CHECKS[id(check)] = (check, jax.jit(lambda value: check(value)))
    return hit[1]


def check_site_arguments(fn, site):
    """Raise ``ValueError`` naming ``site`` when a concrete argument of its distribution (or of a
    distribution it wraps) is invalid; zero variances of Gaussian noise are valid."""
    d = fn
    while isinstance(d, dist.Distribution):
        with jax.ensure_compile_time_eval():
            for param, value in d.get_args().items():
                constraint = d.arg_constraints.get(param)
                if constraint is None or constraints.is_dependent(constraint):
                    continue
                relaxed = _relaxed_constraint(d, param, constraint)
                if relaxed is None:
                    continue
                check, why = relaxed
                ok = _compiled_check(check)(value)
                if not_jax_tracer(ok) and not np.all(np.asarray(ok)):
                    raise ValueError(f"site {site!r}: {type(d).__name__} distribution got an invalid {param} "
                                     f"parameter" + (f" ({why})" if why else ""))
        d = getattr(d, "base_dist", None)


class RelaxedValidation(Messenger):
    """Runs the model with NumPyro's argument validation off, and checks every sample site's
    arguments with ``check_site_arguments`` instead (when NumPyro's validation was on)."""

    def __enter__(self):
        self._was_validating = bool(dist.Distribution._validate_args)
        _RELAXED.append(_validation_requested())
        enable_validation(False)
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        _RELAXED.pop()
        enable_validation(self._was_validating)
        return super().__exit__(exc_type, exc_value, traceback)

    @property
    def _checking(self):
        return _RELAXED[-1] if _RELAXED else False

    def process_message(self, msg):
        if msg["type"] == "sample" and self._checking and not msg.get("_control_flow_done"):
            check_site_arguments(msg["fn"], msg["name"])


class _StepRecorder(Messenger):
    """Records the sites of one call of the step function.

    When ``latent_value`` is given the latent site takes it instead of being
    sampled; an unobserved emission site takes a NaN placeholder. ``validate``:
    check each sample site's arguments (``check_site_arguments``).
    """

    def __init__(self, latent=None, latent_value=None, obs=None, validate=False):
        self.latent, self.latent_value, self.obs = latent, latent_value, obs
        self.validate = validate
        self.sites = {}
        super().__init__()

    def process_message(self, msg):
        if msg["type"] == "sample" and self.validate:
            check_site_arguments(msg["fn"], msg["name"])
        if msg["type"] != "sample" or msg["value"] is not None:
            return
        if msg["name"] == self.latent and self.latent_value is not None:
            msg["value"] = self.latent_value
        elif msg["name"] == self.obs:
            shape = msg["fn"].shape(msg["kwargs"].get("sample_shape", ()))
            msg["value"] = jnp.full(shape, jnp.nan, _float_dtype())

    def postprocess_message(self, msg):
        if msg["type"] in ("sample", "deterministic"):
            self.sites[msg["name"]] = msg


def _float_dtype():
    return jnp.result_type(float)


def run_step(f, carry, x, latent=None, latent_value=None, obs=None, rng_key=None, validate=True):
    """Run the user's step once, hidden from outer handlers.

    Returns (sites, new_carry, output): the recorded sites by name and what the
    step returned. NumPyro's own argument validation is off (it refuses zero
    variances); ``validate=True`` checks the sites' arguments with
    ``check_site_arguments`` instead, when NumPyro's validation is enabled.
    ``validate=False`` skips that: backends call the step many times under tracing,
    where validation cannot raise and its constraint checks only cost tracing time
    (most of it, for a small model).
    """
    recorder = _StepRecorder(latent, latent_value, obs, validate and _validation_requested())
    fn = handlers.seed(f, rng_key) if rng_key is not None else f
    with handlers.block(), recorder, validation_enabled(False):
        new_carry, output = fn(carry, x)
    return recorder.sites, new_carry, output


def _first(xs):
    return None if xs is None else jax.tree.map(lambda a: a[0], xs)


def _scan_length(xs, length):
    leaves = jax.tree.leaves(xs)
    lengths = {int(jnp.shape(a)[0]) for a in leaves}
    if length is not None:
        lengths.add(int(length))
    if not lengths:
        raise ModelStructureError("scan has neither `xs` nor `length`: its number of steps is unknown")
    if len(lengths) > 1:
        raise ObservationShapeError(
            f"the scan's inputs disagree on the number of time steps: leading sizes {sorted(lengths)} "
            "(length=... and every array in xs, observations included, must have the same first axis)"
        )
    T = lengths.pop()
    if T < 1:
        raise ObservationShapeError("the scan has 0 time steps (empty observations or length=0): a state-space "
                                    "model needs at least one step")
    return T


_AUGMENT_HINT = (
    "the other parts of a tuple carry must be deterministic functions of the previous carry and the step's "
    "inputs, e.g. the previous state for an AR(2); ssmppl then filters the stacked state, the concatenation "
    "of the carry's leaves in jax.tree.leaves order (SSM.state_columns names the columns)"
)


def _discover_body(f, init, xs, latent, obs):
    """Find the latent and emission site names from one probe run of the step."""
    sites, new_carry, _ = run_step(f, init, _first(xs), rng_key=jax.random.PRNGKey(0))
    samples = {k: s for k, s in sites.items() if s["type"] == "sample"}
    unobserved = [k for k, s in samples.items() if not s["is_observed"]]
    observed = [k for k, s in samples.items() if s["is_observed"]]
    carry_leaves = jax.tree.leaves(new_carry)
    if latent is None:
        carried = [k for k in unobserved if any(samples[k]["value"] is leaf for leaf in carry_leaves)]
        if not carried:
            if not unobserved:
                raise ModelStructureError(
                    "the scan body has no latent sample site: the state must be a numpyro.sample "
                    "site without obs= inside the step function"
                )
            raise ModelStructureError(
                f"the scan body's new carry holds no sample site's value (sample sites: {unobserved}); "
                "the step must return the sampled state itself as the carry, `return z, ...`, or a tuple "
                "(pytree) holding it unchanged beside deterministic functions of the previous carry, "
                "`return (z, z_prev), ...` (" + _AUGMENT_HINT + ")"
            )
        if len(carried) > 1:
            raise ModelStructureError(
                f"the scan body's new carry holds the values of several sample sites {carried}: ssmppl needs "
                "exactly one latent site per step; make them one vector site (e.g. dist.Normal(...).to_event(1))"
            )
        latent = carried[0]
    elif latent not in samples:
        raise ModelStructureError(f"latent site {latent!r} is not a sample site in the scan body (sites: {list(samples)})")
    elif not any(samples[latent]["value"] is leaf for leaf in carry_leaves):
        raise ModelStructureError(
            f"the latent site {latent!r} is not part of the scan body's new carry: the step must return its "
            f"value unchanged as the carry, or as one part of a tuple (pytree) carry (" + _AUGMENT_HINT + ")"
        )
    if obs is None:
        candidates = observed or [k for k in unobserved if k != latent]
        if not candidates:
            raise ModelStructureError("the scan body has no emission site: add numpyro.sample('y', ..., obs=y_t)")
        if len(candidates) > 1:
            raise ModelStructureError(
                f"the scan body has several emission sites {candidates}: combine them into one vector "
                "site (e.g. dist.Normal(...).to_event(1)), or name one with SSM(..., obs=...)"
            )
        obs = candidates[0]
    elif obs not in samples:
        raise ModelStructureError(f"emission site {obs!r} is not a sample site in the scan body (sites: {list(samples)})")
    extra = [k for k in unobserved if k not in (latent, obs)] + [k for k in observed if k != obs]
    if extra:
        raise ModelStructureError(
            f"the scan body has sample sites {extra} besides the state {latent!r} and the emission {obs!r}. "
            "ssmppl needs exactly one latent site per step: sample global parameters outside the scan "
            "(inside it they become one new latent per time step), and put extra latent components "
            "into the state vector"
        )
    return latent, obs, (sites, new_carry)


class ScanInterceptor(RelaxedValidation):
    """Replaces the model's ``scan`` over time by ``on_scan(state_space, rng_key)``.

    ``names``: known site names (from ``discover``), or None in the discovery
    pass, where the scan is only probed. The initial-state site, when known, is
    taken out of the model: it keeps a placeholder value, contributes nothing to
    the log density and is not a latent site for samplers. The model runs under
    ``RelaxedValidation``: zero-variance Gaussian noise is accepted.
    """

    def __init__(self, fn=None, names: Optional[SiteNames] = None, latent=None, obs=None, on_scan=None):
        self.names = names
        self.latent, self.obs = latent, obs
        self.on_scan = on_scan
        self.outer_sites = {}  # name -> msg, sites seen outside the scan
        self.initial = None
        self.found = None  # SiteNames once the scan has been seen
        self.layout = None  # CarryLayout once the scan has been seen
        self.initial_placeholder = None  # the initial-state site's value in the model
        self.emission_observed = None  # whether the scan's emission site has obs= values (first step)
        super().__init__(fn)

    def process_message(self, msg):
        super().process_message(msg)
        if msg["type"] == "control_flow" and msg["fn"] is scan_wrapper:
            if self.found is not None:
                raise ModelStructureError("the model calls scan more than once: ssmppl reads one scan over time")
            msg["fn"] = self._replace_scan
        elif msg["type"] == "sample" and self.names is not None and msg["name"] == self.names.init:
            self.initial = msg["fn"]
            # Integrate z_0 out: a NaN placeholder (it is never drawn), no density, not a latent.
            msg["value"] = jnp.full(msg["fn"].shape(msg["kwargs"].get("sample_shape", ())), jnp.nan, _float_dtype())
            self.initial_placeholder = msg["value"]
            msg["fn"] = msg["fn"].mask(False)
            msg["is_observed"] = True
            msg["infer"] = {**msg.get("infer", {}), "ssmppl_initial_state": True}

    def postprocess_message(self, msg):
        if msg["type"] in ("sample", "param") and msg.get("name") is not None and self.found is None:
            self.outer_sites[msg["name"]] = msg

    def _replace_scan(self, f, init, xs, length, reverse, rng_key=None, substitute_stack=None,
                      history=1, enum=False, **_):
        if reverse:
            raise ModelStructureError("scan(..., reverse=True) is not supported: time runs forward in a state-space model")
        if enum or history != 1:
            raise ModelStructureError("scan with history != 1 or enumerated discrete sites is not supported")
        T = _scan_length(xs, length)
        init_leaf = None  # the tuple carry's leaf that is the initial-state site, when one is
        if self.initial is not None:
            leaves = jax.tree.leaves(init)
            init_leaf = next((j for j, a in enumerate(leaves) if a is self.initial_placeholder), None)
            if init_leaf is None or len(leaves) == 1:  # the NaN placeholder of an integrated-out z_0
                init = jax.tree.map(jnp.zeros_like, init)
            else:  # one leaf of a tuple carry; the others are known values
                init = jax.tree.unflatten(jax.tree.structure(init),
                                          [jnp.zeros_like(a) if j == init_leaf else a for j, a in enumerate(leaves)])
        latent, obs, probe = _discover_body(f, init, xs, self.latent, self.obs)
        self.layout = CarryLayout.of(f, init, _first(xs), latent, probe)
        self.emission_observed = bool(probe[0][obs]["is_observed"])
        if self.names is not None:
            init_site = [self.names.init] if self.names.init is not None else []
        else:
            init_site = [k for k, s in self.outer_sites.items()
                         if s["type"] == "sample" and not s["is_observed"] and s["value"] is init]
            if not init_site and self.layout.augmented:
                init_site = _leaf_initial_site(self.outer_sites, init) or _stacked_initial_site(self.outer_sites, init)
        globals_ = tuple(k for k in self.outer_sites if k not in init_site
                         and not (self.outer_sites[k]["type"] == "sample" and self.outer_sites[k]["is_observed"]))
        self.found = SiteNames(latent=latent, obs=obs, init=init_site[0] if init_site else None, globals=globals_)
        if self.on_scan is not None:
            problem = build_state_space(f, init, xs, T, self.found, self.initial, self.layout,
                                        None if len(jax.tree.leaves(init)) == 1 else init_leaf)
            self.on_scan(problem, rng_key)
        return _placeholder_output(f, init, xs, T, rng_key)


def _leaf_initial_site(outer_sites, init):
    """The outer latent site whose value is one leaf of a tuple carry's initial value, the other
    leaves being known values (``scan(step, (z0, jnp.zeros(())), ...)``), as a list of 0 or 1 names."""
    found = [k for k, s in outer_sites.items() if s["type"] == "sample" and not s["is_observed"]
             for a in jax.tree.leaves(init) if s["value"] is a]
    return found if len(found) == 1 else []


def _stacked_initial_site(outer_sites, init):
    """The outer latent site whose flat value is the concatenation of a tuple carry's initial
    leaves (``z_init = sample(...); scan(step, (z_init[0], z_init[1]), ...)``), as a list of 0 or 1
    names. Compared by value in the discovery run, where the site holds a random draw."""
    leaves = jax.tree.leaves(init)
    if not all(not_jax_tracer(a) for a in leaves):
        return []
    flat = np.concatenate([np.ravel(np.asarray(a)) for a in leaves])
    for k, s in outer_sites.items():
        if s["type"] != "sample" or s["is_observed"] or not not_jax_tracer(s["value"]):
            continue
        value = np.ravel(np.asarray(s["value"]))
        if value.shape == flat.shape and np.array_equal(value, flat):
            return [k]
    return []


@dataclasses.dataclass(frozen=True)
class CarryLayout:
    """Where the scan carry's leaves sit in the flat state vector.

    A carry that is the latent site's value itself is the plain case (``augmented``
    False). A tuple (pytree) carry is stacked: its leaves, flattened, are concatenated
    in ``jax.tree.leaves`` order; ``latent_leaf`` is the leaf holding the latent site's
    value, the others must be deterministic functions of the previous carry (and the
    step's inputs).
    """

    treedef: Any
    shapes: tuple  # per leaf
    latent_leaf: int
    latent: str

    @property
    def augmented(self) -> bool:
        return self.treedef.num_leaves > 1

    @property
    def sizes(self):
        return [int(np.prod(s, dtype=int)) for s in self.shapes]

    @property
    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()

    @property
    def latent_columns(self) -> slice:
        o = self.offsets
        return slice(o[self.latent_leaf], o[self.latent_leaf + 1])

    @property
    def columns(self) -> dict:
        """{label: slice} of the flat state: the latent site under its name, the other carry
        leaves as ``"carry" + jax key path`` (e.g. ``"carry[1]"``)."""
        o = self.offsets
        paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(self.treedef.unflatten(range(len(self.shapes))))[0]]
        return {(self.latent if i == self.latent_leaf else "carry" + path): slice(o[i], o[i + 1])
                for i, path in enumerate(paths)}

    def unflatten(self, s):
        o = self.offsets
        return self.treedef.unflatten([s[o[i]:o[i + 1]].reshape(shape) for i, shape in enumerate(self.shapes)])

    @staticmethod
    def flatten(carry):
        return jnp.concatenate([jnp.reshape(a, (-1,)) for a in jax.tree.leaves(carry)])

    @classmethod
    def of(cls, f, init, x0, latent, probe=None):
        """The layout of ``f``'s carry, checked. ``probe``: (sites, new_carry) of a run of the step
        from ``init`` (``_discover_body``'s), or None to run it here."""
        leaves, treedef = jax.tree.flatten(init)
        if probe is None:
            sites, new_carry, _ = run_step(f, init, x0, rng_key=jax.random.PRNGKey(0), validate=False)
        else:
            sites, new_carry = probe
        new_leaves, new_treedef = jax.tree.flatten(new_carry)
        if new_treedef != treedef or [jnp.shape(a) for a in new_leaves] != [jnp.shape(a) for a in leaves]:
            raise ModelStructureError(
                f"the scan body returns a carry of structure {new_treedef} with leaf shapes "
                f"{[tuple(jnp.shape(a)) for a in new_leaves]}, but the scan's initial carry has structure {treedef} "
                f"with leaf shapes {[tuple(jnp.shape(a)) for a in leaves]}: they must match"
            )
        index = next(i for i, a in enumerate(new_leaves) if a is sites[latent]["value"])
        layout = cls(treedef, tuple(tuple(jnp.shape(a)) for a in leaves), index, latent)
        if layout.augmented:
            for label, a in zip(layout.columns, leaves):
                if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
                    raise ModelStructureError(
                        f"part {label} of the scan's carry is {jnp.result_type(a)}: ssmppl stacks a tuple carry "
                        f"into one float state vector, beside the state {latent!r}, and cannot carry integers (a "
                        "step counter?). Pass the time index in the scan's xs instead, e.g. "
                        "scan(step, z0, (y, jnp.arange(T)))"
                    )
            layout._check_deterministic(f, init, x0)
        return layout

    def _check_deterministic(self, f, init, x0):
        """The carry's other leaves must not read the new state (they are not sampled)."""
        z = jnp.zeros(self.shapes[self.latent_leaf], jnp.result_type(*jax.tree.leaves(init), float))

        def others(z_):
            _, new_carry, _ = run_step(f, init, x0, self.latent, z_, None, rng_key=jax.random.PRNGKey(0),
                                       validate=False)
            return [a for i, a in enumerate(jax.tree.leaves(new_carry)) if i != self.latent_leaf]

        labels = [k for k in self.columns if k != self.latent]
        for label, reading in zip(labels, leaves_reading(others, 0, z)):
            if reading:
                raise ModelStructureError(
                    f"part {label} of the scan body's carry depends on the new state {self.latent!r}: the carry "
                    f"may hold {self.latent!r} itself plus deterministic functions of the previous carry (e.g. "
                    "the previous state), which ssmppl stacks into one state vector. Compute functions of "
                    f"{self.latent!r} in the emission, or make them part of the latent site"
                )


def _gaussian_base(d):
    """(base Normal/MultivariateNormal/LowRankMultivariateNormal, shape) through ``.to_event``/``.expand``,
    or (None, shape) for other families."""
    shape = tuple(d.batch_shape + d.event_shape)
    base = d
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    if isinstance(base, (dist.Normal, dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        return base, shape
    return None, shape


def _augmented_transition(d, layout: CarryLayout, new_carry, leaf=None, site=None, role="latent"):
    """The distribution of the stacked state: the Gaussian ``d`` in the columns of carry leaf ``leaf``
    (default: the latent site's), the other carry leaves (known given the previous carry) with zero
    variance. A diagonal Normal stays one; a multivariate normal becomes one with a block of its
    Cholesky factor."""
    site = layout.latent if site is None else site
    base, shape = _gaussian_base(d)
    if base is None:
        raise ModelStructureError(
            f"the scan's carry is a tuple, which ssmppl stacks into one state vector, and that needs a Gaussian "
            f"{role} site (Normal, MultivariateNormal, LowRankMultivariateNormal), but {site!r} is a "
            f"{type(d).__name__}. Write the stacked state yourself as one vector site with a Gaussian transition, "
            "or keep a single-state carry"
        )
    parts = [jnp.reshape(a, (-1,)) for a in jax.tree.leaves(new_carry)]
    k = layout.latent_leaf if leaf is None else leaf
    o = layout.offsets
    cols = slice(o[k], o[k + 1])
    n = o[-1]
    dtype = jnp.result_type(*parts, float)
    if isinstance(base, dist.Normal):
        parts[k] = jnp.broadcast_to(base.loc, shape).reshape(-1)
        scale = jnp.zeros(n, dtype).at[cols].set(jnp.broadcast_to(base.scale, shape).reshape(-1))
        # zero scales are the point of it: NumPyro's validation (which refuses them) stays off
        return dist.Normal(jnp.concatenate(parts).astype(dtype), scale, validate_args=False).to_event(1)
    if len(shape) != 1:
        raise ModelStructureError(f"a {type(base).__name__} {role} site {site!r} with batch shape "
                                  f"{tuple(d.batch_shape)} cannot be stacked: use one site with event shape (n,)")
    if isinstance(base, dist.MultivariateNormal):
        L = jnp.broadcast_to(base.scale_tril, shape + shape)
    else:
        W = base.cov_factor
        L = jnp.linalg.cholesky(W @ jnp.swapaxes(W, -1, -2) + jnp.diag(base.cov_diag))
    parts[k] = jnp.broadcast_to(base.loc, shape)
    L_full = jnp.zeros((n, n), dtype).at[cols, cols].set(L)
    return dist.MultivariateNormal(jnp.concatenate(parts).astype(dtype), scale_tril=L_full, validate_args=False)


def _placeholder_output(f, init, xs, T, rng_key):
    """NaN-filled stand-ins for what ``scan_wrapper`` would have returned."""
    carry_struct, y_struct = jax.eval_shape(
        lambda: run_step(f, init, _first(xs), rng_key=jax.random.PRNGKey(0))[1:]
    )

    def fill(s, lead=()):
        shape = lead + tuple(s.shape)
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.full(shape, jnp.nan, s.dtype)
        return jnp.zeros(shape, s.dtype)

    carry = jax.tree.map(fill, carry_struct)
    ys = jax.tree.map(lambda s: fill(s, (T,)), y_struct)
    return (jnp.asarray(T), rng_key, carry), (PytreeTrace({}), ys)


def _flat(x):
    return jnp.reshape(x, (-1,))


def build_state_space(f, init, xs, T, names: SiteNames, initial, layout: Optional[CarryLayout] = None,
                      init_leaf: Optional[int] = None) -> StateSpace:
    """Turn the scan's step function into transition and emission functions, with checks.

    ``init_leaf``: for a tuple carry, the leaf that is the initial-state site ``initial`` (the other
    leaves of ``init`` are known values); None when that site holds the whole stacked carry."""
    x0 = _first(xs)
    layout = layout or CarryLayout.of(f, init, x0, names.latent)
    if initial is not None and layout.augmented and init_leaf is not None:
        if tuple(initial.shape()) != layout.shapes[init_leaf]:
            raise ModelStructureError(f"the initial-state site {names.init!r} has shape {tuple(initial.shape())} but "
                                      f"its part of the scan's carry has shape {layout.shapes[init_leaf]}")
        initial = _augmented_transition(initial, layout, init, init_leaf, names.init, "initial-state")
    dtype = jnp.result_type(*jax.tree.leaves(init), float)
    latent_shape = layout.shapes[layout.latent_leaf]
    z_latent = jnp.zeros(latent_shape, dtype)
    if layout.augmented:
        state_shape = (layout.offsets[-1],)
        carry_of, latent_of = layout.unflatten, lambda s: s[layout.latent_columns].reshape(latent_shape)
    else:
        state_shape = latent_shape
        carry_of = latent_of = lambda s: s.reshape(state_shape)
    placeholder = jnp.zeros(state_shape, dtype)

    def transition(z_prev, xs_t):
        sites, new_carry, _ = run_step(f, carry_of(z_prev), xs_t, names.latent, z_latent, names.obs, validate=False)
        d = sites[names.latent]["fn"]
        return _augmented_transition(d, layout, new_carry) if layout.augmented else d

    def emission_given(z_prev, z, xs_t):
        sites, _, _ = run_step(f, carry_of(z_prev), xs_t, names.latent, latent_of(z), names.obs, validate=False)
        return sites[names.obs]["fn"]

    def emission(z, xs_t):
        return emission_given(_flat(placeholder), z, xs_t)

    def observation(xs_t):
        sites, _, _ = run_step(f, carry_of(_flat(placeholder)), xs_t, names.latent, z_latent, names.obs)
        site = sites[names.obs]
        return site["value"] if site["is_observed"] else None, site["fn"]

    z_flat = _flat(placeholder)
    trans0 = transition(z_flat, x0)
    if tuple(trans0.shape()) != state_shape:
        raise ModelStructureError(
            f"the latent site {names.latent!r} has shape {tuple(trans0.shape())} but the scan's initial "
            f"state has shape {state_shape}: they must match"
        )
    if initial is not None and layout.augmented and int(np.prod(initial.shape(), dtype=int)) != state_shape[0]:
        raise ModelStructureError(
            f"the initial-state site {names.init!r} has shape {tuple(initial.shape())}, but the scan's stacked "
            f"carry has {state_shape[0]} components ({layout.columns}): they must match"
        )
    if reads(lambda zp, z, x: jax.tree.leaves(emission_given(zp, z, x)), 0, z_flat, z_flat, x0):
        raise ModelStructureError(
            f"the emission site {names.obs!r} depends on the previous state (the scan's previous carry): emissions "
            "must depend on the current state only. Augment the state: make what it reads part of the latent "
            "site, or of a tuple carry, `return (z, z_prev), ...`, which ssmppl stacks into one state vector"
        )

    y0, emis0 = observation(x0)
    obs_shape = tuple(emis0.shape())
    dy = int(np.prod(obs_shape, dtype=int))
    if y0 is None:
        observations = jnp.full((T, dy), jnp.nan, placeholder.dtype)
    else:
        if tuple(jnp.shape(y0)) != obs_shape:
            raise ObservationShapeError(
                f"observations of site {names.obs!r} have shape {tuple(jnp.shape(y0))} per time step, but the "
                f"emission distribution has shape {obs_shape}: pass observations of shape {(T,) + obs_shape}"
            )
        if xs is None:
            observations = jnp.broadcast_to(_flat(y0), (T, dy))
        else:
            observations = jax.vmap(lambda x: _flat(observation(x)[0]))(xs)
        observations = observations.astype(jnp.result_type(observations, float))

    initial_value = None if initial is not None else CarryLayout.flatten(init).astype(placeholder.dtype)
    return StateSpace(
        initial=initial,
        initial_value=initial_value,
        transition=transition,
        emission=emission,
        xs=xs,
        length=T,
        observations=observations,
        state_shape=state_shape,
        obs_shape=obs_shape,
        names=names,
        columns=layout.columns,
    )


def discover(model, args, kwargs, latent=None, obs=None) -> SiteNames:
    """Site names of a state-space model (one probe run, the scan body run once)."""
    return discover_observed(model, args, kwargs, latent, obs)[0]


def discover_observed(model, args, kwargs, latent=None, obs=None):
    """``(SiteNames, observed)``: ``discover``'s site names and whether the emission site has
    observations in this call (``obs=`` not None in the scan's first step)."""
    interceptor = ScanInterceptor(latent=latent, obs=obs)
    with handlers.seed(rng_seed=0), interceptor:
        model(*args, **kwargs)
    if interceptor.found is None:
        raise ModelStructureError(
            "the model never calls numpyro.contrib.control_flow.scan: ssmppl reads a state-space model "
            "from a scan over time with one latent state site and one emission site"
        )
    if interceptor.found.init is None and interceptor.layout.augmented:
        # A tuple carry split from one initial-state site is matched by value (_stacked_initial_site),
        # which needs concrete values: under jit they are tracers unless evaluated eagerly.
        again = ScanInterceptor(latent=latent, obs=obs)
        with jax.ensure_compile_time_eval(), handlers.block(), handlers.seed(rng_seed=0), again:
            model(*args, **kwargs)
        return again.found, again.emission_observed
    return interceptor.found, interceptor.emission_observed


def state_columns(model, args, kwargs, latent=None, obs=None) -> dict:
    """{label: slice} of the flat state vector that filters and smoothers return (``CarryLayout.columns``)."""
    interceptor = ScanInterceptor(latent=latent, obs=obs)
    with handlers.block(), handlers.seed(rng_seed=0), interceptor:
        model(*args, **kwargs)
    if interceptor.layout is None:
        discover(model, args, kwargs, latent, obs)  # raises: no scan
    return interceptor.layout.columns


def trace_state_space(model, args, kwargs, params=None, latent=None, obs=None, names=None) -> StateSpace:
    """The ``StateSpace`` of ``model(*args, **kwargs)`` with global sites set from ``params``.

    Every global ``numpyro.sample`` site must have a value in ``params``; a
    ``numpyro.param`` site without one takes its initial value.
    """
    return trace_model(model, args, kwargs, params, latent, obs, names)[0]


def trace_model(model, args, kwargs, params=None, latent=None, obs=None, names=None):
    """``(StateSpace, outer_sites)``: the state space and the messages of the sites
    outside the scan (name -> msg, with ``fn``, ``value`` and, for params, ``kwargs``)."""
    names = names or discover(model, args, kwargs, latent, obs)
    params = dict(params or {})
    found = {}

    def keep(problem, rng_key):
        found["problem"] = problem

    interceptor = ScanInterceptor(names=names, on_scan=keep)
    with handlers.seed(rng_seed=0), interceptor, handlers.substitute(data=params):
        model(*args, **kwargs)
    check_globals_given(interceptor.outer_sites, names, params)
    return found["problem"], interceptor.outer_sites


def check_globals_given(outer_sites, names: SiteNames, params):
    missing = [k for k, s in outer_sites.items()
               if s["type"] == "sample" and not s["is_observed"] and k != names.init and k not in params]
    if missing:
        raise ModelStructureError(
            f"no value for the global sample site(s) {missing}: pass them in params "
            "(ssm.init_params(key, ...) returns a complete dict)"
        )
    unknown = [k for k in params if k not in outer_sites]
    if unknown:
        raise ModelStructureError(f"params has entries {unknown} that are not global sites of the model "
                                  f"(global sites: {list(names.globals)})")
