"""Data-parallel flows on ``tf.distribute``: shard samples across replicas, stream chunks per replica.

    strategy = tf.distribute.MirroredStrategy()                      # all local GPUs
    x = gan2flow.distribute.flow(x0, estimator, sigmas, strategy=strategy, batch_size=4096, seed=0)
    x = gan_flow.refine(x0, strategy=strategy, batch_size=4096, seed=0)      # GANFlow, same engine

The rows of ``x`` are cut into chunks of ``batch_size`` rows (default ``ceil(n / replicas)``: one chunk
per replica) and dealt round-robin: in round ``j`` replica ``r`` flows chunk ``j·R + r``, all replicas at
once in one ``strategy.run``. Each chunk runs the same compiled flow loop as :func:`gan2flow.flow`
(``gan2flow.flows``), with its noise keyed by the *global* row index, so the result equals the
single-device ``gan2flow.flow(x, ..., batch_size=batch_size)`` for every estimator, and the unchunked
``gan2flow.flow(x, ...)`` for per-sample estimators (all but ``KernelScoreDifference(source=None)`` and
drift-corrected ones, which couple the samples of a chunk). Only one chunk per replica is on a device at
a time; ``x`` and the result stay in host memory.

Training needs no code here: ``SDGAN`` and :func:`gan2flow.convert` are ordinary Keras ``fit`` loops
under ``strategy.scope()`` / ``convert(..., strategy=...)``. See docs/distributed.md for several GPUs,
several workers, TPUs and the limits.
"""
from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, estimators, flows
from gan2flow import sigmas as _sigmas

__all__ = ["flow", "refine", "chunk_bounds"]

_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def chunk_bounds(n, replicas, batch_size=None):
    """The chunks a sharded flow deals to replicas: ``[(start, stop), ...]`` in row order.

    Chunk ``k`` goes to replica ``k mod replicas`` in round ``k // replicas``.

    Args:
        n: number of samples (≥ 0).
        replicas: number of replicas in sync (≥ 1).
        batch_size: rows per chunk; None: ``ceil(n / replicas)`` (one chunk per replica).

    Returns:
        A list of ``(start, stop)`` pairs covering ``range(n)``.
    """
    n = _checks.positive_int(n, "n", allow_zero=True)
    replicas = _checks.positive_int(replicas, "replicas")
    chunk = max(1, -(-n // replicas)) if batch_size is None else _checks.positive_int(batch_size, "batch_size")
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def _check_strategy(strategy):
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(f"`strategy` must be a tf.distribute.Strategy, got {type(strategy).__name__}.")
    return strategy


def _program(strategy, estimator, key, build):
    """A cached ``tf.function`` running ``build()``'s replica function under ``strategy.run``."""
    try:
        cache = _PROGRAMS.setdefault(estimator, {})
    except TypeError:  # not weak-referenceable: no caching
        cache = {}
    entry = cache.get(key)
    if entry is None or entry[0]() is not strategy:
        replica_fn = build()

        def run_round(inputs, shared):
            return strategy.run(replica_fn, args=(inputs, shared))

        entry = (weakref.ref(strategy), tf.function(run_round))
        cache[key] = entry
    return entry[1]


def _run_rounds(strategy, program, chunk_inputs, empty_inputs, shared, progress=None):
    """Run ``program`` over all chunks, one chunk per replica per round.

    Returns, per chunk and in chunk order, the replica function's outputs as host tensors.
    """
    replicas = strategy.num_replicas_in_sync
    outputs = []
    for first in range(0, len(chunk_inputs), replicas):
        round_inputs = chunk_inputs[first:first + replicas]
        busy = len(round_inputs)
        round_inputs = round_inputs + [empty_inputs] * (replicas - busy)
        inputs = strategy.experimental_distribute_values_from_function(
            lambda context, values=round_inputs: values[context.replica_id_in_sync_group])
        try:
            result = program(inputs, shared)
        except tf.errors.InvalidArgumentError as error:
            if "Trying to access resource" not in str(error):
                raise
            raise ValueError(
                "the estimator's variables live on one device, which the XLA-compiled flow on another replica "
                "cannot read: create the estimator (its models, samples) inside `strategy.scope()` -- for a "
                "GANFlow, load or convert it there -- or pass jit_compile=False.") from None
        per_replica = [strategy.experimental_local_results(value) for value in result]
        if len(per_replica[0]) == replicas:  # every replica is local (one worker)
            gathered = [[part[index] for part in per_replica] for index in range(busy)]
        else:  # several workers: gather every replica's rows (uneven sizes along axis 0 are fine)
            stacked = [strategy.gather(value, axis=0) for value in result]
            gathered = _split_gathered(stacked, round_inputs[:busy], replicas)
        with tf.device("/cpu:0"):
            outputs.extend([tuple(tf.identity(value) for value in chunk) for chunk in gathered])
        if progress is not None:
            progress(first + busy)
    return outputs


def _split_gathered(stacked, round_inputs, replicas):
    """Cut gathered outputs (rows of all replicas, replica order) back into per-chunk outputs."""
    rows = [int(inputs[0].shape[0]) for inputs in round_inputs]
    rows += [0] * (replicas - len(round_inputs))
    chunks = []
    for index in range(len(round_inputs)):
        start = sum(rows[:index])
        chunk = [stacked[0][start:start + rows[index]]]
        # status outputs are [k] per replica
        for value in stacked[1:]:
            width = int(value.shape[0]) // replicas
            chunk.append(value[index * width:(index + 1) * width])
        chunks.append(tuple(chunk))
    return chunks


def _padded_schedule(values, step_scale, bucket):
    """A chunk's (σ's, η's = step_scale·σ², level count), padded to the shared bucket length."""
    sigmas = tf.constant(values, tf.float32)
    fill = float(values[-1]) if len(values) else 1.0
    return (flows._pad_schedule(sigmas, bucket, fill), flows._pad_schedule(step_scale * tf.square(sigmas), bucket, 0.0),
            tf.constant(len(values), tf.int32))


def flow(x, estimator, sigmas, *, strategy, batch_size=None, step_scale=0.5, step_sizes=None, steps_per_sigma=1,
         method="euler", noise_scale=0.0, seed=None, callback=None, jit_compile=True, on_divergence="raise",
         max_backoffs=8, divergence_bound=None):
    """:func:`gan2flow.flow` with the samples sharded across the replicas of ``strategy``.

    Chunks of ``batch_size`` rows are dealt round-robin to the replicas (see the module docstring) and
    flowed in parallel, one chunk per replica per round, by the compiled loop of :func:`gan2flow.flow`.
    Noise is keyed by (seed, step, global row, coordinate), so the result equals
    ``gan2flow.flow(x, estimator, sigmas, batch_size=batch_size, ...)`` on one device (float32, same
    kernels), and the unchunked flow for per-sample estimators.

    Args:
        x: samples [n, ...], held in host memory; with several workers every worker passes the same x.
        estimator: callable (x, sigma) -> v; it is traced once per replica device. Its state (variables)
            is read from where it was created: create it inside ``strategy.scope()`` to mirror it.
        sigmas: 1-D non-increasing noise levels.
        strategy: a ``tf.distribute.Strategy`` (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``,
            ``TPUStrategy``, ``OneDeviceStrategy``).
        batch_size: rows per chunk (bounds device memory); None: ``ceil(n / replicas)``. On a TPU every
            replica needs the same shape: use n a multiple of ``batch_size × replicas``.
        step_scale, step_sizes, steps_per_sigma, method, noise_scale, seed, jit_compile, on_divergence,
        max_backoffs, divergence_bound: as :func:`gan2flow.flow`.
        callback: must be None: a per-step Python callback would stop every replica at every step.

    Returns:
        float32 tensor shaped like x, on the host, on every worker.

    Raises:
        ValueError: bad arguments (named in the message).
        FlowDivergenceError: a chunk diverged (the first in row order, as :func:`gan2flow.flow`).

    Example:
        >>> strategy = tf.distribute.MirroredStrategy()
        >>> x = gan2flow.distribute.flow(noise, estimator, gan2flow.sigmas.geometric(3.0, 0.05, 40),
        ...                              strategy=strategy, batch_size=8192, noise_scale=0.3, seed=0)
    """
    strategy = _check_strategy(strategy)
    if callback is not None:
        raise ValueError("`callback` is not supported under a strategy (it would stop every replica at every "
                         "step); use gan2flow.flow on one device to trace a flow step by step.")
    with tf.device("/cpu:0"):
        (x, sigmas, etas, steps_per_sigma, method, noise_scale, seed, on_divergence, max_backoffs, bound,
         batch_size) = flows._prepare(x, estimator, sigmas, step_scale, step_sizes, steps_per_sigma, method,
                                      noise_scale, seed, on_divergence, max_backoffs, divergence_bound, batch_size)
    n = int(x.shape[0])
    n_levels = int(sigmas.shape[0])
    if n_levels == 0 or n == 0:
        return tf.identity(x)
    noisy = noise_scale > 0
    bucket = flows._bucket(n_levels)
    shared = (
        flows._pad_schedule(sigmas, bucket, float(sigmas[-1])), flows._pad_schedule(etas, bucket, 0.0),
        tf.constant(n_levels, tf.int32), tf.constant(steps_per_sigma, tf.int32),
        tf.constant(noise_scale, tf.float32), tf.constant(seed, tf.int64), tf.constant(bound, tf.float32),
        tf.constant(max_backoffs if on_divergence == "backoff" else 0, tf.int32),
    )

    def build():
        runner = flows._runner(estimator, method, False, noisy, jit_compile)

        def replica_fn(inputs, shared):
            part, offset = inputs
            padded_sigmas, padded_etas, levels, steps, scale_noise, key, limit, backoffs = shared
            result, bad_step, _, scale, _ = runner(
                part, padded_sigmas, padded_etas, levels, steps, noise_scale=scale_noise, seed=key,
                offset=offset, step_offset=tf.constant(0, tf.int32), bound=limit, max_backoffs=backoffs)
            return result, tf.reshape(bad_step, [1]), tf.reshape(scale, [1])

        return replica_fn

    program = _program(strategy, estimator, ("flow", method, noisy, bool(jit_compile)), build)
    bounds = chunk_bounds(n, strategy.num_replicas_in_sync, batch_size)
    chunk_inputs = [(x[start:stop], tf.constant(start, tf.int64)) for start, stop in bounds]
    outputs = _run_rounds(strategy, program, chunk_inputs, (x[:0], tf.constant(0, tf.int64)), shared)
    for result, bad_step, scale in outputs:
        if int(bad_step[0]) >= 0:
            flows._raise_divergence(int(bad_step[0]), steps_per_sigma, sigmas, etas, float(scale[0]),
                                    on_divergence, max_backoffs)
    with tf.device("/cpu:0"):
        return tf.concat([result for result, _, _ in outputs], axis=0)


class _DriftTerm:
    """∇log q₀,σ − ∇log q_t,σ from a chunk's starting samples, held as tensors (not variables).

    The arithmetic of ``KernelScoreDifference(initial, source=None, block_size=...)``: centre on the
    starting samples' mean, mean-shift denoisers of the starting samples and of the current particles.
    """

    def __init__(self, initial, block_size):
        flat = tf.reshape(initial, [tf.shape(initial)[0], -1])
        self._center = tf.reduce_mean(flat, axis=0)
        self._target = flat - self._center
        self._target_half_sq = 0.5 * tf.reduce_sum(tf.square(self._target), axis=1)
        self._block_size = block_size

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        sigma = tf.convert_to_tensor(sigma, tf.float32)
        flat = tf.reshape(x, [tf.shape(x)[0], -1]) - self._center
        target_mean = estimators.kernel_denoise(flat, self._target, sigma, block_size=self._block_size,
                                                samples_half_sq_norm=self._target_half_sq)
        source_mean = estimators.kernel_denoise(flat, flat, sigma, block_size=self._block_size)
        return tf.reshape((target_mean - source_mean) / tf.square(sigma), tf.shape(x))


def _default_bound(x, sigma_max):
    """The default divergence bound of :func:`gan2flow.flow`, 1000·(1 + max|x| + 10·σ_max), in-graph."""
    largest = tf.cond(tf.size(x) > 0, lambda: tf.reduce_max(tf.abs(x)), lambda: tf.constant(0.0))
    return 1e3 * (1.0 + largest + 10.0 * sigma_max)


def refine(gan_flow, x, *, strategy, sigmas=None, levels=40, steps_per_sigma=2, step_scale=0.5,
           drift_correction=True, drift_min_sigma=None, method="euler", noise_scale=0.0, seed=None, batch_size=None,
           kernel_block_size=1024, verbose=False, callback=None, on_divergence="raise"):
    """:meth:`gan2flow.GANFlow.refine` with the chunks of ``x`` spread over the replicas of ``strategy``.

    ``GANFlow.refine(..., strategy=strategy)`` calls this. Every chunk of ``batch_size`` rows is refined
    exactly as ``GANFlow.refine`` refines it on one device (drift-corrected levels σ ≥ the chunk's
    threshold with its own starting samples as q₀, then the plain levels), one chunk per replica per
    round, so the result equals ``gan_flow.refine(x, batch_size=batch_size, ...)``, noise included (with
    ``on_divergence="backoff"``: the one-device call with ``verbose=False``, whose halved step sizes, like
    these, last to the end of each phase rather than of a progress-bar segment).
    The drift correction couples the samples *within* a chunk; with ``batch_size=None`` the chunk is
    ``ceil(n / replicas)`` rows here, not all n as on one device.

    Args:
        gan_flow: a :class:`gan2flow.GANFlow`.
        x: samples [n, *sample_shape] (host memory; the same on every worker).
        strategy: a ``tf.distribute.Strategy``.
        sigmas, levels, steps_per_sigma, step_scale, drift_correction, drift_min_sigma, method,
        noise_scale, seed, batch_size, kernel_block_size, on_divergence: as ``GANFlow.refine``.
        verbose: a progress bar over samples (per round).
        callback: must be None (see :func:`flow`).

    Returns:
        float32 tensor shaped like x.

    Raises:
        ValueError: bad arguments.
        FlowDivergenceError: a chunk diverged.
    """
    strategy = _check_strategy(strategy)
    if callback is not None:
        raise ValueError("`callback` is not supported under a strategy; refine on one device to trace steps.")
    with tf.device("/cpu:0"):
        x = _checks.as_float_tensor(x, "x", min_rank=2)
    if tuple(x.shape[1:]) != tuple(gan_flow.sample_shape):
        raise ValueError(f"`x` must have shape [batch, {', '.join(map(str, gan_flow.sample_shape))}], "
                         f"got {tuple(x.shape)}.")
    sigmas = gan_flow.default_sigmas(levels) if sigmas is None else _sigmas.validate(sigmas)
    n = int(x.shape[0])
    replicas = strategy.num_replicas_in_sync
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    if not drift_correction:
        return flow(x, gan_flow.estimator, sigmas, strategy=strategy, batch_size=batch_size,
                    steps_per_sigma=steps_per_sigma, step_scale=step_scale, method=method, noise_scale=noise_scale,
                    seed=seed, on_divergence=on_divergence)
    if drift_min_sigma is not None:
        drift_min_sigma = _checks.positive_float(drift_min_sigma, "drift_min_sigma", allow_zero=True)
    step_scale = _checks.positive_float(step_scale, "step_scale")
    steps_per_sigma = _checks.positive_int(steps_per_sigma, "steps_per_sigma")
    method = _checks.one_of(method, "method", flows.METHODS)
    noise_scale = _checks.positive_float(noise_scale, "noise_scale", allow_zero=True)
    on_divergence = _checks.one_of(on_divergence, "on_divergence", flows._ON_DIVERGENCE)
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1)) if noise_scale > 0 else 0
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    values = sigmas.numpy()
    if n == 0 or values.size == 0:
        return tf.identity(x)

    from gan2flow.conversion import _spacing  # lazy: conversion imports this module lazily too

    bucket = flows._bucket(len(values))
    noisy = noise_scale > 0
    max_backoffs = 8
    bounds = chunk_bounds(n, replicas, batch_size)
    chunk_inputs, schedules = [], []
    for start, stop in bounds:
        part = x[start:stop]
        threshold = _spacing(part.numpy()) * 2.0 if drift_min_sigma is None else drift_min_sigma
        corrected, plain = values[values >= threshold], values[values < threshold]
        schedules.append((corrected, plain))
        # Noise keyed by global row (and, in the plain phase, steps after the corrected ones), as GANFlow.refine.
        chunk_inputs.append((part, tf.constant(start, tf.int64), *_padded_schedule(corrected, step_scale, bucket),
                             *_padded_schedule(plain, step_scale, bucket)))
    nothing = _padded_schedule(values[:0], step_scale, bucket)
    empty = (x[:0], tf.constant(0, tf.int64), *nothing, *nothing)
    shared = (tf.constant(steps_per_sigma, tf.int32), tf.constant(noise_scale, tf.float32),
              tf.constant(seed, tf.int64),
              tf.constant(max_backoffs if on_divergence == "backoff" else 0, tf.int32))
    block_size = estimators._block_size(kernel_block_size)

    def build():
        plain_runner = flows._runner(gan_flow.estimator, method, False, noisy, jit_compile=True)

        def replica_fn(inputs, shared):
            part, offset, c_sigmas, c_etas, n_corrected, p_sigmas, p_etas, n_plain = inputs
            steps, scale_noise, key, backoffs = shared
            corrected_estimator = estimators.ScoreDifferenceSum(gan_flow.estimator, _DriftTerm(part, block_size))
            corrected_runner = flows._build_runner(corrected_estimator, method, False, noisy, True)
            zero = tf.constant(0, tf.int32)
            moved, bad_corrected, _, scale_corrected, _ = corrected_runner(
                part, c_sigmas, c_etas, n_corrected, steps, noise_scale=scale_noise, seed=key,
                offset=offset, step_offset=zero, bound=_default_bound(part, c_sigmas[0]), max_backoffs=backoffs)
            result, bad_plain, _, scale_plain, _ = plain_runner(
                moved, p_sigmas, p_etas, n_plain, steps, noise_scale=scale_noise, seed=key,
                offset=offset, step_offset=n_corrected * steps, bound=_default_bound(moved, p_sigmas[0]), max_backoffs=backoffs)
            return result, tf.stack([bad_corrected, bad_plain]), tf.stack([scale_corrected, scale_plain])

        return replica_fn

    key = ("refine", method, noisy, str(block_size), id(gan_flow))
    program = _program(strategy, gan_flow.estimator, key, build)
    bar = None
    if verbose:
        print("refining in data space (distributed, drift-corrected)")
        bar = keras.utils.Progbar(n, unit_name="sample")
    progress = None if bar is None else (lambda done: bar.update(bounds[done - 1][1]))
    outputs = _run_rounds(strategy, program, chunk_inputs, empty, shared, progress=progress)
    for (result, bad_steps, scales), (corrected, plain) in zip(outputs, schedules):
        for stage, stage_values in ((0, corrected), (1, plain)):
            if int(bad_steps[stage]) >= 0:
                stage_sigmas = tf.constant(stage_values, tf.float32)
                flows._raise_divergence(int(bad_steps[stage]), steps_per_sigma, stage_sigmas,
                                        step_scale * tf.square(stage_sigmas), float(scales[stage]),
                                        on_divergence, max_backoffs, stage * len(corrected) * steps_per_sigma)
    with tf.device("/cpu:0"):
        return tf.concat([result for result, _, _ in outputs], axis=0)

