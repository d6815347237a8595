"""The flow engine: a *plan* of score-difference flow steps, one compiled loop that runs it, and executors.

    x = gan2flow.flow(x, estimator, sigmas, step_scale=0.5, steps_per_sigma=1, method="euler", ...)

is shorthand for building a :class:`FlowPlan` (what to do) and running it (how):

    plan = gan2flow.flows.make_plan(x, estimator, sigmas, step_scale=0.5, ...)   # validated, named
    x = gan2flow.flows.run(plan, x, batch_size=None, progress=None).x           # chunks, segments, bar

For each level σ_k of the plan (``steps_per_sigma`` times):

    euler:  x ← x + η_k v_{σ_k}(x)
    heun:   x̃ = x + η_k v(x);  x ← x + η_k (v(x) + v(x̃)) / 2       (same σ_k in both evaluations)
    noise:  x ← x + sqrt(2 η_k) · noise_scale · n,  n ~ N(0, I)     (Langevin form, when noise_scale > 0)

with η_k = step_scale · σ_k² unless explicit step sizes are given (shared/SD_FLOW.md §2: by Tweedie's
formula σ² v_σ = D_p − D_q is a displacement in data units, so ``step_scale`` is dimensionless). With
``drift_correction`` the plan adds the kernel term ∇log q_start,σ − ∇log q_t,σ from the batch's starting
samples (§7), so a fixed estimator against q_start follows the SD of the current particles.

All steps of a plan run inside one compiled ``tf.while_loop`` (:func:`run_batch`; XLA when
``jit_compile``); σ's and η's are tensors padded to a power-of-two bucket, so new values never retrace.
Everything else is a way of *executing* plans: :func:`run` cuts rows into chunks (``batch_size``) and
levels into progress-bar segments; ``gan2flow.distribute`` deals the chunks to the replicas of a
``tf.distribute`` strategy; ``GANFlow.refine`` runs two phases (drift-corrected levels, then plain ones).
Noise is keyed by (seed, global step, global row) through the plan's ``step_offset`` and ``row_offset``
(``gan2flow.noise``), so every way of cutting a plan draws the noise of one uninterrupted run.

Numerical blow-ups (NaN/Inf, or a state beyond the plan's ``divergence_bound``) stop the flow with a
:class:`FlowDivergenceError` naming the step and σ, or, with ``on_divergence="backoff"``, halve the step
and retry; non-finite samples are never returned.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, estimators, noise
from gan2flow import sigmas as _sigmas

__all__ = ["flow", "trajectory", "FlowDivergenceError", "METHODS", "ON_DIVERGENCE", "trace_count", "FlowPlan",
           "FlowResult", "make_plan", "resolve_seed", "default_divergence_bound", "run", "run_batch", "compiled_loop",
           "padded_schedule", "schedule_bucket", "raise_divergence"]

METHODS = ("euler", "heun")
ON_DIVERGENCE = ("raise", "backoff")
_TRACES = {"count": 0}
_LOOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FlowDivergenceError(FloatingPointError):
    """A flow produced non-finite values or left its divergence bound.

    Attributes:
        step: index of the failing step (0-based, counting every step of every level).
        level: index of its σ level.
        sigma: that level's σ.
        step_size: the step size η in force when it failed.
    """

    def __init__(self, message, *, step, level, sigma, step_size):
        super().__init__(message)
        self.step = step
        self.level = level
        self.sigma = sigma
        self.step_size = step_size


def trace_count():
    """How many times a flow program has been traced in this process (steady state adds none)."""
    return _TRACES["count"]


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclasses.dataclass(frozen=True, eq=False)
class FlowPlan:
    """Everything a flow does to a batch, validated and named (build one with :func:`make_plan`).

    Attributes:
        estimator: callable (x, sigma) -> v shaped like x.
        sigmas: float32 [levels], non-increasing noise levels.
        step_sizes: float32 [levels], η_k per level.
        steps_per_sigma: steps taken at each level.
        method: ``"euler"`` or ``"heun"``.
        noise_scale: ≥ 0, Langevin noise sqrt(2η)·noise_scale·n per step.
        noise_levels: None, or float32 [levels] ≥ 0: level k's noise is noise_levels[k]·noise_scale (the staged
            field's noise-free finishing stages, gan2flow.staged).
        seed: integer noise seed.
        row_offset: global index of the batch's first row (keys the noise).
        step_offset: global index of the plan's first step (keys the noise; counts in error messages).
        divergence_bound: largest |coordinate| accepted (inf: only non-finite values diverge).
        on_divergence: ``"raise"`` or ``"backoff"`` (halve the step and retry).
        max_backoffs: halvings allowed with ``"backoff"``.
        drift_correction: add the kernel term ∇log q_start,σ − ∇log q_t,σ, where q_start is the batch as it
            was when the plan (or its first segment) started (shared/SD_FLOW.md §7).
        kernel_block_size: query block of that kernel term.
        max_displacement: the Tweedie bound (shared/SD_FLOW.md §9.2): σ²·v_σ(x) = E_p[y|x] − E_q[y|x] is a
            difference of two posterior means of data points, so its norm never exceeds the data's diameter.
            Each sample's velocity is scaled down so that σ²‖v‖ ≤ max_displacement (inf: never); clipped
            evaluations are counted (:class:`FlowResult`).
        box: None, or (low, high) arrays broadcastable to one sample: after every step the state is projected
            onto the box (e.g. the data's range); projected values are counted.
        source_weight: w in the drift correction's ∇log q_start − w·∇log q_t (1 − noise_scale² with noise:
            shared/SD_FLOW.md §9.4).
    """

    estimator: object
    sigmas: np.ndarray
    step_sizes: np.ndarray
    steps_per_sigma: int = 1
    method: str = "euler"
    noise_scale: float = 0.0
    seed: int = 0
    row_offset: int = 0
    step_offset: int = 0
    divergence_bound: float = float("inf")
    on_divergence: str = "raise"
    max_backoffs: int = 8
    drift_correction: bool = False
    kernel_block_size: object = "auto"
    max_displacement: float = float("inf")
    box: object = None
    source_weight: float = 1.0
    noise_levels: object = None

    @property
    def n_levels(self):
        return int(len(self.sigmas))

    def levels(self, start, stop=None):
        """The plan restricted to levels ``start:stop``, its steps keeping their global indices."""
        stop = self.n_levels if stop is None else stop
        return dataclasses.replace(self, sigmas=self.sigmas[start:stop], step_sizes=self.step_sizes[start:stop],
                                   noise_levels=None if self.noise_levels is None else self.noise_levels[start:stop],
                                   step_offset=self.step_offset + int(start) * self.steps_per_sigma)

    def rows(self, start):
        """The plan for a batch whose first row is row ``start`` of this plan's batch."""
        return dataclasses.replace(self, row_offset=self.row_offset + int(start))

    def replace(self, **changes):
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def resolve_seed(seed, noise_scale):
    """The integer noise seed of a flow: ``seed`` checked, or a fresh random one when None and noisy."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1)) if noise_scale > 0 else 0
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None, got {seed!r}.")
    return int(seed)


def default_divergence_bound(x, sigma_max):
    """The default divergence bound, 1000·(1 + max|x| + 10·σ_max), for a batch x (eager or in-graph)."""
    x = tf.convert_to_tensor(x, tf.float32)
    largest = tf.cond(tf.size(x) > 0, lambda: tf.reduce_max(tf.abs(x)), lambda: tf.constant(0.0))
    return 1e3 * (1.0 + largest + 10.0 * tf.cast(sigma_max, tf.float32))


def make_plan(x, estimator, sigmas, *, step_scale=0.5, step_sizes=None, steps_per_sigma=1, method="euler",
              noise_scale=0.0, seed=None, on_divergence="raise", max_backoffs=8, divergence_bound=None,
              drift_correction=False, kernel_block_size="auto", max_displacement=None, box=None,
              noise_correction=True, noise_levels=None):
    """Validate a flow's arguments into a :class:`FlowPlan` for the batch ``x`` (see :func:`flow`).

    ``x`` is used for its shape (the estimator is probed once on its first rows) and for the default
    divergence bound, 1000·(1 + max|x| + 10·σ_max).

    Noise and the source term (shared/SD_FLOW.md §9.4): with Langevin noise of scale s, the drift
    ∇log p − ∇log q_t plus noise has the stationary law p^{1/(1+s²)}, not p. Where the source term is
    explicit — an estimator with ``with_source_weight`` (``KernelScoreDifference``) and the drift
    correction's kernel term — ``noise_correction`` (default) follows ∇log p − (1 − s²)∇log q_t instead,
    whose stationary law is p. Where the source is implicit (a discriminator), noise tempers the target.

    Raises:
        ValueError: a bad argument (named in the message), or an estimator that does not return one
            float32 v shaped like x.
    """
    if not callable(estimator):
        raise ValueError(f"`estimator` must be a callable (x, sigma) -> v, got {type(estimator).__name__}.")
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    sigmas = _sigmas.validate(sigmas, "sigmas")
    method = _checks.one_of(method, "method", METHODS)
    on_divergence = _checks.one_of(on_divergence, "on_divergence", ON_DIVERGENCE)
    steps_per_sigma = _checks.positive_int(steps_per_sigma, "steps_per_sigma")
    noise_scale = _checks.positive_float(noise_scale, "noise_scale", allow_zero=True)
    max_backoffs = _checks.positive_int(max_backoffs, "max_backoffs", allow_zero=True)
    if step_sizes is None:
        step_scale = _checks.positive_float(step_scale, "step_scale")
        etas = step_scale * tf.square(sigmas)
    else:
        etas = _checks.as_float_tensor(step_sizes, "step_sizes", rank=1)
        if etas.shape[0] != sigmas.shape[0]:
            raise ValueError(
                f"`step_sizes` must have one entry per sigma level ({sigmas.shape[0]}), got {etas.shape[0]}."
            )
        if bool(tf.reduce_any(etas < 0)):
            raise ValueError(f"`step_sizes` must be >= 0, got {etas.numpy().tolist()}.")
    if noise_levels is not None:
        noise_levels = np.asarray(noise_levels, np.float32).reshape(-1)
        if noise_levels.shape[0] != sigmas.shape[0] or not np.all(np.isfinite(noise_levels)) or np.any(
                noise_levels < 0):
            raise ValueError(f"`noise_levels` must hold one finite factor ≥ 0 per sigma level ({sigmas.shape[0]}), "
                             f"got {noise_levels.tolist()}.")
    seed = resolve_seed(seed, noise_scale)
    source_weight = 1.0 - noise_scale**2 if (noise_correction and noise_scale > 0) else 1.0
    if source_weight != 1.0 and hasattr(estimator, "with_source_weight"):
        estimator = estimator.with_source_weight(source_weight)
    sigma_max = float(sigmas[0]) if sigmas.shape[0] else 0.0
    if divergence_bound is None:
        divergence_bound = float(default_divergence_bound(x, sigma_max))
    elif isinstance(divergence_bound, (int, float, np.floating)) and divergence_bound == float("inf"):
        divergence_bound = float("inf")  # no bound: only non-finite values count as divergence
    else:
        divergence_bound = _checks.positive_float(divergence_bound, "divergence_bound")
    kernel_block_size = estimators.checked_block_size(kernel_block_size)
    max_displacement = (float("inf") if max_displacement is None
                        else _checks.positive_float(max_displacement, "max_displacement"))
    box = _checked_box(box, tuple(x.shape[1:]))
    if sigmas.shape[0] and x.shape[0]:
        _probe(estimator, x, sigma_max)
    return FlowPlan(estimator=estimator, sigmas=sigmas.numpy(), step_sizes=np.asarray(etas, np.float32),
                    steps_per_sigma=steps_per_sigma, method=method, noise_scale=noise_scale, seed=seed,
                    divergence_bound=divergence_bound, on_divergence=on_divergence, max_backoffs=max_backoffs,
                    drift_correction=bool(drift_correction), kernel_block_size=kernel_block_size,
                    max_displacement=max_displacement, box=box, source_weight=source_weight,
                    noise_levels=noise_levels)


def _checked_box(box, sample_shape):
    """``box`` as (low, high) float32 arrays of one sample's shape, low ≤ high; or None."""
    if box is None:
        return None
    try:
        low, high = box
        low = np.broadcast_to(np.asarray(low, np.float32), sample_shape).copy()
        high = np.broadcast_to(np.asarray(high, np.float32), sample_shape).copy()
    except (TypeError, ValueError):
        raise ValueError(f"`box` must be (low, high) broadcastable to a sample of shape {sample_shape}, got "
                         f"{box!r}.") from None
    if np.isnan(low).any() or np.isnan(high).any() or (low > high).any():
        raise ValueError("`box` must be (low, high) with low <= high everywhere and no NaN.")
    return low, high


_PROBE_ROWS = 16
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe(estimator, x, sigma):
    """Call the estimator once, eagerly, on the first rows of x: it must return one float32 tensor shaped
    like its input. Done once per estimator and sample shape, before anything is traced, so that a wrong
    estimator fails here with a plain message (and estimators' own eager checks run) instead of deep
    inside a compiled loop; steady-state calls skip it."""
    if not tf.executing_eagerly():
        return
    key = tuple(x.shape[1:])
    try:
        seen = _PROBED.setdefault(estimator, set())
    except TypeError:  # not weak-referenceable: probe every call
        seen = set()
    if key in seen:
        return
    rows = x[:_PROBE_ROWS]
    try:
        velocity = estimator(rows, sigma)
    except tf.errors.OpError as error:
        first = (error.message or type(error).__name__).strip().splitlines()[0]
        first = first.split("}} ", 1)[-1]  # drop TensorFlow's "{{function_node ...}}" prefix
        raise ValueError(
            f"`estimator` failed on the first rows of `x` (shape {tuple(rows.shape)}) at sigma={sigma:.6g}: "
            f"{first}") from error
    if velocity is None or isinstance(velocity, (list, tuple, dict)):
        found = "None" if velocity is None else f"a {type(velocity).__name__} of {len(velocity)}"
        raise ValueError(f"`estimator` must return one tensor v shaped like x, got {found}.")
    dtype = getattr(velocity, "dtype", None)
    if dtype is None or tf.as_dtype(dtype) != tf.float32:
        raise ValueError(
            f"`estimator` must return float32 v shaped like x, got dtype {dtype} (cast it to float32).")
    if tuple(velocity.shape) != tuple(rows.shape):
        raise ValueError(
            f"`estimator` must return v shaped like x: got shape {tuple(velocity.shape)} for x of shape "
            f"{tuple(rows.shape)}.")
    seen.add(key)


# ---------------------------------------------------------------------------------------------------
# The one compiled loop


def _build_loop(estimator, method, record, noisy, drift_block, source_weight, jit_compile):
    """The compiled loop for one static structure; ``drift_block`` is the kernel block size of the drift
    correction, or False for none."""
    def run_loop(x, reference, sigmas, etas, n_levels, steps_per_sigma, noise_scale, noise_levels, seed, offset,
                 step_offset, bound, max_backoffs, max_displacement, low, high):
        # sigmas/etas are padded to a bucket length (see padded_schedule); n_levels is the real length.
        _TRACES["count"] += 1
        if drift_block is not False:
            start = estimators.kernel_samples(reference)

            def velocity_at(x, sigma):
                return estimator(x, sigma) + estimators.kernel_score_difference(
                    x, start, None, sigma, block_size=drift_block, source_weight=source_weight)
        else:
            velocity_at = estimator

        def bounded_velocity(x, sigma):
            """v with σ²‖v‖ ≤ max_displacement per sample (the Tweedie bound), and how many were scaled down."""
            velocity = velocity_at(x, sigma)
            displacement = tf.square(sigma) * tf.norm(tf.reshape(velocity, [tf.shape(x)[0], -1]), axis=1)
            factor = tf.minimum(1.0, max_displacement / tf.maximum(displacement, 1e-30))
            factor = tf.reshape(factor, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))
            return velocity * factor, tf.reduce_sum(tf.cast(displacement > max_displacement, tf.int32))

        def step_once(x, sigma, eta):
            velocity, clipped = bounded_velocity(x, sigma)
            if method == "euler":
                return x + eta * velocity, clipped
            corrected, _ = bounded_velocity(x + eta * velocity, sigma)
            return x + eta * 0.5 * (velocity + corrected), clipped

        n_steps = n_levels * steps_per_sigma
        shape = tf.shape(x)
        if record:
            history = tf.zeros(tf.concat([[tf.shape(sigmas)[0] + 1], shape], axis=0), x.dtype)
            history = tf.tensor_scatter_nd_update(history, [[0]], x[None])
        else:
            history = tf.zeros([0], x.dtype)

        def cond(i, x, scale, bad_step, backoffs, clipped, projected, history):
            return tf.logical_and(i < n_steps, bad_step < 0)

        def body(i, x, scale, bad_step, backoffs, clipped, projected, history):
            level = i // steps_per_sigma
            sigma = sigmas[level]
            eta = etas[level] * scale
            proposal, clipped_now = step_once(x, sigma, eta)
            if noisy:
                proposal = proposal + tf.sqrt(2.0 * eta) * noise_scale * noise_levels[level] * noise.counter_normal(
                    shape, seed, step_offset + i, offset)
            inside = tf.clip_by_value(proposal, low, high)
            projected_now = tf.reduce_sum(tf.cast(tf.not_equal(inside, proposal), tf.int32))
            proposal = inside
            accepted = tf.logical_and(
                tf.reduce_all(tf.math.is_finite(proposal)), tf.reduce_max(tf.abs(proposal)) <= bound
            )
            can_back_off = backoffs < max_backoffs
            x = tf.where(accepted, proposal, x)
            rejected_retry = tf.logical_and(tf.logical_not(accepted), can_back_off)
            scale = tf.where(rejected_retry, 0.5 * scale, scale)
            backoffs = backoffs + tf.cast(rejected_retry, tf.int32)
            failed = tf.logical_and(tf.logical_not(accepted), tf.logical_not(can_back_off))
            bad_step = tf.where(failed, i, bad_step)
            if record:
                history = tf.tensor_scatter_nd_update(history, [[level + 1]], x[None])
            clipped = clipped + tf.where(accepted, clipped_now, 0)
            projected = projected + tf.where(accepted, projected_now, 0)
            i = i + tf.cast(accepted, tf.int32)
            return i, x, scale, bad_step, backoffs, clipped, projected, history

        zero = tf.constant(0)
        i, x, scale, bad_step, backoffs, clipped, projected, history = tf.while_loop(
            cond,
            body,
            (zero, x, tf.constant(1.0), tf.constant(-1), zero, zero, zero, history),
            parallel_iterations=1,
        )
        return x, bad_step, scale, tf.stack([clipped, projected]), history

    return tf.function(run_loop, jit_compile=bool(jit_compile), reduce_retracing=False)


def compiled_loop(plan, *, record=False, jit_compile=True):
    """The compiled ``tf.function`` running plans of ``plan``'s structure (estimator, method, noise on/off,
    drift correction); cached per estimator. Its arguments are :func:`loop_inputs`-style tensors:
    ``(x, reference, **padded_schedule(plan, bucket), **plan tensors)``. Used by :func:`run_batch` and by
    ``gan2flow.distribute`` (which runs it on every replica)."""
    drift_block = plan.kernel_block_size if plan.drift_correction else False
    source_weight = plan.source_weight if plan.drift_correction else 1.0
    key = (plan.method, bool(record), plan.noise_scale > 0, str(drift_block), source_weight, bool(jit_compile))
    try:
        cache = _LOOPS.setdefault(plan.estimator, {})
    except TypeError:  # not weak-referenceable: compile without caching
        cache = {}
    if key not in cache:
        cache[key] = _build_loop(plan.estimator, plan.method, bool(record), plan.noise_scale > 0, drift_block,
                                 source_weight, jit_compile)
    return cache[key]


def schedule_bucket(n_levels):
    """Schedule lengths are padded to a power of two (at least 8): few programs, little waste."""
    return max(8, 1 << (int(n_levels) - 1).bit_length())


def padded_schedule(plan, bucket=None, scale=1.0):
    """The plan's per-call tensors: σ's and η's (times ``scale``) padded to ``bucket`` (default: the plan's
    power-of-two bucket, ≥ 8), the level count, and the scalars; a dict of the loop's keyword arguments."""
    n_levels = plan.n_levels
    bucket = schedule_bucket(n_levels) if bucket is None else bucket
    fill = float(plan.sigmas[-1]) if n_levels else 1.0
    sigmas = np.full(bucket, fill, np.float32)
    etas = np.zeros(bucket, np.float32)
    sigmas[:n_levels] = plan.sigmas
    etas[:n_levels] = plan.step_sizes * np.float32(scale)
    noise_levels = np.ones(bucket, np.float32)
    if plan.noise_levels is not None:
        noise_levels[:n_levels] = plan.noise_levels
    return dict(
        sigmas=tf.constant(sigmas), etas=tf.constant(etas), n_levels=tf.constant(n_levels, tf.int32),
        steps_per_sigma=tf.constant(plan.steps_per_sigma, tf.int32),
        noise_scale=tf.constant(plan.noise_scale, tf.float32), noise_levels=tf.constant(noise_levels),
        seed=tf.constant(plan.seed, tf.int64),
        offset=tf.constant(plan.row_offset, tf.int64), step_offset=tf.constant(plan.step_offset, tf.int32),
        bound=tf.constant(plan.divergence_bound, tf.float32),
        max_backoffs=tf.constant(plan.max_backoffs if plan.on_divergence == "backoff" else 0, tf.int32),
        max_displacement=tf.constant(plan.max_displacement, tf.float32),
        low=tf.constant(-np.inf if plan.box is None else plan.box[0], tf.float32),
        high=tf.constant(np.inf if plan.box is None else plan.box[1], tf.float32),
    )


def raise_divergence(plan, bad_step, scale):
    """Raise :class:`FlowDivergenceError` for the plan's local step ``bad_step`` (reported globally)."""
    local_level = bad_step // plan.steps_per_sigma
    sigma = float(plan.sigmas[local_level])
    step_size = float(plan.step_sizes[local_level]) * scale
    step = bad_step + plan.step_offset
    level = local_level + plan.step_offset // plan.steps_per_sigma
    hint = (
        "lower step_scale, use method='heun', or pass on_divergence='backoff'"
        if plan.on_divergence == "raise"
        else f"still diverging after {plan.max_backoffs} step halvings; lower step_scale or check the estimator"
    )
    raise FlowDivergenceError(
        f"flow diverged at step {step} (level {level}, sigma={sigma:.6g}, step size={step_size:.6g}): "
        f"non-finite or exploding values; {hint}.",
        step=step, level=level, sigma=sigma, step_size=step_size,
    )


class FlowResult(NamedTuple):
    """What running a plan gives back.

    Attributes:
        x: the moved samples, float32 shaped like the input.
        history: the states at every level boundary [levels + 1, batch, ...] when recorded, else None.
        clipped: velocity evaluations scaled down to the plan's ``max_displacement`` (Tweedie bound).
        projected: coordinates projected back onto the plan's ``box``.
    """

    x: tf.Tensor
    history: object = None
    clipped: int = 0
    projected: int = 0


def run_batch(plan, x, *, reference=None, record=False, callback=None, jit_compile=True):
    """Run ``plan`` on one batch ``x`` in one compiled loop; returns a :class:`FlowResult`.

    Args:
        plan: a :class:`FlowPlan`.
        x: float32 [batch, ...].
        reference: the starting samples of the drift correction (default: x).
        record: also return the states at every level boundary, [levels + 1, batch, ...].
        callback: called after every step with ``{step, level, sigma, step_size, x, chunk_start}``; the
            steps are then compiled one at a time.

    Raises:
        FlowDivergenceError: a non-finite or exploding state, with the step and σ.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    reference = x if reference is None else reference
    if plan.n_levels == 0 or int(x.shape[0]) == 0:
        return FlowResult(tf.identity(x), x[None] if record else None)
    if callback is not None:
        return _run_stepwise(plan, x, reference, record, callback, jit_compile)
    loop = compiled_loop(plan, record=record, jit_compile=jit_compile)
    result, bad_step, scale, counts, history = loop(x, reference, **padded_schedule(plan))
    if int(bad_step) >= 0:
        raise_divergence(plan, int(bad_step), float(scale))
    clipped, projected = (int(c) for c in counts)
    return FlowResult(result, history[:plan.n_levels + 1] if record else None, clipped, projected)


def _run_stepwise(plan, x, reference, record, callback, jit_compile):
    """:func:`run_batch` one compiled step at a time, so that ``callback`` sees every step."""
    loop = compiled_loop(plan, record=False, jit_compile=jit_compile)
    states = [x] if record else None
    scale = 1.0
    step = 0
    clipped = projected = 0
    for level in range(plan.n_levels):
        one_level = plan.levels(level, level + 1)
        for _ in range(plan.steps_per_sigma):
            single = one_level.replace(steps_per_sigma=1, step_offset=plan.step_offset + step)
            x, bad_step, used, counts, _ = loop(x, reference, **padded_schedule(single, 8, scale))
            scale *= float(used)
            clipped += int(counts[0])
            projected += int(counts[1])
            if int(bad_step) >= 0:
                raise_divergence(plan, step, scale)
            callback({
                "step": plan.step_offset + step, "level": level + plan.step_offset // plan.steps_per_sigma,
                "sigma": float(plan.sigmas[level]), "step_size": float(plan.step_sizes[level]) * scale, "x": x,
                "chunk_start": plan.row_offset,
            })
            step += 1
        if record:
            states.append(x)
    return FlowResult(x, tf.stack(states) if record else None, clipped, projected)


# ---------------------------------------------------------------------------------------------------
# Executing plans on one device: chunks of rows, phases, progress-bar segments


def run(plan, x, *, phases=None, batch_size=None, record=False, callback=None, jit_compile=True, progress=None,
        segments=10):
    """Execute ``plan`` on ``x``: rows in chunks of ``batch_size``, levels in progress-bar segments.

    Args:
        plan: a :class:`FlowPlan` for the whole batch (its ``row_offset`` is the batch's first row).
        x: float32 [n, ...].
        phases: optional callable ``(chunk_plan, chunk) -> [plan, ...]``: the plans to run one after the
            other on each chunk (e.g. drift-corrected levels then plain ones); default: ``[chunk_plan]``.
            The drift correction's starting samples are the chunk as it was before its first phase.
        batch_size: rows per chunk (None: one chunk). Chunks are independent unless the plan couples rows
            (drift correction, kernel estimators using the particles as the source).
        record: return the states at every level boundary (one phase only).
        callback: per-step callback (see :func:`run_batch`).
        progress: a label: print it and show a ``keras.utils.Progbar`` over levels, running each phase in
            ``segments`` pieces (the result does not change: noise keeps its global keys; with
            ``on_divergence="backoff"`` a halved step lasts to the end of its segment). None: no bar.

    Returns:
        A :class:`FlowResult` (x, history (None unless ``record``), clipped and projected counts).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    n = int(x.shape[0])
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable (a dict of step values) -> None, got {type(callback).__name__}.")
    chunk = n if batch_size is None else min(_checks.positive_int(batch_size, "batch_size"), max(n, 1))
    starts = list(range(0, n, chunk)) if n else [0]
    chunk_phases = [(start, x[start:start + chunk], plan.rows(start)) for start in starts]
    chunk_phases = [(start, part, [chunk_plan] if phases is None else phases(chunk_plan, part))
                    for start, part, chunk_plan in chunk_phases]
    if record and any(len(plans) != 1 for _, _, plans in chunk_phases):
        raise ValueError("`record` needs a single phase.")
    bar = None
    if progress is not None:
        total = sum(p.n_levels for _, _, plans in chunk_phases for p in plans)
        if total:
            print(progress)
            bar = keras.utils.Progbar(total, unit_name="level", stateful_metrics=["sigma"])
    done = clipped = projected = 0
    outputs, histories = [], []
    for _, part, plans in chunk_phases:
        start_samples = part
        for phase in plans:
            pieces = 1 if bar is None else max(1, min(segments, phase.n_levels))
            bounds = np.unique(np.linspace(0, phase.n_levels, pieces + 1).astype(int))
            path = [part[None]] if record else None
            for first, stop in zip(bounds[:-1], bounds[1:], strict=False):
                result = run_batch(phase.levels(first, stop), part, reference=start_samples, record=record,
                                   callback=callback, jit_compile=jit_compile)
                part = result.x
                clipped += result.clipped
                projected += result.projected
                if record:
                    path.append(result.history[1:])
                done += int(stop - first)
                if bar is not None:
                    bar.update(done, values=[("sigma", float(phase.sigmas[stop - 1]))])
            if record:
                histories.append(tf.concat(path, axis=0))
        outputs.append(part)
    result = outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=0)
    history = None
    if record:
        history = histories[0] if len(histories) == 1 else tf.concat(histories, axis=1)
    return FlowResult(result, history, clipped, projected)


# ---------------------------------------------------------------------------------------------------
# The public one-call flow


def flow(x, estimator, sigmas, *, step_scale=0.5, step_sizes=None, steps_per_sigma=1, method="euler",
         noise_scale=0.0, seed=None, callback=None, jit_compile=True, on_divergence="raise", max_backoffs=8,
         divergence_bound=None, batch_size=None):
    """Move samples along a score-difference estimator over a decreasing σ schedule.

    For each level σ_k (``steps_per_sigma`` times):

        euler:  x ← x + η_k v_{σ_k}(x)
        heun:   x̃ = x + η_k v(x);  x ← x + η_k (v(x) + v(x̃)) / 2       (same σ_k in both evaluations)
        noise:  x ← x + sqrt(2 η_k) · noise_scale · n,  n ~ N(0, I)     (Langevin form, when noise_scale > 0)

    with η_k = step_scale · σ_k² unless ``step_sizes`` gives η_k per level.

    Args:
        x: samples to move, [batch, ...] (any trailing shape the estimator accepts).
        estimator: callable (x, sigma) -> v shaped like x (see ``gan2flow.estimators``).
        sigmas: 1-D decreasing (non-increasing) noise levels, e.g. ``gan2flow.sigmas.geometric(...)``.
            An empty schedule is the identity.
        step_scale: ε in η_k = ε σ_k², dimensionless; (0, 1] is the stable range for Euler.
        step_sizes: explicit η_k per level (overrides step_scale), e.g.
            ``gan2flow.sigmas.diffusion_step_sizes(sigmas)`` for the DDIM equivalence.
        steps_per_sigma: steps taken at each level.
        method: ``"euler"`` or ``"heun"``.
        noise_scale: ≥ 0; adds the Langevin term. Noise is counter-based: the same (seed, sample index,
            step) always draws the same value, whatever ``batch_size``.
        seed: integer seed for the noise (None: random when noise_scale > 0).
        callback: called after every step with a dict ``{step, level, sigma, step_size, x, chunk_start}``;
            then steps are compiled one at a time instead of in one loop.
        jit_compile: compile with XLA (True) or as a plain graph (False).
        on_divergence: ``"raise"`` a :class:`FlowDivergenceError`, or ``"backoff"``: halve the step size
            (for the rest of the flow) and retry the step, at most ``max_backoffs`` times.
        max_backoffs: retries allowed with ``on_divergence="backoff"``.
        divergence_bound: largest |coordinate| accepted; None: 1000·(1 + max|x₀| + 10·σ_max).
        batch_size: flow at most this many samples at a time (bounded memory). Estimators that use the
            particles themselves as the source (``KernelScoreDifference(source=None)``) then see only
            their chunk.

    Returns:
        A float32 tensor shaped like x.

    Raises:
        ValueError: bad arguments (named in the message), or an estimator that does not return one
            float32 v shaped like x (checked by calling it once, eagerly, on the first 16 rows of x at
            σ_0, before compiling; once per estimator and sample shape).
        FlowDivergenceError: a non-finite or exploding state, with the step and σ.

    Compilation: the first call for an (estimator object, method, noise on/off, input or chunk shape,
    schedule-length bucket of 8, 16, 32, ... levels) traces and compiles the whole loop once (about
    1–3 s on 2 CPU cores for an MLP discriminator, docs/performance.md); later calls with new σ values,
    step sizes, seeds or data of the same shape reuse that program (:func:`trace_count` stays put).
    With ``batch_size``, a remainder chunk of another shape compiles once more.

    Example:
        >>> est = gan2flow.KernelScoreDifference(target=data)
        >>> x = gan2flow.flow(noise, est, gan2flow.sigmas.geometric(3.0, 0.05, 40), step_scale=0.5)
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    plan = make_plan(x, estimator, sigmas, step_scale=step_scale, step_sizes=step_sizes,
                     steps_per_sigma=steps_per_sigma, method=method, noise_scale=noise_scale, seed=seed,
                     on_divergence=on_divergence, max_backoffs=max_backoffs, divergence_bound=divergence_bound)
    return run(plan, x, batch_size=batch_size, callback=callback, jit_compile=jit_compile).x


def trajectory(x, estimator, sigmas, *, step_scale=0.5, step_sizes=None, steps_per_sigma=1, method="euler",
               noise_scale=0.0, seed=None, callback=None, jit_compile=True, on_divergence="raise",
               max_backoffs=8, divergence_bound=None, batch_size=None):
    """Like :func:`flow` (same arguments), but return the states at every level boundary.

    Returns:
        A float32 tensor [len(sigmas) + 1, batch, ...]: the start, then the samples after each level
        (its last entry equals ``flow(...)`` with the same arguments). Memory grows with the number of
        levels; use ``callback`` for finer or lighter tracing.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    plan = make_plan(x, estimator, sigmas, step_scale=step_scale, step_sizes=step_sizes,
                     steps_per_sigma=steps_per_sigma, method=method, noise_scale=noise_scale, seed=seed,
                     on_divergence=on_divergence, max_backoffs=max_backoffs, divergence_bound=divergence_bound)
    return run(plan, x, batch_size=batch_size, record=True, callback=callback, jit_compile=jit_compile).history
