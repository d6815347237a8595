"""Progress bars for long flows: run the schedule in segments of levels under a Keras Progbar."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gan2flow import flows

__all__: list[str] = []


def flow_with_progress(x, estimator, sigmas, *, label="flow", segments=10, verbose=True, record=False, **kwargs):
    """``gan2flow.flow`` (or ``trajectory`` when ``record``) over ``sigmas`` in segments, with a progress bar.

    Without noise the result equals one ``flow`` call (the state between levels is just x). With
    noise each segment uses ``seed + segment`` so segments do not repeat each other's draws.

    Returns:
        (x, history): history is the [levels + 1, ...] trajectory when ``record``, else None.
    """
    sigmas = np.asarray(sigmas, np.float32)
    step_sizes = kwargs.pop("step_sizes", None)
    seed = kwargs.pop("seed", None)
    n_levels = len(sigmas)
    segments = max(1, min(segments, n_levels)) if verbose else 1
    bounds = np.unique(np.linspace(0, n_levels, segments + 1).astype(int))
    run = flows.trajectory if record else flows.flow
    bar = None
    if verbose and n_levels:
        print(label)
        bar = keras.utils.Progbar(n_levels, unit_name="level", stateful_metrics=["sigma"])
    pieces = [tf.convert_to_tensor(x, tf.float32)[None]] if record else None
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        part_sizes = None if step_sizes is None else np.asarray(step_sizes)[start:stop]
        part_seed = None if seed is None else seed + index
        out = run(x, estimator, sigmas[start:stop], step_sizes=part_sizes, seed=part_seed, **kwargs)
        if record:
            pieces.append(out[1:])
            x = out[-1]
        else:
            x = out
        if bar is not None:
            bar.update(int(stop), values=[("sigma", float(sigmas[stop - 1]))])
    x = tf.convert_to_tensor(x, tf.float32)
    return x, (tf.concat(pieces, axis=0) if record else None)
