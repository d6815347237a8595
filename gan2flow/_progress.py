"""Progress bars for long flows: run the schedule in segments of levels under a Keras Progbar."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gan2flow import flows

__all__: list[str] = []


def flow_with_progress(x, estimator, sigmas, *, label="flow", segments=10, verbose=True, record=False,
                       row_offset=0, step_offset=0, step_scale=0.5, step_sizes=None, steps_per_sigma=1,
                       method="euler", noise_scale=0.0, seed=None, callback=None, jit_compile=True,
                       on_divergence="raise", max_backoffs=8, divergence_bound=None, batch_size=None):
    """``gan2flow.flow`` (or ``trajectory`` when ``record``) over ``sigmas`` in segments, with a progress bar.

    The result does not depend on ``verbose`` or ``segments``: every segment keeps the global step
    index (plus ``step_offset``) and row index (plus ``row_offset``) that key the Langevin noise, so the
    segments draw exactly the noise of one uninterrupted :func:`gan2flow.flow` with the same seed.
    (With ``on_divergence="backoff"`` a halved step size lasts until the end of its segment.)

    Returns:
        (x, history): history is the [levels + 1, ...] trajectory when ``record``, else None.
    """
    prepared = flows._prepare(x, estimator, sigmas, step_scale, step_sizes, steps_per_sigma, method, noise_scale,
                              seed, on_divergence, max_backoffs, divergence_bound, batch_size)
    (x, sigmas, etas, steps_per_sigma, method, noise_scale, seed, on_divergence, max_backoffs, divergence_bound,
     batch_size) = prepared
    n_levels = int(sigmas.shape[0])
    segments = max(1, min(segments, n_levels)) if verbose else 1
    bounds = np.unique(np.linspace(0, n_levels, segments + 1).astype(int))
    bar = None
    if verbose and n_levels:
        print(label)
        bar = keras.utils.Progbar(n_levels, unit_name="level", stateful_metrics=["sigma"])
    pieces = [x[None]] if record else None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        x, history = flows._integrate(
            x, estimator, sigmas[start:stop], etas[start:stop], steps_per_sigma, method, noise_scale, seed,
            on_divergence, max_backoffs, divergence_bound, batch_size, jit_compile, record, callback,
            offset=row_offset, step_offset=step_offset + int(start) * steps_per_sigma)
        if record:
            pieces.append(history[1:])
        if bar is not None:
            bar.update(int(stop), values=[("sigma", float(sigmas[stop - 1]))])
    x = tf.convert_to_tensor(x, tf.float32)
    return x, (tf.concat(pieces, axis=0) if record else None)
