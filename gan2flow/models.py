"""Ready-made generators and σ-conditioned discriminators, so a user can start without writing models.

Every builder returns a functional ``keras.Model`` built from standard Keras 3 layers plus
:class:`SigmaEmbedding` (registered as ``gan2flow>SigmaEmbedding``), so each model round-trips
through a ``.keras`` file once ``gan2flow`` (or ``gan2flow.models``) is imported.

- :func:`mlp_discriminator`, :func:`conv_discriminator`: take ``[x, sigma]`` (σ-conditioned, σ shaped
  ``[batch, 1]``) or ``x``, and return the raw output ``T(x, σ)`` shaped ``[batch, 1]`` (no output
  activation: a logit for the logistic loss, the f-GAN ``v`` for the f-GANs).
- :func:`mlp_generator`, :func:`conv_generator`: take ``z`` shaped ``[batch, latent_dim]``.

Why the defaults are smooth. The score-difference estimate is the *input gradient*
``∇ₓ link(T(x, σ))`` (shared/SD_FLOW.md §3.2), so the discriminator's gradient field is what gets used,
not just its values. A ReLU network is piecewise linear: its input gradient is piecewise *constant*
and jumps across every kink, and second derivatives (which R1 / gradient penalties differentiate
through) vanish almost everywhere. The builders therefore default to ``activation="swish"``
(x·sigmoid(x), smooth with a ReLU-like shape); any Keras activation name or callable is accepted.
Downsampling in :func:`conv_discriminator` is average pooling (smooth) rather than max pooling.

Parametrisation (shared/SD_FLOW.md §9.1). The SD is ∇ₓ of the optimal logit log p_σ/q_σ, which grows like
d²/(2σ²) away from the data at small σ, where the logistic loss is saturated and the logit is pure
extrapolation. ``mlp_discriminator(parametrisation="energy_difference")`` is a difference of two
log-sum-exps of quadratic bowls in the preconditioned input ``c_in(σ)·x`` (EDM's
``c_in = 1/sqrt(σ² + σ_data²)``), whose gradient is a denoiser difference with the ``1/σ²``-type scaling
and the quadratic growth built in (:class:`EnergyDifference`, :class:`InputScaling`): the better SD
estimator, and the loss comparison's default. ``"plain"`` (the default) keeps the MLP of earlier
versions, which trained better generators in full SDGAN training; the measured ablation is in
docs/losses.md, "Parametrisations". :func:`calibration_discriminator` (``convert``) is unchanged.

σ-conditioning. σ enters through :class:`SigmaEmbedding`: ``log σ`` and Fourier features of
``log σ``, so levels spread over orders of magnitude are equally easy to tell apart. The MLP
discriminator concatenates the embedding to the input of every hidden layer; the convolutional one
broadcasts it to extra input channels and concatenates it again before its dense head.

Example::

    from gan2flow import models
    disc = models.mlp_discriminator((2,))                      # [x, sigma] -> [batch, 1]
    gen = models.mlp_generator(8, (2,))                        # z [batch, 8] -> [batch, 2]
    image_disc = models.conv_discriminator((8, 8, 1))
    image_gen = models.conv_generator(16, (8, 8, 1))
"""
from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, adapters, losses

__all__ = [
    "SigmaEmbedding",
    "mlp_discriminator",
    "mlp_generator",
    "conv_discriminator",
    "conv_generator",
    "FrozenFeature",
    "FourierFeatures",
    "calibration_discriminator",
    "StackedWeights",
    "PARAMETRISATIONS",
    "SD_PARAMETRISATION",
    "input_scale",
    "InputScaling",
    "EnergyDifference",
    "ResidualSkip",
    "energy_bowls",
]

#: Accepted values of ``mlp_discriminator(parametrisation=...)`` (docs/losses.md, "Parametrisations").
PARAMETRISATIONS = ("plain", "preconditioned", "energy_difference")
#: The parametrisation measured best as a score-difference estimator (docs/losses.md, "Parametrisations"):
#: the default of the loss comparison's discriminators. ``mlp_discriminator`` itself defaults to ``"plain"``,
#: which trained better generators in full SDGAN training (same section).
SD_PARAMETRISATION = "energy_difference"


@keras.saving.register_keras_serializable(package="gan2flow")
class SigmaEmbedding(keras.layers.Layer):
    """Embed a noise level: ``σ -> [log σ, sin(ω_k log σ), cos(ω_k log σ)]_k``.

    ``ω_k = (π/8)·2^k`` for ``k = 0 .. n_frequencies − 1``: periods from 16 down to
    ``16/2^(n−1)`` units of ``log σ`` (with the default 4 frequencies, the fastest feature completes a
    period when σ changes by a factor e² ≈ 7.4, the slowest spans ~7 orders of magnitude). σ is
    clamped below at ``min_sigma`` before the log, so σ = 0 (noise-free training) stays finite.

    Args:
      n_frequencies: number of Fourier frequencies (≥ 0); the output has ``1 + 2·n_frequencies``
        features.
      min_sigma: lower clamp for σ (> 0).

    Input: σ shaped ``[batch, 1]``. Output: float32 ``[batch, 1 + 2·n_frequencies]``.
    """

    def __init__(self, n_frequencies=4, min_sigma=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.n_frequencies = _checks.positive_int(n_frequencies, "n_frequencies", allow_zero=True)
        self.min_sigma = _checks.positive_float(min_sigma, "min_sigma")
        self._frequencies = np.array(
            [math.pi / 8.0 * 2.0**k for k in range(self.n_frequencies)], dtype=np.float32
        )

    def call(self, sigma):
        sigma = keras.ops.cast(sigma, "float32")
        log_sigma = keras.ops.log(keras.ops.maximum(sigma, self.min_sigma))
        if self.n_frequencies == 0:
            return log_sigma
        phases = log_sigma * keras.ops.convert_to_tensor(self._frequencies)[None, :]
        return keras.ops.concatenate([log_sigma, keras.ops.sin(phases), keras.ops.cos(phases)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 + 2 * self.n_frequencies)

    def get_config(self):
        config = super().get_config()
        config.update({"n_frequencies": self.n_frequencies, "min_sigma": self.min_sigma})
        return config


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------
def _shape(value, name, *, rank=None):
    """A tuple of positive ints (an int is a 1-D shape)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),)
    try:
        shape = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a shape (a tuple of positive ints), got {value!r}.") from None
    if not shape or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(f"`{name}` must be a non-empty tuple of positive ints, got {value!r}.")
    shape = tuple(int(d) for d in shape)
    if rank is not None and len(shape) != rank:
        raise ValueError(f"`{name}` must have {rank} entries, got {shape} ({len(shape)} entries).")
    return shape


def _widths(value, name, *, allow_empty=True):
    """A tuple of positive layer widths."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        widths = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a tuple of positive ints, got {value!r}.") from None
    for width in widths:
        _checks.positive_int(width, name)
    if not widths and not allow_empty:
        raise ValueError(f"`{name}` must name at least one layer width, got {value!r}.")
    return tuple(int(w) for w in widths)


def _dense(units, activation, spectral_norm, name):
    layer = keras.layers.Dense(units, activation=activation, name=name)
    if spectral_norm:
        return keras.layers.SpectralNormalization(layer, name=f"{name}_sn")
    return layer


def _conv(filters, activation, spectral_norm, name):
    layer = keras.layers.Conv2D(filters, 3, padding="same", activation=activation, name=name)
    if spectral_norm:
        return keras.layers.SpectralNormalization(layer, name=f"{name}_sn")
    return layer


def _sigma_input(sigma_conditioned, n_frequencies):
    if not sigma_conditioned:
        return None, None
    sigma = keras.Input(shape=(1,), name="sigma")
    embedding = SigmaEmbedding(n_frequencies, name="sigma_embedding")(sigma)
    return sigma, embedding


# ------------------------------------------------------------------------------------------------
# MLPs
# ------------------------------------------------------------------------------------------------
def mlp_discriminator(input_shape, *, hidden=(128, 128, 128), sigma_conditioned=True, activation="swish",
                      spectral_norm=False, sigma_frequencies=4, parametrisation="plain", sigma_data=0.5,
                      energy_components=8, energy_bias=False, energy_skip=True, fourier_features=0,
                      fourier_scales=(0.05, 5.0), name="mlp_discriminator"):
    """An MLP discriminator ``T(x, σ)`` returning one raw output per sample.

    ``x`` is flattened; with ``sigma_conditioned`` the :class:`SigmaEmbedding` of σ is concatenated to
    the input of every hidden layer (so every layer can change with the noise level).

    Args:
      input_shape: the shape of one sample, e.g. ``(2,)`` or ``(8, 8, 1)`` (an int means ``(n,)``).
      hidden: widths of the hidden ``Dense`` layers.
      sigma_conditioned: take ``[x, sigma]`` (σ shaped ``[batch, 1]``) when True, ``x`` alone when
        False. An unconditioned discriminator trained over a range of σ mixes the levels: its
        gradient is an average SD over σ, not v_σ at any one σ.
      activation: hidden activation, a Keras name or callable. Keep it smooth (the default
        ``"swish"``, or ``"gelu"``, ``"softplus"``, ``"tanh"``): the SD estimate is the input
        gradient, which ReLU makes piecewise constant.
      spectral_norm: wrap every ``Dense`` in ``keras.layers.SpectralNormalization`` (its power
        iteration updates the kernels on ``training=True`` calls). It bounds ‖∇ₓT‖, which steadies
        training but also caps how steep a log-ratio (hence how large an SD) the model can express.
      sigma_frequencies: ``n_frequencies`` of the σ embedding.
      parametrisation: how the network's output becomes ``T(x, σ)``, one of :data:`PARAMETRISATIONS`
        (shared/SD_FLOW.md §9.1; measured in docs/losses.md, "Parametrisations"); all but ``"plain"``
        need σ. ``"energy_difference"`` (:data:`SD_PARAMETRISATION`) is the better score-difference
        estimator (discriminator-only training, calibration); ``"plain"``, the default, trained better
        generators in full SDGAN training at the budgets measured:

        * ``"plain"``: ``T = F(x, σ)``, an MLP on x and the σ embedding.
        * ``"preconditioned"``: ``T = F(c_in(σ)·x, σ)`` with ``c_in = 1/sqrt(σ² + σ_data²)``
          (:func:`input_scale`, EDM's input preconditioning): the network sees inputs of unit scale at
          every σ, and ``∇ₓT = c_in ∇_u F`` carries one factor of ``c_in`` by construction.
        * ``"energy_difference"``: from ``u = c_in(σ)·x`` the network outputs ``K`` residual vectors
          ``Δ_{p,k}`` and ``K`` vectors ``Δ_{q,k}`` shaped like the flattened x, and a log-gain ``g(σ)``
          (a linear function of the σ embedding, initially 0), and
          ``T = LSE_k(−½‖e^g Δ_{p,k}‖²) − LSE_k(−½‖e^g Δ_{q,k}‖²)`` (:class:`EnergyDifference`).
          With ``energy_skip`` (the default) the residuals are ``Δ_{s,k} = c_s(σ)·u − r_{s,k}``
          (:class:`ResidualSkip`, learned skip gains ``c_p``, ``c_q``), so ``r`` is a bowl's centre.
          For K = 1, g = 0 and c = 1, reading ``Δ = u − a`` as a denoiser residual in scaled units,
          ``T = (‖x − B‖² − ‖x − A‖²)/(2(σ² + σ_data²))`` with ``A = a/c_in``: a difference of two
          quadratic energies whose gradient is ``(A − B)/(σ² + σ_data²)`` where ``A, B`` vary slowly,
          the denoiser-difference form of the SD (SD_FLOW.md §2) with the ``1/(σ² + σ_data²)`` scaling
          and the quadratic growth of ``log p_σ`` away from the data built in. The K components
          (a log-sum-exp, as a mixture's log-density) let each side place several bowls, so the
          "nearest mode" structure of a multimodal log p_σ needs no sharp network features; ``g(σ)``
          lets the curvature of the bowls follow σ.
      sigma_data: σ_data of the preconditioned parametrisations (> 0; the data's per-feature scale).
      energy_components: K of ``"energy_difference"`` (≥ 1).
      energy_skip: in ``"energy_difference"``, residuals ``Δ_{s,k} = c_s(σ)·u − r_{s,k}`` (s = p, q) instead of
        the network's outputs ``r`` themselves (:class:`ResidualSkip`): EDM's skip connection, with one
        learned skip gain ``c_s(σ)`` per bowl (a linear function of the σ embedding, initially ½), so that a
        Gaussian mode's bowl is ``e^g(c u − r)`` with ``r`` constant in x and the network need not build an
        identity map out of its hidden units. Measured in docs/losses.md ("The skip gain of the bowls"); False gives the
        residuals of issue 15's earlier passes.
      energy_bias: add a σ-dependent offset ``c(σ)`` (a linear function of the σ embedding, initially 0)
        to the p bowl of ``"energy_difference"``: ``T = A − B + c(σ)``. It changes no gradient in x; it
        lets ``T`` equal ``log p_σ/q_σ`` (whose σ-dependent constant, e.g. ``(d/2) log(s_q²/s_p²)`` for two
        Gaussians, the bowls alone cannot carry) while the bowls keep exact scores.
      fourier_features: how many :class:`FourierFeatures` of x (damped at level σ) to add to the
        network's input (0: none; σ-conditioned only).
      fourier_scales: ``(min_scale, max_scale)`` length scales of the Fourier features.
      name: the model name.

    Returns:
      A ``keras.Model``: ``[x, sigma] -> [batch, 1]`` (or ``x -> [batch, 1]``), float32, raw output.

    Raises:
      ValueError: for a bad shape, widths or parametrisation.

    Example::

        disc = mlp_discriminator((2,), hidden=(64, 64))
        sharp = mlp_discriminator((2,), parametrisation="energy_difference")  # the better SD estimator
        logits = disc([x, tf.fill([len(x), 1], 0.5)])          # [batch, 1]
    """
    input_shape = _shape(input_shape, "input_shape")
    hidden = _widths(hidden, "hidden")
    _checks.one_of(parametrisation, "parametrisation", PARAMETRISATIONS)
    sigma_data = _checks.positive_float(sigma_data, "sigma_data")
    energy_components = _checks.positive_int(energy_components, "energy_components")
    if energy_bias and parametrisation != "energy_difference":
        raise ValueError(f"`energy_bias`=True needs parametrisation='energy_difference', got {parametrisation!r}.")
    fourier_features = _checks.positive_int(fourier_features, "fourier_features", allow_zero=True)
    if not sigma_conditioned and (parametrisation != "plain" or fourier_features):
        raise ValueError(
            f"`parametrisation`={parametrisation!r} and `fourier_features`={fourier_features} need "
            "sigma_conditioned=True (they are functions of σ); use parametrisation='plain', fourier_features=0.")
    x = keras.Input(shape=input_shape, name="x")
    sigma, embedding = _sigma_input(sigma_conditioned, sigma_frequencies)
    flat = keras.layers.Flatten(name="flatten")(x) if len(input_shape) > 1 else x
    h = flat
    if parametrisation != "plain":
        h = InputScaling(sigma_data, name="input_scaling")([flat, sigma])
    scaled = h
    if fourier_features:
        fourier = FourierFeatures(fourier_features, *fourier_scales, name="fourier_features")([flat, sigma])
        h = keras.layers.Concatenate(name="concat_fourier")([h, fourier])
    for index, width in enumerate(hidden):
        if embedding is not None:
            h = keras.layers.Concatenate(name=f"concat_sigma_{index}")([h, embedding])
        h = _dense(width, activation, spectral_norm, f"dense_{index}")(h)
    if embedding is not None and not hidden:
        h = keras.layers.Concatenate(name="concat_sigma_out")([h, embedding])
    if parametrisation == "energy_difference":
        residuals = _dense(2 * energy_components * int(np.prod(input_shape)), None, spectral_norm, "residuals")(h)
        if energy_skip:
            skip_gain = keras.layers.Dense(2, kernel_initializer="zeros", name="skip_gain",
                                           bias_initializer=keras.initializers.Constant(0.5))(embedding)
            residuals = ResidualSkip(components=energy_components, name="residual_skip")([scaled, residuals, skip_gain])
        log_gain = keras.layers.Dense(1, kernel_initializer="zeros", name="log_gain")(embedding)
        head = [scaled, residuals, log_gain]
        if energy_bias:
            head.append(keras.layers.Dense(1, kernel_initializer="zeros", name="energy_bias")(embedding))
        output = EnergyDifference(components=energy_components, name="output")(head)
    else:
        output = _dense(1, None, spectral_norm, "output")(h)
    inputs = [x, sigma] if sigma_conditioned else x
    return keras.Model(inputs, output, name=name)


def input_scale(sigma, sigma_data=0.5):
    """EDM's input preconditioning ``c_in(σ) = 1/sqrt(σ² + σ_data²)`` (Karras et al. 2022, Table 1).

    ``x ~ p_σ`` has per-feature scale ``sqrt(s² + σ²)`` when p has scale s ≈ σ_data, so ``c_in·x`` is of
    unit scale at every σ.

    Args:
      sigma: noise level(s), any shape (array or tensor).
      sigma_data: σ_data (> 0).

    Returns:
      float32 tensor shaped like ``sigma``.
    """
    sigma = keras.ops.cast(sigma, "float32")
    return keras.ops.rsqrt(keras.ops.square(sigma) + float(sigma_data) ** 2)


@keras.saving.register_keras_serializable(package="gan2flow")
class InputScaling(keras.layers.Layer):
    """``[x, σ] -> c_in(σ)·x`` with ``c_in = 1/sqrt(σ² + σ_data²)`` (:func:`input_scale`).

    Input: x ``[batch, d]`` and σ ``[batch, 1]``. Output: float32 ``[batch, d]``.
    """

    def __init__(self, sigma_data=0.5, **kwargs):
        super().__init__(**kwargs)
        self.sigma_data = _checks.positive_float(sigma_data, "sigma_data")

    def call(self, inputs):
        x, sigma = inputs
        return keras.ops.cast(x, "float32") * input_scale(sigma, self.sigma_data)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"sigma_data": self.sigma_data})
        return config


@keras.saving.register_keras_serializable(package="gan2flow")
class ResidualSkip(keras.layers.Layer):
    """``[u, r, c] -> [c_p·u, …, c_p·u, c_q·u, …, c_q·u] − r``: the skip connection of the energy-difference bowls.

    In ``mlp_discriminator(parametrisation="energy_difference", energy_skip=True)`` it turns the network's
    outputs ``r`` (``K`` vectors for p, then ``K`` for q, each shaped like u) into the residuals
    ``Δ_{p,k} = c_p u − r_{p,k}``, ``Δ_{q,k} = c_q u − r_{q,k}`` that :class:`EnergyDifference` squares. With
    ``c = 1`` and ``r`` constant in x a bowl is an isotropic Gaussian's log-density: the form of EDM's
    ``D = c_skip x + c_out F`` (Karras et al. 2022), with the skip gains learned per σ and per side.

    Input: u ``[batch, d]``, r ``[batch, 2·K·d]``, c ``[batch, 2]`` (``c_p``, ``c_q``).
    Output: float32 ``[batch, 2·K·d]``.

    Args:
      components: K (≥ 1).
    """

    def __init__(self, components=1, **kwargs):
        super().__init__(**kwargs)
        self.components = _checks.positive_int(components, "components")

    def call(self, inputs):
        u, residuals, gains = (keras.ops.cast(t, "float32") for t in inputs)
        repeated = keras.ops.tile(u, [1, self.components])
        skip = keras.ops.concatenate([gains[:, :1] * repeated, gains[:, 1:2] * repeated], axis=-1)
        return skip - residuals

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update({"components": self.components})
        return config


@keras.saving.register_keras_serializable(package="gan2flow")
class EnergyDifference(keras.layers.Layer):
    """``[u, Δ, g, c] -> LSE_k(−½‖e^g Δ_{p,k}‖²) + c − LSE_k(−½‖e^g Δ_{q,k}‖²)``, the energy-difference output.

    The output of ``mlp_discriminator(parametrisation="energy_difference")``. ``Δ`` holds ``K`` residual
    vectors for p then ``K`` for q, each shaped like u; ``g`` is a per-sample log-gain. For K = 1, g = 0,
    ``u = c_in(σ)·x`` and ``Δ_p = u − a(x, σ)``, ``Δ_q = u − b(x, σ)``:

        T(x, σ) = ½‖u − b‖² − ½‖u − a‖² = (‖x − B‖² − ‖x − A‖²) / (2(σ² + σ_data²)),  A = a/c_in, B = b/c_in

    so where ``a, b`` vary slowly ``∇ₓT = (A − B)/(σ² + σ_data²)``: Tweedie's ``(D_p − D_q)/σ²`` with the
    scaling built in. With K > 1 each side is the log-density of a K-component mixture of such bowls
    (up to the constant log K). u is taken for its size (the residuals are computed from it upstream).

    The two sides are the *bowls* ``A = LSE_k(−½‖e^g Δ_{p,k}‖²) + c`` and ``B = LSE_k(−½‖e^g Δ_{q,k}‖²)``
    (``T = A − B``); ``c`` is an optional per-sample offset (a function of σ only, in
    ``mlp_discriminator(energy_bias=True)``): it leaves ``∇ₓA`` and the SD unchanged and lets ``T`` carry
    the σ-dependent constant of ``log p_σ/q_σ`` that bowls ``≤ log K`` cannot (each bowl is at most 0).
    With ``bowls=True`` the layer returns ``[A, B]`` instead of ``A − B`` (:func:`energy_bowls`).

    Args:
      components: K (≥ 1).
      bowls: output ``[A, B]`` (``[batch, 2]``) instead of ``T`` (``[batch, 1]``).

    Input: u ``[batch, d]``, Δ ``[batch, 2·K·d]``, optionally g ``[batch, 1]`` (0 if absent) and then
    optionally c ``[batch, 1]`` (0 if absent).
    Output: float32 ``[batch, 1]`` (``[batch, 2]`` with ``bowls``).
    """

    def __init__(self, components=1, bowls=False, **kwargs):
        super().__init__(**kwargs)
        self.components = _checks.positive_int(components, "components")
        self.bowls = bool(bowls)

    def _log_density(self, residuals, dim):
        """``log Σ_k exp(−½‖Δ_k‖²)`` over the components (``−½‖Δ‖²`` for one), [batch, 1]."""
        residuals = keras.ops.reshape(residuals, (-1, self.components, dim))
        energies = -0.5 * keras.ops.sum(keras.ops.square(residuals), axis=-1)
        if self.components == 1:
            return energies
        return keras.ops.logsumexp(energies, axis=-1, keepdims=True)

    def call(self, inputs):
        u, residuals = inputs[0], keras.ops.cast(inputs[1], "float32")
        if len(inputs) > 2:
            residuals = residuals * keras.ops.exp(keras.ops.cast(inputs[2], "float32"))
        dim = keras.ops.shape(u)[-1]
        half = self.components * dim
        real_bowl = self._log_density(residuals[:, :half], dim)
        if len(inputs) > 3:
            real_bowl = real_bowl + keras.ops.cast(inputs[3], "float32")
        fake_bowl = self._log_density(residuals[:, half:], dim)
        if self.bowls:
            return keras.ops.concatenate([real_bowl, fake_bowl], axis=-1)
        return real_bowl - fake_bowl

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 if self.bowls else 1)

    def get_config(self):
        config = super().get_config()
        config.update({"components": self.components, "bowls": self.bowls})
        return config


def energy_bowls(discriminator):
    """The two bowls ``[x, σ] -> [A, B]`` of an energy-difference discriminator (``T = A − B``).

    ``A`` and ``B`` are the log-sum-exps of :class:`EnergyDifference` (``A`` with the offset, if any),
    computed by the same layers as ``T``: the returned model shares every weight with
    ``discriminator``. Trained so that ``∇ₓA ≈ ∇log p_σ`` and ``∇ₓB ≈ ∇log q_σ`` (denoising score
    matching, ``SDGAN(denoising_weight=...)``), ``∇ₓT`` is the SD.

    Args:
      discriminator: a model built by ``mlp_discriminator(parametrisation="energy_difference")`` (any
        model with exactly one :class:`EnergyDifference` layer computing its output).

    Returns:
      A ``keras.Model`` with the discriminator's inputs and output ``[batch, 2]`` (columns A, B).

    Raises:
      ValueError: if the discriminator has no (or more than one) :class:`EnergyDifference` layer.
    """
    layers = [layer for layer in discriminator.layers if isinstance(layer, EnergyDifference)]
    if len(layers) != 1:
        raise ValueError("`discriminator` must have one EnergyDifference layer (mlp_discriminator("
                         f"parametrisation='energy_difference')), found {len(layers)}.")
    layer = layers[0]
    bowls = EnergyDifference(components=layer.components, bowls=True, name=f"{layer.name}_bowls")(layer.input)
    return keras.Model(discriminator.inputs, bowls, name=f"{discriminator.name}_bowls")


def mlp_generator(latent_dim, output_shape, *, hidden=(128, 128, 128), activation="swish",
                  output_activation=None, name="mlp_generator"):
    """An MLP generator ``z -> x``.

    Args:
      latent_dim: size of the latent vector z (the generator input is ``[batch, latent_dim]``).
      output_shape: the shape of one generated sample, e.g. ``(2,)`` or ``(8, 8, 1)``.
      hidden: widths of the hidden ``Dense`` layers.
      activation: hidden activation (Keras name or callable).
      output_activation: activation of the last layer; None (linear) for unbounded data, e.g.
        ``"tanh"`` for data scaled to [−1, 1].
      name: the model name.

    Returns:
      A ``keras.Model``: ``z [batch, latent_dim] -> [batch, *output_shape]``, float32.

    Raises:
      ValueError: for a bad latent size, shape or widths.
    """
    latent_dim = _checks.positive_int(latent_dim, "latent_dim")
    output_shape = _shape(output_shape, "output_shape")
    hidden = _widths(hidden, "hidden")
    z = keras.Input(shape=(latent_dim,), name="z")
    h = z
    for index, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation=activation, name=f"dense_{index}")(h)
    h = keras.layers.Dense(int(np.prod(output_shape)), activation=output_activation, name="output")(h)
    if len(output_shape) > 1:
        h = keras.layers.Reshape(output_shape, name="reshape")(h)
    return keras.Model(z, h, name=name)


# ------------------------------------------------------------------------------------------------
# Convolutional (small images, e.g. 8x8x1 digits)
# ------------------------------------------------------------------------------------------------
def conv_discriminator(image_shape, *, filters=(32, 64), hidden=128, sigma_conditioned=True,
                       activation="swish", spectral_norm=False, sigma_frequencies=4,
                       name="conv_discriminator"):
    """A small convolutional discriminator ``T(x, σ)`` for images shaped ``(H, W, C)``.

    Layout: [σ embedding broadcast to extra input channels] → for each entry of ``filters``: a 3×3
    ``Conv2D`` (same padding) then 2×2 average pooling while the image is larger than 1×1 → flatten →
    [σ embedding concatenated again] → ``Dense(hidden)`` → ``Dense(1)``.

    Args:
      image_shape: ``(H, W, C)``.
      filters: channels of the successive convolution blocks.
      hidden: width of the dense layer after the convolutions (0 for none).
      sigma_conditioned: take ``[x, sigma]`` (σ ``[batch, 1]``) when True, ``x`` alone when False.
      activation: hidden activation; keep it smooth (see :func:`mlp_discriminator`).
      spectral_norm: wrap every ``Conv2D`` and ``Dense`` in ``keras.layers.SpectralNormalization``.
      sigma_frequencies: ``n_frequencies`` of the σ embedding.
      name: the model name.

    Returns:
      A ``keras.Model``: ``[x, sigma] -> [batch, 1]`` (or ``x -> [batch, 1]``), raw output.

    Raises:
      ValueError: for a shape that is not ``(H, W, C)`` or bad widths.
    """
    image_shape = _shape(image_shape, "image_shape", rank=3)
    filters = _widths(filters, "filters", allow_empty=False)
    hidden = _checks.positive_int(hidden, "hidden", allow_zero=True)
    height, width, _ = image_shape
    x = keras.Input(shape=image_shape, name="x")
    sigma, embedding = _sigma_input(sigma_conditioned, sigma_frequencies)
    h = x
    if embedding is not None:
        planes = keras.layers.Reshape((1, 1, -1), name="sigma_planes")(embedding)
        planes = keras.layers.UpSampling2D(size=(height, width), name="sigma_broadcast")(planes)
        h = keras.layers.Concatenate(axis=-1, name="concat_sigma_channels")([h, planes])
    size = [height, width]
    for index, channels in enumerate(filters):
        h = _conv(channels, activation, spectral_norm, f"conv_{index}")(h)
        if max(size) > 1:
            h = keras.layers.AveragePooling2D(2, padding="same", name=f"pool_{index}")(h)
            size = [math.ceil(s / 2) for s in size]
    h = keras.layers.Flatten(name="flatten")(h)
    if embedding is not None:
        h = keras.layers.Concatenate(name="concat_sigma_head")([h, embedding])
    if hidden:
        h = _dense(hidden, activation, spectral_norm, "dense")(h)
    output = _dense(1, None, spectral_norm, "output")(h)
    inputs = [x, sigma] if sigma_conditioned else x
    return keras.Model(inputs, output, name=name)


def conv_generator(latent_dim, image_shape, *, filters=(64, 32), activation="swish", output_activation=None,
                   name="conv_generator"):
    """A small convolutional generator ``z -> image`` for images shaped ``(H, W, C)``.

    Layout: ``Dense`` to a ``ceil(H/2^n) × ceil(W/2^n) × filters[0]`` grid (n = len(filters)) → for each
    entry of ``filters``: 2× nearest upsampling then a 3×3 ``Conv2D`` (upsample-then-convolve avoids
    the checkerboard artefacts of transposed convolutions) → crop to ``H × W`` if needed → a 3×3
    ``Conv2D`` to ``C`` channels.

    Args:
      latent_dim: size of z.
      image_shape: ``(H, W, C)``.
      filters: channels of the successive upsampling blocks.
      activation: hidden activation.
      output_activation: last-layer activation (None: linear; ``"tanh"`` for data in [−1, 1]).
      name: the model name.

    Returns:
      A ``keras.Model``: ``z [batch, latent_dim] -> [batch, H, W, C]``.

    Raises:
      ValueError: for a bad latent size, shape or widths.
    """
    latent_dim = _checks.positive_int(latent_dim, "latent_dim")
    image_shape = _shape(image_shape, "image_shape", rank=3)
    filters = _widths(filters, "filters", allow_empty=False)
    height, width, channels = image_shape
    factor = 2 ** len(filters)
    start = (math.ceil(height / factor), math.ceil(width / factor))
    z = keras.Input(shape=(latent_dim,), name="z")
    h = keras.layers.Dense(start[0] * start[1] * filters[0], activation=activation, name="project")(z)
    h = keras.layers.Reshape((start[0], start[1], filters[0]), name="reshape")(h)
    for index, channels_out in enumerate(filters):
        h = keras.layers.UpSampling2D(2, name=f"upsample_{index}")(h)
        h = keras.layers.Conv2D(
            channels_out, 3, padding="same", activation=activation, name=f"conv_{index}"
        )(h)
    extra_h, extra_w = start[0] * factor - height, start[1] * factor - width
    if extra_h or extra_w:
        h = keras.layers.Cropping2D(
            ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)), name="crop"
        )(h)
    output = keras.layers.Conv2D(channels, 3, padding="same", activation=output_activation, name="output")(h)
    return keras.Model(z, output, name=name)


# --------------------------------------------------------------------------------------------------
# The calibration discriminator convert() trains (and the layers it is made of)


@keras.saving.register_keras_serializable(package="gan2flow")
class FrozenFeature(keras.layers.Layer):
    """The given discriminator's output as a standardised, frozen feature: (link(D(x)) − mean) / std.

    ``link`` is the given loss's link when it has one (a log-ratio estimate at σ = 0), else identity.
    With ``probability`` (a discriminator ending in a sigmoid, keras-io style), the output D ∈ (0, 1) is
    first mapped back to its logit log D − log(1 − D) (clipped to D ∈ [1e-6, 1 − 1e-6]).
    """

    def __init__(self, discriminator, *, loss=None, sigma_conditioned=False, mean=0.0, std=1.0, probability=False,
                 labelled=False, **kwargs):
        super().__init__(**kwargs)
        self.labelled = bool(labelled)
        self.discriminator = discriminator
        self.discriminator.trainable = False
        self.loss_name = None if loss is None else losses.get(loss).name
        self.sigma_conditioned = bool(sigma_conditioned)
        self.mean = float(mean)
        self.std = float(std)
        self.probability = bool(probability)

    def raw(self, x, sigma, label=None):
        inputs = [x, sigma] if self.sigma_conditioned else x
        if self.labelled:  # a class-conditional discriminator: [x, (sigma,) label] in its own label format
            inputs = (inputs if self.sigma_conditioned else [x]) + [adapters.label_input(self.discriminator, label)]
        output = tf.reshape(tf.cast(self.discriminator(inputs, training=False), tf.float32), [-1, 1])
        if self.probability:
            clipped = tf.clip_by_value(output, 1e-6, 1.0 - 1e-6)
            output = tf.math.log(clipped) - tf.math.log1p(-clipped)
        if self.loss_name is not None and losses.get(self.loss_name).sd_consistent:
            output = losses.get(self.loss_name).log_ratio(output)
        return output

    def call(self, inputs):
        return (self.raw(*inputs) - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "loss": self.loss_name, "sigma_conditioned": self.sigma_conditioned,
            "mean": self.mean, "std": self.std, "probability": self.probability,
        })
        if self.labelled:  # (only then: unconditional configs stay as they were)
            config["labelled"] = True
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="gan2flow")
class FourierFeatures(keras.layers.Layer):
    """Random Fourier features of x, damped as Gaussian smoothing at level σ damps them.

    Column k of B is a random unit direction times 2π/ℓ_k, with length scales ℓ_k log-uniform on
    [min_scale, max_scale] (Tancik et al. 2020). Each feature is multiplied by exp(−‖b_k‖²σ²/2), which is
    exactly E[sin(b_k·(x + σn))] / sin(b_k·x) for n ~ N(0, I): a feature finer than σ cannot matter for
    p_σ or q_σ, so it is switched off and cannot add high-frequency gradient noise at large σ. This lets an
    MLP represent the log-ratio's sharp structure at small σ and stay smooth at large σ.

    Input: [x, sigma] with sigma [batch, 1]. Output: [batch, 2·n_features].
    """

    def __init__(self, n_features=64, min_scale=0.05, max_scale=5.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.n_features = int(n_features)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.seed = int(seed)

    def build(self, input_shape):
        self._build_frequencies(input_shape[0])

    def _build_frequencies(self, x_shape):
        dim = int(np.prod(x_shape[1:]))
        rng = np.random.default_rng(self.seed)
        directions = rng.normal(size=(dim, self.n_features))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        scales = np.exp(rng.uniform(np.log(self.min_scale), np.log(self.max_scale), self.n_features))
        frequencies = (2 * np.pi * directions / scales).astype(np.float32)
        self.frequencies = self.add_weight(name="frequencies", shape=(dim, self.n_features), trainable=False,
                                           initializer=keras.initializers.Constant(frequencies))
        self.half_sq_norms = self.add_weight(
            name="half_sq_norms", shape=(self.n_features,), trainable=False,
            initializer=keras.initializers.Constant(0.5 * (frequencies**2).sum(0)))

    def call(self, inputs):
        x, sigma = inputs
        flat = keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))
        phases = keras.ops.matmul(flat, self.frequencies)
        damping = keras.ops.exp(-keras.ops.square(sigma) * self.half_sq_norms[None, :])
        return keras.ops.concatenate([keras.ops.sin(phases) * damping, keras.ops.cos(phases) * damping], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 * self.n_features)

    def get_config(self):
        config = super().get_config()
        config.update({"n_features": self.n_features, "min_scale": self.min_scale, "max_scale": self.max_scale,
                       "seed": self.seed})
        return config


def calibration_discriminator(sample_shape, *, given=None, given_loss=None, reference=None, hidden=(256, 256, 256),
                              fourier_features=0, fourier_scales=(0.05, 5.0), name="calibrated_discriminator",
                              n_classes=None, reference_labels=None, label_features=16):
    """A σ-conditioned MLP discriminator [x, sigma] -> logit, optionally fed the given discriminator's output.

    Args:
        sample_shape: shape of one sample.
        given: the existing discriminator (frozen) to reuse as a feature, or None.
        given_loss: the loss it was trained with (for its link), or None (raw output).
        reference: samples used to standardise the given output (mean/std).
        hidden: hidden widths.
        n_classes: K for a class-conditional discriminator ``[x, sigma, label] -> logit`` (label: int32
            ``[batch, 1]``), which learns log p_σ(x | y)/q_σ(x | y): the label enters twice, as a learned embedding
            of ``label_features`` numbers concatenated to the features and as a projection term
            ⟨embed(y), h⟩ on the last hidden layer (Miyato & Koyama 2018). A given discriminator then takes
            ``[x, label]`` (or ``[x, sigma, label]``) and ``reference_labels`` are the labels of ``reference``.
            None: unconditional.

    Returns:
        A functional ``keras.Model`` ``[x, sigma] -> [batch, 1]`` (``[x, sigma, label]`` with ``n_classes``).
    """
    x = keras.Input(shape=tuple(sample_shape), name="x")
    sigma = keras.Input(shape=(1,), name="sigma")
    embedding = SigmaEmbedding(name="sigma_embedding")(sigma)
    features = [keras.layers.Flatten(name="flatten")(x) if len(sample_shape) > 1 else x, embedding]
    label = None
    if n_classes is not None:
        label = keras.Input(shape=(1,), dtype="int32", name="label")
        features.append(keras.layers.Flatten(name="label_flatten")(
            keras.layers.Embedding(int(n_classes), int(label_features), name="label_embedding")(label)))
    if fourier_features:
        features.append(FourierFeatures(fourier_features, *fourier_scales, name="fourier_features")([x, sigma]))
    if given is not None:
        labelled = label is not None
        conditioned = adapters.model_arity(given) - int(labelled) == 2
        # A discriminator ending in a sigmoid outputs D = σ(logit): use its logit, except for the least-squares
        # loss, whose link log T − log(1 − T) already expects T ∈ (0, 1).
        probability = adapters.ends_in_sigmoid(given) and given_loss != "least_squares"
        feature = FrozenFeature(given, loss=given_loss, sigma_conditioned=conditioned, probability=probability,
                                labelled=labelled, name="given_discriminator")
        if reference is not None:
            reference = tf.convert_to_tensor(reference, tf.float32)
            zeros = tf.zeros([tf.shape(reference)[0], 1])
            raw = (feature.raw(reference, zeros, tf.convert_to_tensor(reference_labels)) if labelled
                   else feature.raw(reference, zeros)).numpy()
            feature.mean = float(np.mean(raw))
            feature.std = float(np.std(raw)) or 1.0
        features.append(feature([x, sigma, label] if labelled else [x, sigma]))
    h = keras.layers.Concatenate(name="features")(features)
    for index, width in enumerate(hidden):
        h = keras.layers.Concatenate(name=f"concat_sigma_{index}")([h, embedding]) if index else h
        h = keras.layers.Dense(width, activation="swish", name=f"dense_{index}")(h)
    output = keras.layers.Dense(1, name="logit")(h)
    if label is None:
        return keras.Model([x, sigma], output, name=name)
    projection = keras.layers.Flatten(name="label_projection_flatten")(
        keras.layers.Embedding(int(n_classes), int(h.shape[-1]), embeddings_initializer="zeros",
                               name="label_projection")(label))
    output = keras.layers.Add(name="logit_projected")([output, keras.layers.Dot(axes=1, name="projection")(
        [h, projection])])
    return keras.Model([x, sigma, label], output, name=name)


@keras.saving.register_keras_serializable(package="gan2flow")
class StackedWeights(keras.layers.Layer):
    """Non-trainable variables shaped ``[count, *shape]`` for each of ``shapes``: one model's weights for
    ``count`` stages (``GANFlow`` keeps its staged refinement's weights here, so they are saved with it).
    ``call`` returns them; they are read directly as ``layer.stacked``."""

    def __init__(self, shapes, count, **kwargs):
        super().__init__(**kwargs)
        self.shapes = [list(map(int, shape)) for shape in shapes]
        self.count = int(count)
        self.stacked = [self.add_weight(shape=(self.count, *shape), initializer="zeros", trainable=False,
                                        name=f"stacked_{index}") for index, shape in enumerate(self.shapes)]
        self.built = True

    def call(self, inputs=None):
        return [variable.value for variable in self.stacked]

    def get_config(self):
        config = super().get_config()
        config.update({"shapes": self.shapes, "count": self.count})
        return config
