"""Image metrics in the feature space of small networks the toolkit trains and caches itself.

FID-style evaluation without downloaded weights, for 8×8 grey-scale digits (scikit-learn's
``load_digits``, scaled to [−1, 1] as :func:`gan2flow.datasets.load_digits` does):

- :func:`digit_classifier`: a small conv classifier, trained in seconds on the digits training split
  with a fixed seed and cached as a ``.keras`` file (``~/.cache/gan2flow`` or a path you pass).
- :func:`image_features`: its penultimate-layer activations (64 per image), the feature space below.
- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets (FID's
  formula; Heusel et al. 2017).
- :func:`precision_recall`: k-NN precision and recall (Kynkäänniemi et al. 2019).
- :func:`nearest_distances`: each sample's distance to its nearest training image (memorisation check).
- :func:`image_summary`: all of the above for one sample set, as a flat dict.

Beyond digits (any image shape, e.g. the 32×32 RGB patches and 25×25 faces of :mod:`gan2flow.datasets`),
the features come from a self-trained **convolutional auto-encoder** (no labels needed):

- :func:`feature_encoder`: two stride-2 3×3 convolutions → ``Dense(features)`` (the code) → a mirrored
  decoder, trained by mean squared reconstruction error on (at most 5 000 of) the real training images
  with a fixed seed, and cached as a ``.keras`` file keyed by the data's hash, the seed, the
  epochs and :data:`ENCODER_VERSION`. :func:`encoder_features` gives the code plus the spatial means of
  the encoder's two convolution layers (it sees colour and layout statistics far better than sharpness).
- :func:`image_report`: the table's numbers for one sample set: Fréchet distance and k-NN
  precision/recall in the encoder's features, a power-spectrum distance
  (:func:`spectrum_distance`), the median nearest-training distance over held-out real data's (``nn_ratio``)
  and the out-of-range share.

Like :mod:`gan2flow.metrics`, everything converts inputs to float64 NumPy and returns Python floats
(or float64 arrays); bad input raises ``ValueError`` naming the argument.

The numbers are only comparable within one feature network: a Fréchet distance here is not an FID and
not comparable across classifier seeds or versions (the cache key holds both).

Example::

    from gan2flow import datasets, image_metrics
    data = datasets.load_digits()
    classifier = image_metrics.digit_classifier()                 # trained once, then from the cache
    real = image_metrics.image_features(data["test"], classifier)
    fake = image_metrics.image_features(samples, classifier)
    image_metrics.frechet_distance(fake, real)
    image_metrics.precision_recall(real, fake, k=3)               # {"precision": ..., "recall": ...}
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from gan2flow import _checks, _distances, _io, datasets

__all__ = [
    "CLASSIFIER_VERSION",
    "default_cache_dir",
    "digit_classifier",
    "train_digit_classifier",
    "image_features",
    "frechet_distance",
    "precision_recall",
    "nearest_distances",
    "image_summary",
    "ENCODER_VERSION",
    "train_feature_encoder",
    "feature_encoder",
    "encoder_features",
    "power_spectrum",
    "spectrum_distance",
    "image_report",
]

#: Bumped whenever the classifier's architecture or training changes (it is part of the cache key).
CLASSIFIER_VERSION = 1
#: Bumped whenever the feature encoder's architecture or training changes (part of its cache key).
ENCODER_VERSION = 1
_FEATURE_LAYER = "features"
_BLOCK = 1024  # rows per distance block: a [1024, 1024] float64 block is 8 MiB


# ----------------------------------------------------------------------------------------------------
# The feature network


def default_cache_dir():
    """``$GAN2FLOW_CACHE``, else ``$XDG_CACHE_HOME/gan2flow``, else ``~/.cache/gan2flow``."""
    if os.environ.get("GAN2FLOW_CACHE"):
        return os.environ["GAN2FLOW_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gan2flow")


def _classifier_model(image_shape=(8, 8, 1), n_classes=10, width=64):
    import keras

    x = keras.Input(shape=image_shape, name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_0")(x)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv_1")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(width, activation="relu", name=_FEATURE_LAYER)(h)
    logits = keras.layers.Dense(n_classes, name="logits")(h)
    return keras.Model(x, logits, name="digit_classifier")


def train_digit_classifier(images, labels, *, epochs=30, batch_size=64, learning_rate=1e-3, seed=0,
                           verbose=0):
    """Train the feature classifier: two 3×3 convolutions → Dense(64, "features") → 10 logits.

    Deterministic for a seed on CPU: ``keras.utils.set_random_seed(seed)`` fixes the initial weights
    and the shuffling (it also reseeds Python's, NumPy's and TensorFlow's global generators).

    Args:
        images: [n, 8, 8, 1] in [−1, 1].
        labels: [n] integer classes 0–9.
        epochs, batch_size, learning_rate: Adam training settings (sparse cross-entropy on logits).
        seed: int ≥ 0.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The trained ``keras.Model`` image -> logits [n, 10] (features: layer ``"features"``).
    """
    import keras

    images = _checks.as_float_tensor(images, "images", rank=4).numpy()
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"`labels` must have shape [{len(images)}], got {labels.shape}.")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    keras.utils.set_random_seed(seed)
    model = _classifier_model(images.shape[1:], n_classes=int(labels.max()) + 1)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(images, labels.astype(np.int32), epochs=_checks.positive_int(epochs, "epochs"),
              batch_size=batch_size, shuffle=True, verbose=verbose)
    return model


def digit_classifier(path=None, *, seed=0, epochs=30, verbose=0):
    """The digit feature classifier, loaded from ``path`` (or the cache) or trained and saved there.

    Trained by :func:`train_digit_classifier` on the training split of ``gan2flow.datasets.load_digits()`` (the
    default split, whatever split a pipeline evaluates on: like Inception for FID it is one fixed
    network), in a few seconds on 2 CPU cores. The cache file is
    ``<default_cache_dir()>/digit_classifier-v{CLASSIFIER_VERSION}-seed{seed}-epochs{epochs}.keras``
    and is written atomically, so concurrent first calls cannot leave a half-written file.

    Args:
        path: a ``.keras`` file to load, or to create when missing; None: the cache file above.
        seed, epochs: training settings (part of the default file name).
        verbose: print where the model comes from and the training progress.

    Returns:
        ``keras.Model`` image -> logits, with a ``"features"`` layer.
    """
    import keras

    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    epochs = _checks.positive_int(epochs, "epochs")
    if path is None:
        path = os.path.join(default_cache_dir(),
                            f"digit_classifier-v{CLASSIFIER_VERSION}-seed{seed}-epochs{epochs}.keras")
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end with .keras, got {path!r}.")
    if os.path.exists(path):
        if verbose:
            print(f"digit classifier: loading {path}")
        return keras.saving.load_model(path, compile=False)
    data = datasets.load_digits()
    if verbose:
        print(f"digit classifier: training ({epochs} epochs, seed {seed}) -> {path}")
    model = train_digit_classifier(data["train"], data["train_labels"], epochs=epochs, seed=seed,
                                   verbose=2 if verbose else 0)
    _io.atomic_write(path, model.save, ".keras")
    return model


_EXTRACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _feature_extractor(classifier):
    """classifier input -> its "features" layer, built once per classifier (image_summary calls
    image_features once per sample set)."""
    import keras

    if classifier not in _EXTRACTORS:
        _EXTRACTORS[classifier] = keras.Model(classifier.input, classifier.get_layer(_FEATURE_LAYER).output)
    return _EXTRACTORS[classifier]


def image_features(images, classifier=None, *, batch_size=1024):
    """Penultimate-layer activations of the digit classifier, float64 [n, 64].

    Args:
        images: [n, 8, 8, 1] (or [n, 8, 8]) in the [−1, 1] scale of ``gan2flow.datasets.load_digits``.
        classifier: the model from :func:`digit_classifier` (None: the default cached one).
        batch_size: images per forward pass.
    """
    images = _checks.as_float_tensor(images, "images", min_rank=3).numpy()
    if images.ndim == 3:
        images = images[..., None]
    classifier = digit_classifier() if classifier is None else classifier
    expected = tuple(classifier.input_shape[1:])
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"`images` must have shape [n, {', '.join(map(str, expected))}], got {images.shape}.")
    extractor = _feature_extractor(classifier)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    parts = [np.asarray(extractor(images[i:i + batch_size], training=False), np.float64)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, extractor.output_shape[-1]))


# ----------------------------------------------------------------------------------------------------
# Distances in feature space


def frechet_distance(x, y):
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

        FD = ‖μ_x − μ_y‖² + tr(Σ_x) + tr(Σ_y) − 2 tr((Σ_x^{1/2} Σ_y Σ_x^{1/2})^{1/2})

    i.e. the squared 2-Wasserstein distance :func:`gan2flow.metrics.gaussian_w2` ² between
    N(μ_x, Σ_x) and N(μ_y, Σ_y), with sample means and unbiased sample covariances. Like FID it is
    biased upwards for finite samples (the bias falls as 1/n): compare rows with the same sample sizes.

    Args:
        x: features [n, d], n ≥ 2.
        y: features [m, d], m ≥ 2.

    Returns:
        Python float ≥ 0 (in squared feature units).

    Example::

        frechet_distance(f, f + [1.0, 0.0])     # 1.0: a pure shift gives ‖μ_x − μ_y‖²
    """
    x, y = _checks.float64_sample_pair(x, y, "x", "y", min_points=2)
    cov_x, cov_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    w2 = _distances.gaussian_w2(x.mean(0), cov_x, y.mean(0), cov_y)  # it symmetrises the covariances
    return float(w2**2)


def _kth_neighbour_radii(points, k):
    """Distance from each point to its k-th nearest *other* point of the same set, [n]."""
    n = len(points)
    norms = np.einsum("ij,ij->i", points, points)
    radii = np.empty(n)
    for i0 in range(0, n, _BLOCK):
        i1 = min(i0 + _BLOCK, n)
        squared = _distances.squared_distances(points[i0:i1], points, norms[i0:i1], norms)
        squared[np.arange(i1 - i0), np.arange(i0, i1)] = np.inf  # not its own neighbour
        radii[i0:i1] = np.sqrt(np.partition(squared, k - 1, axis=1)[:, k - 1])
    return radii


def _covered(queries, points, radii):
    """For each query: is it inside some ball B(points_j, radii_j)?  bool [n]."""
    query_norms = np.einsum("ij,ij->i", queries, queries)
    point_norms = np.einsum("ij,ij->i", points, points)
    squared_radii = radii**2
    inside = np.empty(len(queries), dtype=bool)
    for i0 in range(0, len(queries), _BLOCK):
        i1 = min(i0 + _BLOCK, len(queries))
        squared = _distances.squared_distances(queries[i0:i1], points, query_norms[i0:i1], point_norms)
        inside[i0:i1] = np.any(squared <= squared_radii[None, :], axis=1)
    return inside


def precision_recall(real, fake, *, k=3):
    """k-NN precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric").

    Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
    nearest neighbour in the same set:

        precision = fraction of fake points inside the real manifold   (quality)
        recall    = fraction of real points inside the fake manifold   (coverage)

    Both are in [0, 1]. Identical sets give 1/1; sets farther apart than their k-NN radii give 0/0.
    The paper uses k = 3 with equal set sizes; unequal sizes shift the radii, so compare rows with the
    same sizes.

    Args:
        real: features [n, d], n > k.
        fake: features [m, d], m > k.
        k: the neighbour defining the radii (≥ 1).

    Returns:
        ``{"precision": float, "recall": float}``.
    """
    k = _checks.positive_int(k, "k")
    real, fake = _checks.float64_sample_pair(real, fake, "real", "fake", min_points=k + 1)
    real, fake = _distances.centered(real, fake)  # pooled mean: smaller round-off of Gram-form distances
    real_radii = _kth_neighbour_radii(real, k)
    fake_radii = _kth_neighbour_radii(fake, k)
    return {"precision": float(_covered(fake, real, real_radii).mean()),
            "recall": float(_covered(real, fake, fake_radii).mean())}


def nearest_distances(x, reference, *, exclude=None):
    """Euclidean distance from each sample to its nearest reference sample (axes after the first flattened).

    With ``reference`` the training images, small values flag memorised samples; compare with the same
    quantity for held-out real images (their distances to the training set), which cannot be copies.

    Args:
        x: [n, ...]; reference: [m, ...] with the same trailing shape.
        exclude: None, or n indices into ``reference``, one per row of x, not to count for that row (with x =
            ``reference[exclude]``: leave-one-out distances, each sample to its nearest *other* one).

    Returns:
        float64 array [n].
    """
    x, reference = _checks.float64_sample_pair(x, reference, "x", "reference")
    centre = reference.mean(0)
    x, reference = x - centre, reference - centre
    x_norms = np.einsum("ij,ij->i", x, x)
    reference_norms = np.einsum("ij,ij->i", reference, reference)
    out = np.empty(len(x))
    for i0 in range(0, len(x), _BLOCK):
        i1 = min(i0 + _BLOCK, len(x))
        squared = _distances.squared_distances(x[i0:i1], reference, x_norms[i0:i1], reference_norms)
        if exclude is not None:
            squared[np.arange(i1 - i0), exclude[i0:i1]] = np.inf
        out[i0:i1] = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
    return out


def image_summary(samples, reference, train, *, classifier=None, reference_features=None, k=3):
    """The digits table's numbers for one sample set.

    - ``fd``: :func:`frechet_distance` of the samples' features to the reference's.
    - ``precision``, ``recall``: :func:`precision_recall` (k) against the reference.
    - ``nn_median``, ``nn_p05``: median and 5th percentile of :func:`nearest_distances` to ``train``
      in pixel units; ``nn_distances`` holds them all.
    - ``confident``: share of samples the classifier labels with probability ≥ 0.9 (a
      recognisability score, like the Inception Score's sharpness term).

    Args:
        samples: images [n, 8, 8, 1].
        reference: held-out real images [m, 8, 8, 1] (the target distribution).
        train: the training images (for the memorisation distances).
        classifier: from :func:`digit_classifier` (None: the default cached one).
        reference_features: precomputed ``image_features(reference)`` (saves work across rows).
        k: neighbour count of the precision/recall radii.

    Returns:
        dict of Python floats plus ``nn_distances`` (float64 [n]).
    """
    import keras

    classifier = digit_classifier() if classifier is None else classifier
    features = image_features(samples, classifier)
    if reference_features is None:
        reference_features = image_features(reference, classifier)
    distances = nearest_distances(samples, train)
    logits = np.asarray(classifier(np.asarray(samples, np.float32), training=False))
    confidence = np.asarray(keras.ops.softmax(logits, axis=-1)).max(axis=1)
    result = {"fd": frechet_distance(features, reference_features)}
    result.update(precision_recall(reference_features, features, k=k))
    result.update({
        "nn_median": float(np.median(distances)),
        "nn_p05": float(np.percentile(distances, 5)),
        "confident": float(np.mean(confidence >= 0.9)),
        "nn_distances": distances,
    })
    return result


# ----------------------------------------------------------------------------------------------------
# A self-trained feature encoder for any image shape (no labels, no downloaded weights)

_CODE_LAYER = "code"


def _autoencoder(image_shape, features):
    import keras

    height, width, channels = image_shape
    x = keras.Input(shape=image_shape, name="image")
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="swish", name="enc_0")(x)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="swish", name="enc_1")(h)
    grid = tuple(int(d) for d in h.shape[1:3])
    h = keras.layers.Flatten(name="flatten")(h)
    code = keras.layers.Dense(features, name=_CODE_LAYER)(h)
    h = keras.layers.Dense(grid[0] * grid[1] * 64, activation="swish", name="dec_project")(code)
    h = keras.layers.Reshape(grid + (64,), name="dec_reshape")(h)
    h = keras.layers.UpSampling2D(2, name="dec_up_0")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="swish", name="dec_0")(h)
    h = keras.layers.UpSampling2D(2, name="dec_up_1")(h)
    extra_h, extra_w = 4 * grid[0] - height, 4 * grid[1] - width
    if extra_h or extra_w:
        h = keras.layers.Cropping2D(((0, extra_h), (0, extra_w)), name="dec_crop")(h)
    output = keras.layers.Conv2D(channels, 3, padding="same", name="reconstruction")(h)
    return keras.Model(x, output, name="feature_autoencoder")


def train_feature_encoder(images, *, features=32, epochs=10, batch_size=64, learning_rate=1e-3, max_images=5000,
                          seed=0, verbose=0):
    """Train the feature auto-encoder on real images: reconstruction MSE, Adam, seeded.

    Deterministic for a seed on CPU (``keras.utils.set_random_seed(seed)`` fixes the initial weights, the
    subset and the shuffling).

    Args:
        images: real images [n, H, W, C] (H, W ≥ 4), e.g. in [−1, 1].
        features: size of the code (the feature space of :func:`encoder_features`).
        epochs, batch_size, learning_rate: training settings.
        max_images: train on a seeded random subset of at most this many images.
        seed: int ≥ 0.
        verbose: Keras ``fit`` verbosity.

    Returns:
        The trained auto-encoder (``keras.Model`` image -> reconstruction; the code is layer ``"code"``).

    Raises:
        ValueError: images not shaped [n, H, W, C] with H, W ≥ 4, or bad settings (named).
    """
    import keras

    images = _checks.as_float_tensor(images, "images", rank=4).numpy()
    if min(images.shape[1:3]) < 4:
        raise ValueError(f"`images` must be at least 4×4 pixels, got shape {images.shape}.")
    features = _checks.positive_int(features, "features")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    max_images = _checks.positive_int(max_images, "max_images")
    keras.utils.set_random_seed(seed)
    if len(images) > max_images:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))]
    model = _autoencoder(images.shape[1:], features)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    model.fit(images, images, epochs=_checks.positive_int(epochs, "epochs"),
              batch_size=_checks.positive_int(batch_size, "batch_size"), shuffle=True, verbose=verbose)
    return model


def feature_encoder(images, *, name="images", features=32, epochs=10, seed=0, path=None, verbose=0):
    """The feature auto-encoder of a real data set, loaded from the cache or trained and saved there.

    The cache file is ``<default_cache_dir()>/feature_encoder-v{ENCODER_VERSION}-{name}-{fingerprint}-f{features}-
    seed{seed}-epochs{epochs}.keras`` (the fingerprint hashes the images), written atomically.

    Args:
        images: the real *training* images [n, H, W, C] (the fixed reference network, like Inception for FID).
        name: a short label for the file name (letters, digits, ``_`` and ``-``).
        features, epochs, seed: training settings (part of the file name).
        path: a ``.keras`` file to load or create instead of the cache file.
        verbose: print where the model comes from.

    Returns:
        The auto-encoder (pass it to :func:`encoder_features`).
    """
    import hashlib
    import re

    import keras

    images = np.asarray(images, np.float32)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
        raise ValueError(f"`name` must be letters, digits, '_' or '-', got {name!r}.")
    features = _checks.positive_int(features, "features")
    epochs = _checks.positive_int(epochs, "epochs")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    if path is None:
        digest = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:10]
        path = os.path.join(default_cache_dir(), f"feature_encoder-v{ENCODER_VERSION}-{name}-{digest}-f{features}-"
                                                 f"seed{seed}-epochs{epochs}.keras")
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end with .keras, got {path!r}.")
    if os.path.exists(path):
        if verbose:
            print(f"feature encoder: loading {path}")
        return keras.saving.load_model(path, compile=False)
    if verbose:
        print(f"feature encoder: training ({epochs} epochs, seed {seed}) -> {path}")
    model = train_feature_encoder(images, features=features, epochs=epochs, seed=seed, verbose=2 if verbose else 0)
    _io.atomic_write(path, model.save, ".keras")
    return model


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoder_features(images, encoder, *, batch_size=1024):
    """The auto-encoder's features of each image, float64 [n, features + 96].

    The code (``features`` numbers: what the image looks like as a whole) followed by the spatial means of the
    two encoder convolutions' activations (32 + 64 numbers: local texture statistics, in the manner of
    Inception's pooled features for FID). Measured on the 32×32 patches, neither part sees fine detail much: a
    2×2 box blur or pixel noise of std 0.1 moves the Fréchet distance by ~0.02, a third of the distance between
    two independent draws of 2 000 training patches (docs/images.md).

    Args:
        images: [n, H, W, C] with the encoder's image shape.
        encoder: from :func:`feature_encoder` or :func:`train_feature_encoder`.
        batch_size: images per forward pass.
    """
    import keras

    images = _checks.as_float_tensor(images, "images", rank=4).numpy()
    expected = tuple(encoder.input_shape[1:])
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"`images` must have shape [n, {', '.join(map(str, expected))}], got {images.shape}.")
    if encoder not in _ENCODERS:
        pooled = [keras.layers.GlobalAveragePooling2D()(encoder.get_layer(name).output) for name in ("enc_0", "enc_1")]
        _ENCODERS[encoder] = keras.Model(encoder.input, keras.layers.Concatenate()(
            [encoder.get_layer(_CODE_LAYER).output] + pooled))
    extractor = _ENCODERS[encoder]
    batch_size = _checks.positive_int(batch_size, "batch_size")
    parts = [np.asarray(extractor(images[i:i + batch_size], training=False), np.float64)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts, axis=0)


def power_spectrum(images):
    """Radially averaged power spectrum of images [n, H, W, C], averaged over images and channels: float64 [r],
    r = min(H, W) // 2 + 1 frequency bins (bin 0 holds the mean)."""
    images = _checks.as_float_tensor(images, "images", rank=4).numpy().astype(np.float64)
    height, width = images.shape[1:3]
    power = np.abs(np.fft.fft2(images, axes=(1, 2))) ** 2
    power = power.mean(axis=(0, 3))
    fy, fx = np.meshgrid(np.fft.fftfreq(height) * height, np.fft.fftfreq(width) * width, indexing="ij")
    radius = np.minimum(np.round(np.sqrt(fx**2 + fy**2)).astype(int), min(height, width) // 2)
    return np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())


def spectrum_distance(x, y):
    """Mean absolute difference of the log10 radial power spectra of two image sets (0 for equal spectra;
    0.3 means a factor 2 of power per frequency on average). Images [n, H, W, C] with the same shape."""
    px, py = power_spectrum(x), power_spectrum(y)
    if px.shape != py.shape:
        raise ValueError(f"`x` and `y` must have the same image shape, got spectra of {px.shape} and {py.shape}.")
    return float(np.mean(np.abs(np.log10(px + 1e-12) - np.log10(py + 1e-12))))


def image_report(samples, reference, train, encoder, *, reference_features=None, heldout_nn=None, data_range=(-1, 1),
                 k=3, out_margin=0.1):
    """The image table's numbers for one sample set, in the encoder's features and in pixels (pixel sliced W2 is
    :func:`gan2flow.metrics.sliced_wasserstein`; ``gan2flow.metrics`` imports this module, not the reverse).

    - ``fd``: :func:`frechet_distance` of the samples' codes to the reference's; ``precision``, ``recall``:
      :func:`precision_recall` (k) of the first ``len(reference)`` samples against the reference.
    - ``spectrum``: :func:`spectrum_distance` to the reference.
    - ``nn``: median distance to the nearest training image; ``nn_ratio``: that over ``heldout_nn`` (the same
      median for held-out real images; < 0.75 flags copying).
    - ``out``: share of values beyond ``data_range`` by more than ``out_margin`` of its width.

    Args:
        samples: images [n, H, W, C]; reference: held-out real images [m, H, W, C]; train: training images.
        encoder: from :func:`feature_encoder`.
        reference_features: precomputed ``encoder_features(reference, encoder)``.
        heldout_nn: precomputed median nearest-training distance of ``reference`` (default: computed).

    Returns:
        dict of Python floats.
    """
    samples = np.asarray(samples, np.float32)
    reference = np.asarray(reference, np.float32)
    if reference_features is None:
        reference_features = encoder_features(reference, encoder)
    if heldout_nn is None:
        heldout_nn = float(np.median(nearest_distances(reference, train)))
    features = encoder_features(samples, encoder)
    nn = float(np.median(nearest_distances(samples, train)))
    low, high = data_range
    margin = out_margin * (high - low)
    result = {"fd": frechet_distance(features, reference_features)}
    result.update(precision_recall(reference_features, features[:len(reference_features)], k=k))
    result.update({
        "spectrum": spectrum_distance(samples, reference),
        "nn": nn, "nn_ratio": nn / heldout_nn,
        "out": float(np.mean((samples < low - margin) | (samples > high + margin))),
        "min": float(samples.min()), "max": float(samples.max()),
    })
    return result
