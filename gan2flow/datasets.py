"""Data for training and evaluation: real images that install with a package, and seeded shuffled batches.

- :func:`load_digits`: real images that install with a package (``sklearn.datasets.load_digits``,
  1 797 images, 17 grey levels 0–16), scaled to [−1, 1] with a stratified held-out split. The digits
  pipeline (:mod:`gan2flow.experiments.digits`) and the digit classifier of :mod:`gan2flow.image_metrics`
  both read them from here.
- :func:`load_image_patches`: 32×32 RGB patches (any size) cut at seeded random places from the two photos
  scikit-learn ships (``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg, 427×640), scaled
  to [−1, 1]. Training and held-out patches come from disjoint, interleaved tiles of each photo, so a
  held-out patch never overlaps a training patch.
- :func:`load_faces`: the 25×25 grey-scale images of ``skimage.data.lfw_subset()`` (scikit-image ships
  them inside its wheel: no download), scaled to [−1, 1]. The 200 images are 100 faces from Labeled
  Faces in the Wild followed by 100 non-face patches (``faces_only=True`` keeps the faces).
- :func:`shuffled_batches`: the endless, reshuffled ``tf.data`` stream that ``SDGAN.fit`` runs on.

Example::

    from gan2flow import datasets
    data = datasets.load_digits()          # 1 347 training and 450 held-out images in [−1, 1]
    batches = datasets.shuffled_batches(data["train"], batch_size=64, seed=0)
"""
from __future__ import annotations

import numpy as np

from gan2flow import _checks

__all__ = ["load_digits", "load_image_patches", "load_faces", "shuffled_batches"]


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


def load_image_patches(size=32, n_train=20000, n_test=2000, *, test_fraction=0.2, seed=0):
    """Square RGB patches cut from scikit-learn's two sample photos, float32 [n, size, size, 3] in [−1, 1].

    Each photo is cut into tiles of ``1.5·size`` × ``1.5·size`` pixels; a seeded random ``test_fraction`` of the
    tiles is held out. Each patch lies inside one tile (so no held-out patch shares a pixel with a training
    patch, and nearest-training distances of held-out patches are an honest copying scale), at a uniformly
    random position in a random tile of its split; both photos are used alternately. Interleaving the tiles
    keeps the two splits' content alike (a held-out *region*, e.g. the right edge, would not be). Pixel values
    are ``pixel / 127.5 − 1``. All draws come from ``numpy.random.default_rng(seed)``.

    Args:
        size: patch side in pixels (2 ≤ size ≤ 142, so that each photo holds at least 2 × 3 tiles).
        n_train, n_test: patches in each split (≥ 1).
        test_fraction: share of tiles held out (0 < f < 1).
        seed: int ≥ 0.

    Returns:
        dict of float32 arrays: ``train`` [n_train, size, size, 3]; ``test`` [n_test, size, size, 3] from the held-out
        tiles (the copying scale: their distance to the nearest training patch); ``reference`` [n_test, size,
        size, 3], a further independent draw from the *training* tiles. Use ``reference`` for distribution
        metrics (Fréchet distance, precision/recall): the held-out tiles are few (a fifth of ~200), and
        patches cut from one tile overlap, so ``test`` is a clumpy sample of a slightly different population
        (measured in the patch encoder's features: Fréchet distance 0.96 between ``test`` and 2 000 training
        patches, 0.065 between two independent draws of 2 000 training patches).

    Raises:
        ValueError: bad sizes, fraction or seed (named in the message).
    """
    from sklearn.datasets import load_sample_images

    size = _checks.positive_int(size, "size")
    if not 2 <= size <= 142:
        raise ValueError(f"`size` must be between 2 and 142 pixels, got {size}.")
    n_train = _checks.positive_int(n_train, "n_train")
    n_test = _checks.positive_int(n_test, "n_test")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    photos = [np.asarray(photo, np.float32) / 127.5 - 1.0 for photo in load_sample_images().images]
    rng = np.random.default_rng(seed)
    tile = size + size // 2
    tiles = [(p, r * tile, c * tile) for p, photo in enumerate(photos)
             for r in range(photo.shape[0] // tile) for c in range(photo.shape[1] // tile)]
    held_out = np.zeros(len(tiles), bool)
    held_out[rng.choice(len(tiles), max(1, int(round(test_fraction * len(tiles)))), replace=False)] = True
    if held_out.all():
        held_out[0] = False

    def cut(n, split):
        chosen = [t for t, h in zip(tiles, held_out, strict=True) if h == split]
        by_photo = [[t for t in chosen if t[0] == p] or chosen for p in range(len(photos))]
        patches = np.empty((n, size, size, 3), np.float32)
        for i in range(n):
            candidates = by_photo[i % len(photos)]
            p, top, left = candidates[int(rng.integers(len(candidates)))]
            row, column = top + int(rng.integers(0, tile - size + 1)), left + int(rng.integers(0, tile - size + 1))
            patches[i] = photos[p][row:row + size, column:column + size]
        return patches

    return {"train": cut(n_train, False), "test": cut(n_test, True), "reference": cut(n_test, False)}


def load_faces(test_fraction=0.2, *, faces_only=False, seed=0):
    """``skimage.data.lfw_subset()`` as float32 [n, 25, 25, 1] in [−1, 1] (value · 2 − 1), split at random.

    scikit-image ships the array inside its wheel (``skimage/data/lfw_subset.npy``), so nothing is
    downloaded. Its 200 images are 100 faces (Labeled Faces in the Wild, 25×25, grey) then 100 non-face
    patches (the negatives of a face-detection example).

    Args:
        test_fraction: share held out (0 < f < 1).
        faces_only: keep only the 100 faces; False (default): all 200 images (what the zoo's faces GAN uses:
            100 images are too few to train a GAN and to evaluate it).
        seed: seed of the split.

    Returns:
        dict with ``train`` and ``test`` (float32 images).

    Raises:
        ValueError: ``test_fraction`` outside (0, 1) or a negative ``seed``.
        ImportError: scikit-image missing (``pip install gan2flow[data]``).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    try:
        from skimage.data import lfw_subset
    except ImportError as error:
        raise ImportError("load_faces needs scikit-image (pip install 'gan2flow[data]').") from error
    images = (np.asarray(lfw_subset(), np.float32) * 2.0 - 1.0)[..., None]
    if faces_only:
        images = images[:100]
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = max(1, int(round(test_fraction * len(images))))
    return {"train": images[order[n_test:]], "test": images[order[:n_test]]}


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
