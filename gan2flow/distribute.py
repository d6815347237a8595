"""Data-parallel flows on ``tf.distribute``: shard samples across replicas, stream chunks per replica.

    strategy = tf.distribute.MirroredStrategy()                      # all local GPUs
    x = gan2flow.distribute.flow(x0, estimator, sigmas, strategy=strategy, batch_size=4096, seed=0)
    x = gan_flow.refine(x0, strategy=strategy, batch_size=4096, seed=0)      # GANFlow, same engine

This is one more way of *executing* a flow plan (``gan2flow.flows``): :func:`run` takes a
:class:`~gan2flow.flows.FlowPlan` (and, optionally, the phases each chunk runs, as ``flows.run`` does) and
runs the same compiled loop on every replica. The rows of ``x`` are cut into chunks of ``batch_size`` rows
(default ``ceil(n / replicas)``: one chunk per replica) and dealt round-robin: in round ``j`` replica ``r``
flows chunk ``j·R + r``, all replicas at
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
import tensorflow as tf

from gan2flow import _checks, flows

__all__ = ["run", "flow", "refine", "chunk_bounds"]

_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

        def run_round(inputs):
            return strategy.run(replica_fn, args=(inputs,))

        entry = (weakref.ref(strategy), tf.function(run_round))
        cache[key] = entry
    return entry[1]


def _run_rounds(strategy, program, chunk_inputs, empty_inputs, progress=None):
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
            result = program(inputs)
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


def _structure(plans, jit_compile):
    """What must be the same for every chunk of a sharded run: one compiled loop per phase."""
    return tuple((plan.method, plan.noise_scale > 0, plan.drift_correction, str(plan.kernel_block_size),
                  plan.source_weight, bool(jit_compile)) for plan in plans)


def run(plan, x, *, strategy, phases=None, batch_size=None, jit_compile=True, verbose=False):
    """Execute a :class:`gan2flow.flows.FlowPlan` with the rows of ``x`` sharded over ``strategy``'s replicas.

    Chunks of ``batch_size`` rows are dealt round-robin (module docstring); on its replica each chunk runs
    its phases (``phases(chunk_plan, chunk)``, default ``[chunk_plan]``, as in :func:`gan2flow.flows.run`)
    one after the other with the compiled loop of ``gan2flow.flows``, the drift correction's starting
    samples being the chunk before its first phase. Noise keeps its global keys, so the result equals
    ``gan2flow.flows.run(plan, x, phases=phases, batch_size=batch_size)`` on one device.

    Args:
        plan: the plan for the whole of x.
        x: samples [n, ...] in host memory (the same on every worker).
        strategy: a ``tf.distribute.Strategy``.
        phases: optional callable (chunk_plan, chunk) -> list of plans; every chunk must get the same number
            of phases with the same structure (estimator, method, noise on/off, drift correction).
        batch_size: rows per chunk; None: ``ceil(n / replicas)``.
        jit_compile: compile the loop with XLA.
        verbose: a progress bar over samples (per round).

    Returns:
        A :class:`gan2flow.flows.FlowResult` (x on the host; the clipped and projected counts).

    Raises:
        ValueError: bad arguments.
        FlowDivergenceError: a chunk diverged (the first in row order).
    """
    strategy = _check_strategy(strategy)
    with tf.device("/cpu:0"):
        x = _checks.as_float_tensor(x, "x", min_rank=2)
    n = int(x.shape[0])
    if n == 0 or plan.n_levels == 0:
        return flows.FlowResult(tf.identity(x))
    bounds = chunk_bounds(n, strategy.num_replicas_in_sync, batch_size)
    chunks = []
    for start, stop in bounds:
        part = x[start:stop]
        chunk_plan = plan.rows(start)
        chunks.append((part, [chunk_plan] if phases is None else list(phases(chunk_plan, part))))
    first = chunks[0][1]
    structure = _structure(first, jit_compile)
    if any(_structure(plans, jit_compile) != structure for _, plans in chunks):
        raise ValueError("`phases` must give every chunk the same phases (estimators, methods, noise, drift).")
    bucket = max(flows.schedule_bucket(p.n_levels) for _, plans in chunks for p in plans)
    with tf.device("/cpu:0"):
        chunk_inputs = [(part, *[flows.padded_schedule(p, bucket) for p in plans]) for part, plans in chunks]
        empty = (x[:0], *[flows.padded_schedule(p.levels(0, 0), bucket) for p in first])

    def build():
        loops = [flows.compiled_loop(p, jit_compile=jit_compile) for p in first]

        def replica_fn(inputs):
            part, schedules = inputs[0], inputs[1:]
            reference = part
            bad_steps, scales, counts = [], [], []
            for loop, schedule in zip(loops, schedules, strict=True):
                part, bad_step, scale, count, _ = loop(part, reference, **schedule)
                bad_steps.append(bad_step)
                scales.append(scale)
                counts.append(count)
            return part, tf.stack(bad_steps), tf.stack(scales), tf.add_n(counts)

        return replica_fn

    program = _program(strategy, plan.estimator, ("run",) + structure, build)
    bar = None
    if verbose:
        print("flowing on " + f"{strategy.num_replicas_in_sync} replica(s)")
        bar = keras.utils.Progbar(n, unit_name="sample")
    progress = None if bar is None else (lambda done: bar.update(bounds[done - 1][1]))
    outputs = _run_rounds(strategy, program, chunk_inputs, empty, progress=progress)
    for (_, bad_steps, scales, _), (_, plans) in zip(outputs, chunks, strict=True):
        for index, phase in enumerate(plans):
            if int(bad_steps[index]) >= 0:
                flows.raise_divergence(phase, int(bad_steps[index]), float(scales[index]))
    clipped, projected = (int(value) for value in tf.add_n([counts for _, _, _, counts in outputs]))
    with tf.device("/cpu:0"):
        return flows.FlowResult(tf.concat([result for result, _, _, _ in outputs], axis=0), None, clipped, projected)


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
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        plan = flows.make_plan(x, estimator, sigmas, step_scale=step_scale, step_sizes=step_sizes,
                               steps_per_sigma=steps_per_sigma, method=method, noise_scale=noise_scale, seed=seed,
                               on_divergence=on_divergence, max_backoffs=max_backoffs,
                               divergence_bound=divergence_bound)
    if batch_size is not None:
        batch_size = _checks.positive_int(batch_size, "batch_size")
    return run(plan, x, strategy=strategy, batch_size=batch_size, jit_compile=jit_compile).x


def refine(gan_flow, x, *, strategy, **options):
    """``gan_flow.refine(x, strategy=strategy, **options)``: :meth:`gan2flow.GANFlow.refine` with the chunks of
    ``x`` spread over the replicas of ``strategy`` (kept for compatibility; the method is the one place).

    Every chunk of ``batch_size`` rows (default ``ceil(n / replicas)``) is refined exactly as on one device
    (drift-corrected levels with its own starting samples as q₀, then the plain levels), so the result
    equals ``gan_flow.refine(x, batch_size=batch_size, ...)``, noise included.
    """
    return gan_flow.refine(x, strategy=strategy, **options)
