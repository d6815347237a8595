"""Integrators of the score-difference flow dx/dt = v_σ(x) over a decreasing σ schedule.

One call shape for every integrator (as k-diffusion's samplers):

    flow(x, estimator, sigmas, *, step_scale=0.5, step_sizes=None, steps_per_sigma=1, method="euler",
         noise_scale=0.0, seed=None, callback=None, jit_compile=True, ...) -> x

Per level k the step size is η_k = step_scale · σ_k² (shared/SD_FLOW.md §2): by Tweedie's formula
σ² v_σ = D_p − D_q is a displacement in data units, so ``step_scale`` is dimensionless. All steps run
inside one compiled ``tf.while_loop`` (XLA when ``jit_compile``); σ's and η's are tensors, so new values
never retrace, and compiled programs are cached per estimator and per input shape.

Numerical blow-ups (NaN/Inf, or a state that leaves ``divergence_bound``) stop the flow with a
:class:`FlowDivergenceError` naming the step and σ, or, with ``on_divergence="backoff"``, halve the step
and retry; non-finite samples are never returned.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import tensorflow as tf

from gan2flow import _checks
from gan2flow import sigmas as _sigmas

__all__ = ["flow", "trajectory", "FlowDivergenceError", "METHODS", "trace_count"]

METHODS = ("euler", "heun")
_ON_DIVERGENCE = ("raise", "backoff")
_TRACES = {"count": 0}
_RUNNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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
# Counter-based Gaussian noise: element (sample index, coordinate, step) always gets the same value,
# however the batch is split into chunks or shards. Integer mixing in int64 (valid under XLA).

_MASK32 = 0xFFFFFFFF


def _mix32(value):
    """lowbias32 integer hash on the low 32 bits of an int64 tensor."""
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 16))
    value = tf.bitwise.bitwise_and(value * 0x7FEB352D, _MASK32)
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 15))
    value = tf.bitwise.bitwise_and(value * 0x846CA68B, _MASK32)
    return tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 16))


def _counter_hash(shape, seed, step, offset):
    """One 32-bit hash (in an int64 tensor [rows, width]) per element of rows ``offset ..``."""
    rows = shape[0]
    width = tf.reduce_prod(shape[1:])
    row_index = tf.cast(offset, tf.int64) + tf.range(tf.cast(rows, tf.int64), dtype=tf.int64)
    element = row_index[:, None] * tf.cast(width, tf.int64) + tf.range(tf.cast(width, tf.int64), dtype=tf.int64)[None, :]
    key = _mix32(tf.bitwise.bitwise_and(
        tf.cast(seed, tf.int64) * 0x9E3779B1 + tf.cast(step, tf.int64) * 0x85EBCA77 + 0x165667B1, _MASK32
    ))
    low = tf.bitwise.bitwise_and(element, _MASK32)
    high = tf.bitwise.right_shift(element, 32)
    return _mix32(tf.bitwise.bitwise_xor(_mix32(tf.bitwise.bitwise_xor(low, key)), high))


def counter_normal(shape, seed, step, offset):
    """Standard normal noise for rows ``offset .. offset + shape[0]`` of a flow at ``step``.

    Deterministic in (seed, step, global row index, coordinate): chunked and sharded flows draw the
    same noise as a single pass. Box–Muller on two 32-bit hashes.
    """
    first = _counter_hash(shape, seed, step, offset)
    second = _mix32(tf.bitwise.bitwise_xor(first, 0x68E31DA4))
    scale = 1.0 / 4294967296.0
    uniform_1 = (tf.cast(first, tf.float32) + 0.5) * scale
    uniform_2 = (tf.cast(second, tf.float32) + 0.5) * scale
    normal = tf.sqrt(-2.0 * tf.math.log(uniform_1)) * tf.cos(2.0 * math.pi * uniform_2)
    return tf.reshape(normal, shape)


def counter_uniform(shape, seed, step, offset):
    """Uniform noise on (0, 1) with the keying of :func:`counter_normal` (seed, step, global row, coordinate).

    24-bit resolution, so every value is exact in float32 and strictly inside (0, 1). Used where draws
    must not depend on how a batch is split (``SDGAN(replica_invariant_noise=True)``).
    """
    first = _counter_hash(shape, seed, step, offset)
    uniform = (tf.cast(tf.bitwise.right_shift(first, 8), tf.float32) + 0.5) * (1.0 / 16777216.0)
    return tf.reshape(uniform, shape)


# ---------------------------------------------------------------------------------------------------


def _build_runner(estimator, method, record, noisy, jit_compile):
    def step_once(x, sigma, eta):
        velocity = estimator(x, sigma)
        if method == "euler":
            return x + eta * velocity, velocity
        predicted = x + eta * velocity
        corrected = estimator(predicted, sigma)
        mean_velocity = 0.5 * (velocity + corrected)
        return x + eta * mean_velocity, mean_velocity

    def run(x, sigmas, etas, n_levels, steps_per_sigma, noise_scale, seed, offset, step_offset, bound,
            max_backoffs):
        # sigmas/etas are padded to a bucket length (see _pad_schedule); n_levels is the real length.
        _TRACES["count"] += 1
        n_steps = n_levels * steps_per_sigma
        shape = tf.shape(x)
        if record:
            history = tf.zeros(tf.concat([[tf.shape(sigmas)[0] + 1], shape], axis=0), x.dtype)
            history = tf.tensor_scatter_nd_update(history, [[0]], x[None])
        else:
            history = tf.zeros([0], x.dtype)

        def cond(i, x, scale, bad_step, backoffs, history):
            return tf.logical_and(i < n_steps, bad_step < 0)

        def body(i, x, scale, bad_step, backoffs, history):
            level = i // steps_per_sigma
            sigma = sigmas[level]
            eta = etas[level] * scale
            proposal, _ = step_once(x, sigma, eta)
            if noisy:
                noise = counter_normal(shape, seed, step_offset + i, offset)
                proposal = proposal + tf.sqrt(2.0 * eta) * noise_scale * noise
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
            i = i + tf.cast(accepted, tf.int32)
            return i, x, scale, bad_step, backoffs, history

        i, x, scale, bad_step, backoffs, history = tf.while_loop(
            cond,
            body,
            (tf.constant(0), x, tf.constant(1.0), tf.constant(-1), tf.constant(0), history),
            parallel_iterations=1,
        )
        return x, bad_step, backoffs, scale, history

    return tf.function(run, jit_compile=bool(jit_compile), reduce_retracing=False)


def _pad_schedule(values, length, fill):
    """Pad a per-level schedule to ``length`` so schedules of similar length share one program."""
    return tf.concat([values, tf.fill([length - int(values.shape[0])], tf.constant(fill, tf.float32))], axis=0)


def _bucket(n_levels):
    """Schedule lengths are padded to a power of two (at least 8): few programs, little waste."""
    return max(8, 1 << (int(n_levels) - 1).bit_length())


def _runner(estimator, method, record, noisy, jit_compile):
    key = (method, record, noisy, bool(jit_compile))
    try:
        cache = _RUNNERS.setdefault(estimator, {})
    except TypeError:  # not weak-referenceable: compile without caching
        return _build_runner(estimator, method, record, noisy, jit_compile)
    if key not in cache:
        cache[key] = _build_runner(estimator, method, record, noisy, jit_compile)
    return cache[key]


_PROBE_ROWS = 16
_PROBED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


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


def _resolve_seed(seed, noise_scale):
    """The integer noise seed of a flow: ``seed`` checked, or a fresh random one when None and noisy."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1)) if noise_scale > 0 else 0
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None, got {seed!r}.")
    return seed


def _prepare(x, estimator, sigmas, step_scale, step_sizes, steps_per_sigma, method, noise_scale, seed,
             on_divergence, max_backoffs, divergence_bound, batch_size):
    if not callable(estimator):
        raise ValueError(f"`estimator` must be a callable (x, sigma) -> v, got {type(estimator).__name__}.")
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    sigmas = _sigmas.validate(sigmas, "sigmas")
    method = _checks.one_of(method, "method", METHODS)
    on_divergence = _checks.one_of(on_divergence, "on_divergence", _ON_DIVERGENCE)
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
    seed = _resolve_seed(seed, noise_scale)
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    if divergence_bound is None:
        scale = float(tf.reduce_max(tf.abs(x))) if int(tf.size(x)) else 0.0
        sigma_max = float(sigmas[0]) if sigmas.shape[0] else 0.0
        divergence_bound = 1e3 * (1.0 + scale + 10.0 * sigma_max)
    elif isinstance(divergence_bound, (int, float, np.floating)) and divergence_bound == float("inf"):
        divergence_bound = float("inf")  # no bound: only non-finite values count as divergence
    else:
        divergence_bound = _checks.positive_float(divergence_bound, "divergence_bound")
    if sigmas.shape[0] and x.shape[0]:
        _probe(estimator, x, float(sigmas[0]))
    return (x, sigmas, etas, steps_per_sigma, method, noise_scale, int(seed), on_divergence, max_backoffs,
            divergence_bound, batch_size)


def _raise_divergence(bad_step, steps_per_sigma, sigmas, etas, scale, on_divergence, max_backoffs, step_offset=0):
    """Raise FlowDivergenceError for step ``bad_step`` of ``sigmas``; the step and level reported count
    from the start of the whole flow when this piece began at step ``step_offset`` (a multiple of
    steps_per_sigma)."""
    local_level = bad_step // steps_per_sigma
    sigma = float(sigmas[local_level])
    step_size = float(etas[local_level]) * scale
    bad_step += step_offset
    level = local_level + step_offset // steps_per_sigma
    hint = (
        "lower step_scale, use method='heun', or pass on_divergence='backoff'"
        if on_divergence == "raise"
        else f"still diverging after {max_backoffs} step halvings; lower step_scale or check the estimator"
    )
    raise FlowDivergenceError(
        f"flow diverged at step {bad_step} (level {level}, sigma={sigma:.6g}, step size={step_size:.6g}): "
        f"non-finite or exploding values; {hint}.",
        step=bad_step, level=level, sigma=sigma, step_size=step_size,
    )


def _integrate(x, estimator, sigmas, etas, steps_per_sigma, method, noise_scale, seed, on_divergence,
               max_backoffs, divergence_bound, batch_size, jit_compile, record, callback, offset=0, step_offset=0):
    """Run the compiled loop over chunks of x; returns (x, history or None).

    ``offset`` and ``step_offset`` are added to the global row and step indices that key the noise, so a
    flow run in pieces (rows or levels) draws exactly the noise of one uninterrupted run."""
    if callback is not None and not callable(callback):
        raise ValueError(f"`callback` must be callable (a dict of step values) -> None, got {type(callback).__name__}.")
    n = int(x.shape[0])
    if sigmas.shape[0] == 0 or n == 0:
        history = x[None] if record else None
        return tf.identity(x), history
    allowed = max_backoffs if on_divergence == "backoff" else 0
    noisy = noise_scale > 0
    runner = _runner(estimator, method, record and callback is None, noisy, jit_compile)
    constants = dict(
        noise_scale=tf.constant(noise_scale, tf.float32),
        seed=tf.constant(seed, tf.int64),
        bound=tf.constant(divergence_bound, tf.float32),
        max_backoffs=tf.constant(allowed, tf.int32),
    )
    n_levels = int(sigmas.shape[0])
    bucket = _bucket(n_levels)
    padded_sigmas = _pad_schedule(sigmas, bucket, float(sigmas[-1]))
    padded_etas = _pad_schedule(etas, bucket, 0.0)
    chunk = n if batch_size is None else min(batch_size, n)
    outputs, histories = [], []
    for start in range(0, n, chunk):
        part = x[start:start + chunk]
        row_offset = tf.constant(offset + start, tf.int64)
        if callback is None:
            result, bad_step, _, scale, history = runner(
                part, padded_sigmas, padded_etas, tf.constant(n_levels, tf.int32),
                tf.constant(steps_per_sigma, tf.int32), offset=row_offset,
                step_offset=tf.constant(step_offset, tf.int32), **constants,
            )
            if int(bad_step) >= 0:
                _raise_divergence(int(bad_step), steps_per_sigma, sigmas, etas, float(scale), on_divergence,
                                  max_backoffs, step_offset)
            outputs.append(result)
            if record:
                histories.append(history[:n_levels + 1])
            continue
        # With a callback: one compiled step at a time, so Python sees every step.
        states = [part] if record else None
        step = 0
        scale = 1.0
        for level in range(int(sigmas.shape[0])):
            for _ in range(steps_per_sigma):
                part, bad_step, _, step_scale_used, _ = runner(
                    part, _pad_schedule(sigmas[level:level + 1], 8, float(sigmas[level])),
                    _pad_schedule(etas[level:level + 1] * scale, 8, 0.0),
                    tf.constant(1, tf.int32), tf.constant(1, tf.int32), offset=row_offset,
                    step_offset=tf.constant(step_offset + step, tf.int32), **constants,
                )
                scale *= float(step_scale_used)
                if int(bad_step) >= 0:
                    _raise_divergence(step, steps_per_sigma, sigmas, etas, scale, on_divergence, max_backoffs,
                                      step_offset)
                callback({
                    "step": step_offset + step, "level": level + step_offset // steps_per_sigma,
                    "sigma": float(sigmas[level]), "step_size": float(etas[level]) * scale, "x": part,
                    "chunk_start": offset + start,
                })
                step += 1
            if record:
                states.append(part)
        outputs.append(part)
        if record:
            histories.append(tf.stack(states))
    result = outputs[0] if len(outputs) == 1 else tf.concat(outputs, axis=0)
    history = None
    if record:
        history = histories[0] if len(histories) == 1 else tf.concat(histories, axis=1)
    return result, history


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
    prepared = _prepare(x, estimator, sigmas, step_scale, step_sizes, steps_per_sigma, method, noise_scale,
                        seed, on_divergence, max_backoffs, divergence_bound, batch_size)
    result, _ = _integrate(prepared[0], estimator, *prepared[1:], jit_compile=jit_compile, record=False,
                           callback=callback)
    return result


def trajectory(x, estimator, sigmas, *, step_scale=0.5, step_sizes=None, steps_per_sigma=1, method="euler",
               noise_scale=0.0, seed=None, callback=None, jit_compile=True, on_divergence="raise",
               max_backoffs=8, divergence_bound=None, batch_size=None):
    """Like :func:`flow` (same arguments), but return the states at every level boundary.

    Returns:
        A float32 tensor [len(sigmas) + 1, batch, ...]: the start, then the samples after each level
        (its last entry equals ``flow(...)`` with the same arguments). Memory grows with the number of
        levels; use ``callback`` for finer or lighter tracing.
    """
    prepared = _prepare(x, estimator, sigmas, step_scale, step_sizes, steps_per_sigma, method, noise_scale,
                        seed, on_divergence, max_backoffs, divergence_bound, batch_size)
    _, history = _integrate(prepared[0], estimator, *prepared[1:], jit_compile=jit_compile, record=True,
                            callback=callback)
    return history
