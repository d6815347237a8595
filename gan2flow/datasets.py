"""Data for training and evaluation: scikit-learn's 8×8 digits, and seeded shuffled batches of an array.

- :func:`load_digits`: real images that install with a package (``sklearn.datasets.load_digits``,
  1 797 images, 17 grey levels 0–16), scaled to [−1, 1] with a stratified held-out split. The digits
  pipeline (:mod:`gan2flow.experiments.digits`) and the digit classifier of :mod:`gan2flow.image_metrics`
  both read them from here.
- :func:`shuffled_batches`: the endless, reshuffled ``tf.data`` stream that ``SDGAN.fit`` runs on.

Example::

    from gan2flow import datasets
    data = datasets.load_digits()          # 1 347 training and 450 held-out images in [−1, 1]
    batches = datasets.shuffled_batches(data["train"], batch_size=64, seed=0)
"""
from __future__ import annotations

import numpy as np

from gan2flow import _checks

__all__ = ["load_digits", "shuffled_batches"]


def load_digits(test_fraction=0.25, seed=0):
    """scikit-learn's digits as [n, 8, 8, 1] float32 in [−1, 1] (pixel / 8 − 1), split per class.

    Args:
        test_fraction: share of each digit class held out (0 < f < 1).
        seed: seed of the split (``numpy.random.default_rng``).

    Returns:
        dict with ``train``, ``test`` (images) and ``train_labels``, ``test_labels`` (int64 [n]).
        With the defaults: 1 347 training and 450 held-out images.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1) or a negative ``seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    bunch = sklearn_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(images), bool)
    for digit in np.unique(labels):
        index = np.flatnonzero(labels == digit)
        held_out[rng.choice(index, int(round(test_fraction * len(index))), replace=False)] = True
    return {"train": images[~held_out], "train_labels": labels[~held_out],
            "test": images[held_out], "test_labels": labels[held_out]}


def shuffled_batches(data, batch_size, seed):
    """An endless tf.data stream of full batches of ``data``, reshuffled every pass (seeded), prefetched.

    Args:
        data: an array [n, ...], or a tuple of arrays with n rows each, e.g. ``(samples, labels)`` (anything
            ``tf.data.Dataset.from_tensor_slices`` takes).
        batch_size: rows per batch; a last partial batch of each pass is dropped.
        seed: the shuffle's seed (the order of every pass follows from it).

    Returns:
        A ``tf.data.Dataset`` of [batch_size, ...] batches that never ends (give ``fit`` its
        ``steps_per_epoch``).
    """
    import tensorflow as tf

    rows = len(data[0]) if isinstance(data, tuple) else len(data)  # (samples, labels) pairs: rows of the samples
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(rows, seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size, drop_remainder=True).prefetch(2)
