"""A σ-conditioned convolutional calibration discriminator for image-shaped samples (issue 17).

``convert`` and the staged refinement train a calibration discriminator T(x, σ) ≈ log p_σ(x)/q_σ(x) and flow
along its input gradient (shared/SD_FLOW.md §3.2, §9.2). :func:`gan2flow.models.calibration_discriminator` is an
MLP on flattened pixels: adequate for 8×8 digits (64 numbers), blind to image structure at 32×32×3 = 3 072.
:func:`calibration_model` picks the architecture from the sample shape:

- samples shaped ``(H, W, C)`` with H, W ≥ 16 (:func:`is_image_shape`): :func:`conv_calibration_discriminator`;
- anything else (points, vectors, the 8×8 digits): the MLP of :func:`gan2flow.models.calibration_discriminator`,
  unchanged.

The convolutional discriminator (all activations swish, so its input gradient is smooth)::

    x ─ conv 3×3 /2 ─(+ Dense(σ-emb))─ conv 3×3 /2 ─(+ Dense(σ-emb))─ … ─ residual block ─ flatten ─┐
    σ ─ SigmaEmbedding (log σ and Fourier features of log σ) ──────────────────────────────────────┼─ Dense ─ logit
    given D (frozen): spatial means of its intermediate activations + its link-mapped output ──────┘

Every stride-2 stage adds a learned projection of the σ embedding to all its channels (a per-channel shift
that depends on σ), the last resolution gets a residual block, and the head sees the flattened features, the
σ embedding and, with ``taps``, the given discriminator's features (:class:`DiscriminatorTaps`, frozen and
standardised on real data). The given discriminator's features are computed on the *noised* input the
calibration sees, and its gradients flow through them into the SD estimate, like the MLP's
``FrozenFeature``. Cost per sample at 32×32×3 with the default ``filters=(24, 48, 64)``: about 3 MFLOP forward
(the zoo's 32×32 DCGAN discriminator, tapped, adds about 2).

Example::

    from gan2flow import conv_models
    disc = conv_models.calibration_model((32, 32, 3))            # convolutional: [x, sigma] -> [batch, 1]
    disc = conv_models.calibration_model((8, 8, 1))              # the MLP, as before
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, adapters, losses, models

__all__ = ["MIN_IMAGE_SIDE", "is_image_shape", "convert_defaults", "calibration_model",
           "conv_calibration_discriminator", "DiscriminatorTaps", "ChannelShift", "tap_layer_names"]

#: Samples shaped (H, W, C) with H and W at least this get the convolutional calibration.
MIN_IMAGE_SIDE = 16


def is_image_shape(sample_shape):
    """True for an image-shaped sample ``(H, W, C)`` with H, W ≥ :data:`MIN_IMAGE_SIDE` (C ≤ 4)."""
    shape = tuple(int(d) for d in sample_shape)
    return len(shape) == 3 and min(shape[:2]) >= MIN_IMAGE_SIDE and shape[2] <= 4


def convert_defaults(sample_shape):
    """``convert``'s settings for image-shaped samples (:func:`is_image_shape`), {} for any other shape.

    A convolutional step at 32×32×3 costs several times an 8×8 one, so images get smaller budgets, chosen to
    convert and refine 10 000 32×32×3 samples within about 10 minutes on 2 CPU cores (docs/images.md,
    docs/performance.md): 800 calibration steps of 64 + 64 samples (instead of 3 000 of 256 + 256), and stages
    (:func:`gan2flow.staged.calibrate_stages`) with 1 024 particles (+ 512 held out), 50 updates of 64 + 64
    samples per stage, a σ ratio of 0.8 between stages and a learning rate of 1e-3 (the MLP's 3e-3 stalls the
    convolutional network: on the 25×25 faces GAN at σ = 1, held-out loss 0.687 and accuracy 0.57 after the first
    stage with 3e-3, 0.375 and 0.81 with 1e-3). The stages keep the settings the image members were measured with
    before issue 13's last defaults (2 moves of ε = 0.5, a fixed σ ratio, no refit, no noise): four moves of ε = 1,
    the adaptive schedule (up to 4× the stages) and the refit on small data would each multiply the cost of the
    convolutional stages, and were not measured on images; nor was the stages' noise (``noise_scale``, 0.03 for
    other shapes). The backtracking on ε applies (it can only shorten
    moves). The trust rule's gap test allows 2 standard errors of the measured gap (``gap_errors``, found for the faces
    in issue 17 and since the default for every shape): the allowance shrinks as 1/√(held-out images), so it matters
    only on small image sets, where the held-out check is noise-dominated (the 25×25 faces: 32 held-out images, one
    standard error of the gap ≈ 0.08 against ``max_gap`` 0.15). Measured (docs/images.md): faces Fréchet distance 81.8 →
    65.1 (3 stages) without it, → 49.0 (6 stages, recall 0.18 → 0.35, nn ratio 0.88) with it; patches 26.9 → 6.65 with
    it (gaps ≤ 0.03: unchanged; 6.29 before). Moves of ε = 1 were measured too and rejected: faces → 41.7 with the
    allowance, but the patches' recall fell 0.07 → 0.013.

    Returns:
        dict with ``steps``, ``batch_size`` and ``stage_options`` (keyword arguments of ``calibrate_stages``), or {}.
    """
    if not is_image_shape(sample_shape):
        return {}
    return {"steps": 800, "batch_size": 64,
            "stage_options": {"n_particles": 1024, "heldout_particles": 512, "train_steps": 50, "batch_size": 64,
                              "sigma_ratio": 0.8, "learning_rate": 1e-3, "flow_steps": 2, "step_scale": 0.5,
                              "fine_ratio": None, "refit": False, "noise_scale": 0.0}}


def calibration_model(sample_shape, *, given=None, given_loss=None, reference=None, hidden=(256, 256, 256),
                      fourier_features=0, fourier_scales=(0.05, 5.0), taps=True, name="calibrated_discriminator",
                      n_classes=None, reference_labels=None):
    """The calibration discriminator ``[x, sigma] -> logit`` for samples of ``sample_shape``, chosen by shape.

    Image shapes (:func:`is_image_shape`) get :func:`conv_calibration_discriminator` (its head is ``hidden[0]``
    wide; ``fourier_features`` do not apply); other shapes get the MLP
    :func:`gan2flow.models.calibration_discriminator` with every argument as given (``taps`` unused).

    Args:
        sample_shape: the shape of one sample.
        given, given_loss, reference: the given discriminator (frozen), its loss, and real samples to
            standardise its features on (see :func:`conv_calibration_discriminator`).
        hidden, fourier_features, fourier_scales: the MLP's settings (``hidden[0]``: the conv head's width).
        taps: image shapes only: tap the given discriminator's intermediate activations, not only its output.
        name: the model name.
        n_classes, reference_labels: a class-conditional calibration (``[x, sigma, label]``), MLP shapes only.

    Returns:
        A functional ``keras.Model`` ``[x, sigma] -> [batch, 1]``.
    """
    if is_image_shape(sample_shape):
        if n_classes is not None:
            raise ValueError(f"class-conditional calibration (`n_classes`={n_classes}) is not available for "
                             f"image-shaped samples {tuple(sample_shape)} (the convolutional calibration takes no "
                             f"label); flatten the samples, or convert each class's generator apart.")
        widths = tuple(hidden) or (128,)
        return conv_calibration_discriminator(sample_shape, given=given, given_loss=given_loss, reference=reference,
                                              head=int(widths[0]), taps=taps, name=name)
    return models.calibration_discriminator(sample_shape, given=given, given_loss=given_loss, reference=reference,
                                            hidden=hidden, fourier_features=fourier_features,
                                            fourier_scales=fourier_scales, name=name, n_classes=n_classes,
                                            reference_labels=reference_labels)


def tap_layer_names(discriminator):
    """The layers of a functional / Sequential discriminator whose outputs are tapped: every layer with a
    rank-4 (feature map) output that is an activation (or a convolution with a built-in activation), skipping
    convolutions followed by a separate activation layer; [] when the model has no symbolic graph."""
    names = []
    try:
        layers = discriminator.layers
        outputs = [layer.output for layer in layers]
    except (AttributeError, ValueError):
        return []
    for index, (layer, output) in enumerate(zip(layers, outputs, strict=True)):
        if len(output.shape) != 4:
            continue
        activation = getattr(layer, "activation", None)
        is_activation = isinstance(layer, (keras.layers.LeakyReLU, keras.layers.ReLU, keras.layers.Activation,
                                           keras.layers.ELU, keras.layers.PReLU))
        has_activation = activation is not None and activation is not keras.activations.linear
        followed = index + 1 < len(layers) and isinstance(layers[index + 1], (
            keras.layers.LeakyReLU, keras.layers.ReLU, keras.layers.Activation, keras.layers.ELU, keras.layers.PReLU))
        if is_activation or (has_activation and not followed):
            names.append(layer.name)
    return names


@keras.saving.register_keras_serializable(package="gan2flow")
class DiscriminatorTaps(keras.layers.Layer):
    """The given discriminator's features, frozen and standardised: the spatial means of the activations of
    ``layer_names`` (one number per channel) followed by its output through the loss's link (like
    :class:`gan2flow.models.FrozenFeature`: a logit for a sigmoid-ended model, link(T) for a known SD-consistent
    loss, else the raw output). Each feature is standardised, (f − mean) / std, with the statistics of real data.

    Input: ``x`` [batch, H, W, C]. Output: [batch, n_features] (channels of every tap, + 1).
    """

    def __init__(self, discriminator, *, layer_names=(), loss=None, probability=False, mean=None, std=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.discriminator.trainable = False
        self.layer_names = list(layer_names)
        self.loss_name = None if loss is None else losses.get(loss).name
        self.probability = bool(probability)
        outputs = [discriminator.get_layer(name).output for name in self.layer_names]
        # Without taps the model is called as it is (a subclassed model has no symbolic graph to tap).
        inputs = discriminator.inputs[0] if outputs and len(discriminator.inputs) == 1 else None
        self._features = keras.Model(inputs, outputs + [discriminator.outputs[0]]) if outputs else None
        self.n_features = sum(int(output.shape[-1]) for output in outputs) + 1
        self.mean = [0.0] * self.n_features if mean is None else [float(v) for v in mean]
        self.std = [1.0] * self.n_features if std is None else [float(v) for v in std]
        if len(self.mean) != self.n_features or len(self.std) != self.n_features:
            raise ValueError(f"`mean` and `std` must hold {self.n_features} numbers, got {len(self.mean)} and "
                             f"{len(self.std)}.")

    def raw(self, x):
        """The unstandardised features [batch, n_features]."""
        if self._features is None:
            outputs = [self.discriminator(x, training=False)]
        else:
            outputs = list(self._features(x, training=False))
        pooled = [tf.reduce_mean(tf.cast(output, tf.float32), axis=[1, 2]) for output in outputs[:-1]]
        logit = tf.reshape(tf.cast(outputs[-1], tf.float32), [-1, 1])
        if self.probability:
            clipped = tf.clip_by_value(logit, 1e-6, 1.0 - 1e-6)
            logit = tf.math.log(clipped) - tf.math.log1p(-clipped)
        if self.loss_name is not None and losses.get(self.loss_name).sd_consistent:
            logit = losses.get(self.loss_name).log_ratio(logit)
        return tf.concat(pooled + [logit], axis=-1)

    def standardize_on(self, reference, batch_size=256):
        """Set ``mean``/``std`` from real samples (a std of 0 becomes 1)."""
        reference = np.asarray(reference, np.float32)
        raw = np.concatenate([np.asarray(self.raw(reference[i:i + batch_size]))
                              for i in range(0, len(reference), batch_size)], 0)
        self.mean = raw.mean(0).astype(float).tolist()
        self.std = [float(s) if s > 0 else 1.0 for s in raw.std(0)]

    def call(self, x):
        mean = tf.constant(self.mean, tf.float32)[None, :]
        std = tf.constant(self.std, tf.float32)[None, :]
        return (self.raw(x) - mean) / std

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_features)

    def get_config(self):
        config = super().get_config()
        config.update({"discriminator": keras.saving.serialize_keras_object(self.discriminator),
                       "layer_names": self.layer_names, "loss": self.loss_name, "probability": self.probability,
                       "mean": self.mean, "std": self.std})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="gan2flow")
class ChannelShift(keras.layers.Layer):
    """``feature_map + shift[:, None, None, :]``: a per-sample, per-channel shift (from the σ embedding)."""

    def call(self, inputs):
        feature_map, shift = inputs
        return feature_map + shift[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def conv_calibration_discriminator(sample_shape, *, given=None, given_loss=None, reference=None,
                                   filters=(24, 48, 64), head=128, taps=True, sigma_frequencies=4,
                                   name="calibrated_discriminator"):
    """A σ-conditioned residual convolutional discriminator ``[x, sigma] -> logit`` for images ``(H, W, C)``.

    Layout: for each entry of ``filters`` a 3×3 stride-2 convolution (swish) plus a σ-dependent per-channel
    shift; then one residual block (two 3×3 convolutions, swish) at the last resolution; flatten; concatenate
    the σ embedding and the given discriminator's features (:class:`DiscriminatorTaps`, frozen); a swish
    ``Dense(head)``; ``Dense(1)``. No normalisation layers (the staged refinement swaps trainable weights per
    σ stage; batch statistics would not follow) and no output scaling (shared/SD_FLOW.md §9.1: measured to hurt
    at large σ).

    Args:
        sample_shape: ``(H, W, C)``.
        given: the given discriminator (a Keras model ``x -> [batch, 1]``), frozen, or None.
        given_loss: its loss name (for the link), or None (raw output; a sigmoid-ended model's logit).
        reference: real samples [n, H, W, C] to standardise the given discriminator's features on (at most
            1 024 are used); None: unstandardised.
        filters: channels of the stride-2 stages (one or more).
        head: width of the dense layer before the logit.
        taps: also feed the spatial means of the given discriminator's intermediate activations
            (:func:`tap_layer_names`); False: only its output. Ignored without ``given``, and for a
            discriminator taking ``[x, sigma]`` or without a symbolic graph (then only its output is used).
        sigma_frequencies: Fourier frequencies of the σ embedding.
        name: the model name.

    Returns:
        A functional ``keras.Model`` ``[x, sigma] -> [batch, 1]`` (raw logit).

    Raises:
        ValueError: a shape that is not ``(H, W, C)`` or bad widths (named).
    """
    sample_shape = tuple(int(d) for d in sample_shape)
    if len(sample_shape) != 3 or min(sample_shape) < 1:
        raise ValueError(f"`sample_shape` must be (H, W, C) with positive entries, got {sample_shape}.")
    filters = tuple(_checks.positive_int(f, "filters") for f in filters)
    if not filters:
        raise ValueError("`filters` must name at least one stage width, got ().")
    head = _checks.positive_int(head, "head")
    x = keras.Input(shape=sample_shape, name="x")
    sigma = keras.Input(shape=(1,), name="sigma")
    embedding = models.SigmaEmbedding(sigma_frequencies, name="sigma_embedding")(sigma)
    h = x
    for index, channels in enumerate(filters):
        h = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="swish", name=f"down_{index}")(h)
        shift = keras.layers.Dense(channels, name=f"sigma_shift_{index}")(embedding)
        h = ChannelShift(name=f"shift_{index}")([h, shift])
    residual = keras.layers.Conv2D(filters[-1], 3, padding="same", activation="swish", name="residual_0")(h)
    residual = keras.layers.Conv2D(filters[-1], 3, padding="same", name="residual_1")(residual)
    h = keras.layers.Activation("swish", name="residual_out")(keras.layers.Add(name="residual_add")([h, residual]))
    features = [keras.layers.Flatten(name="flatten")(h), embedding]
    if given is not None:
        if adapters.model_arity(given) == 2:  # σ-conditioned given D: its output at σ, as the MLP uses it
            probability = adapters.ends_in_sigmoid(given) and given_loss != "least_squares"
            feature = models.FrozenFeature(given, loss=given_loss, sigma_conditioned=True, probability=probability,
                                           name="given_discriminator")
            features.append(feature([x, sigma]))
        else:
            probability = adapters.ends_in_sigmoid(given) and given_loss != "least_squares"
            names = tap_layer_names(given) if taps else []
            try:
                tapped = DiscriminatorTaps(given, layer_names=names, loss=given_loss, probability=probability,
                                           name="given_discriminator")
            except (AttributeError, ValueError, TypeError):  # no symbolic graph: the output alone
                tapped = DiscriminatorTaps(given, loss=given_loss, probability=probability,
                                           name="given_discriminator")
            if reference is not None:
                reference = np.asarray(reference, np.float32)
                tapped.standardize_on(reference[np.linspace(0, len(reference) - 1, min(len(reference), 1024))
                                      .astype(int)])
            features.append(tapped(x))
    h = keras.layers.Concatenate(name="features")(features)
    h = keras.layers.Dense(head, activation="swish", name="head")(h)
    output = keras.layers.Dense(1, name="logit")(h)
    return keras.Model([x, sigma], output, name=name)
