"""Convert an existing GAN into a calibrated, saveable score-difference flow (shared/SD_FLOW.md §2, §4–7).

    flow = gan2flow.convert(generator, discriminator, real_data)    # Keras models or .keras paths
    x = flow.sample(1000, seed=0)                                   # refined in data space
    flow.save("my_flow.keras");  flow = gan2flow.load("my_flow.keras")

A discriminator trained by someone else, with any loss (hinge and WGAN critics included), on clean
data, is generally *not* an SD estimator: its optimum is not a known function of log p_σ/q_σ, and it
never saw noised inputs. Conversion therefore **calibrates**: it trains a σ-conditioned discriminator
with the logistic loss (link = identity) on noised real data versus noised samples of the *frozen*
generator, so that at the optimum T(x, σ) = log p_σ(x)/q_σ(x). What the given discriminator learned is
reused as an input feature of the calibrated one (its output, mapped through its loss's link when the
loss is known and has one), so the calibration starts from it where it helps and ignores it where not.

Refinement follows the calibrated SD along a decreasing σ schedule, and keeps its source term current
as the samples move (the drift correction of §7); latent refinement runs Langevin dynamics on
log p₀(z) + link(T(G(z), σ)), whose stationary law is the generator's latent prior reweighted by the
density ratio.
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, _progress, estimators, flows, losses, models, training
from gan2flow import sigmas as schedules
from gan2flow.training import SDGAN

__all__ = ["convert", "GANFlow", "LatentScoreDifference", "load", "calibration_discriminator",
           "load_keras_model"]

_LOGISTIC = losses.get("logistic")
_MAX_LATENT_STEP = 0.5


# --------------------------------------------------------------------------------------------------
# Loading models


def load_keras_model(value, name):
    """A Keras model given as an object or a ``.keras`` path (clear errors for missing/corrupt files)."""
    if isinstance(value, keras.Model):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.exists(path):
            raise FileNotFoundError(f"`{name}`: no file at {path!r} (expected a .keras model file).")
        if not path.endswith(".keras"):
            raise ValueError(f"`{name}` must be a .keras model file, got {path!r}.")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"`{name}`: {path!r} is not a readable .keras model file ({first}).") from None
        if not isinstance(model, keras.Model):
            raise ValueError(f"`{name}`: {path!r} holds a {type(model).__name__}, expected a keras.Model.")
        return model
    raise ValueError(f"`{name}` must be a keras.Model or a path to a .keras file, got {type(value).__name__}.")


# --------------------------------------------------------------------------------------------------
# The calibrated discriminator


@keras.saving.register_keras_serializable(package="gan2flow")
class FrozenFeature(keras.layers.Layer):
    """The given discriminator's output as a standardised, frozen feature: (link(D(x)) − mean) / std.

    ``link`` is the given loss's link when it has one (a log-ratio estimate at σ = 0), else identity.
    """

    def __init__(self, discriminator, *, loss=None, sigma_conditioned=False, mean=0.0, std=1.0, **kwargs):
        super().__init__(**kwargs)
        self.discriminator = discriminator
        self.discriminator.trainable = False
        self.loss_name = None if loss is None else losses.get(loss).name
        self.sigma_conditioned = bool(sigma_conditioned)
        self.mean = float(mean)
        self.std = float(std)

    def raw(self, x, sigma):
        inputs = [x, sigma] if self.sigma_conditioned else x
        output = tf.reshape(tf.cast(self.discriminator(inputs, training=False), tf.float32), [-1, 1])
        if self.loss_name is not None and losses.get(self.loss_name).sd_consistent:
            output = losses.get(self.loss_name).log_ratio(output)
        return output

    def call(self, inputs):
        x, sigma = inputs
        return (self.raw(x, sigma) - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "loss": self.loss_name, "sigma_conditioned": self.sigma_conditioned,
            "mean": self.mean, "std": self.std,
        })
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
                              fourier_features=0, fourier_scales=(0.05, 5.0), name="calibrated_discriminator"):
    """A σ-conditioned MLP discriminator [x, sigma] -> logit, optionally fed the given discriminator's output.

    Args:
        sample_shape: shape of one sample.
        given: the existing discriminator (frozen) to reuse as a feature, or None.
        given_loss: the loss it was trained with (for its link), or None (raw output).
        reference: samples used to standardise the given output (mean/std).
        hidden: hidden widths.

    Returns:
        A functional ``keras.Model`` ``[x, sigma] -> [batch, 1]``.
    """
    x = keras.Input(shape=tuple(sample_shape), name="x")
    sigma = keras.Input(shape=(1,), name="sigma")
    embedding = models.SigmaEmbedding(name="sigma_embedding")(sigma)
    features = [keras.layers.Flatten(name="flatten")(x) if len(sample_shape) > 1 else x, embedding]
    if fourier_features:
        features.append(FourierFeatures(fourier_features, *fourier_scales, name="fourier_features")([x, sigma]))
    if given is not None:
        arity = estimators._model_arity(given)
        conditioned = arity == 2
        feature = FrozenFeature(given, loss=given_loss, sigma_conditioned=conditioned, name="given_discriminator")
        if reference is not None:
            reference = tf.convert_to_tensor(reference, tf.float32)
            raw = feature.raw(reference, tf.zeros([tf.shape(reference)[0], 1])).numpy()
            feature.mean = float(np.mean(raw))
            feature.std = float(np.std(raw)) or 1.0
        features.append(feature([x, sigma]))
    h = keras.layers.Concatenate(name="features")(features)
    for index, width in enumerate(hidden):
        h = keras.layers.Concatenate(name=f"concat_sigma_{index}")([h, embedding]) if index else h
        h = keras.layers.Dense(width, activation="swish", name=f"dense_{index}")(h)
    output = keras.layers.Dense(1, name="logit")(h)
    return keras.Model([x, sigma], output, name=name)


# --------------------------------------------------------------------------------------------------
# Latent refinement


class LatentScoreDifference:
    """Latent drift (z, σ) -> ∇_z [link(T(G(z), σ)) + prior_weight · log p₀(z)], with p₀ = N(0, I).

    Used with ``gan2flow.flow`` in latent space (shared/SD_FLOW.md §6): the outputs stay on G's range and
    the prior term keeps z on the latent distribution. With Langevin noise (noise_scale = 1) the
    stationary law is p₀(z)·r(G(z)), the prior reweighted by the density ratio.
    """

    def __init__(self, generator, estimator, prior_weight=1.0):
        self.generator = generator
        self.estimator = estimator
        self.prior_weight = _checks.positive_float(prior_weight, "prior_weight", allow_zero=True)

    def __call__(self, z, sigma):
        z = tf.convert_to_tensor(z, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(z)
            x = tf.cast(self.generator(z, training=False), tf.float32)
            value = tf.reduce_sum(self.estimator.log_ratio(x, sigma))
        return tape.gradient(value, z) - self.prior_weight * z


# --------------------------------------------------------------------------------------------------
# The flow object


@keras.saving.register_keras_serializable(package="gan2flow")
class GANFlow(keras.Model):
    """A generator with a calibrated discriminator: sample, refine, reweight; saveable as ``.keras``.

    Args:
        generator: Keras model z -> x, z ~ N(0, I) of shape ``latent_shape``.
        discriminator: calibrated σ-conditioned Keras model [x, sigma] -> logit (logistic loss:
            logit = log p_σ/q_σ at the optimum, q the generator's distribution).
        sigma_range: (sigma_min, sigma_max) the discriminator was calibrated on.
        latent_shape: the generator's input shape (without batch).
        diagnostics: the calibration report (JSON-able dict), kept in the saved file.
    """

    def __init__(self, generator, discriminator, *, sigma_range, latent_shape, diagnostics=None, name="gan_flow",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.diagnostics = diagnostics or {}
        self.estimator = estimators.DiscriminatorScoreDifference(discriminator, loss="logistic",
                                                                 sigma_conditioned=True)
        self._kernels = {}
        self._latent_estimators = {}
        self.built = True

    # keras plumbing ----------------------------------------------------------------------------
    def call(self, z, training=False):
        """``generator(z)``."""
        return self.generator(z, training=False)

    def get_config(self):
        return {
            "name": self.name,
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "sigma_range": list(self.sigma_range),
            "latent_shape": list(self.latent_shape),
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        config["discriminator"] = keras.saving.deserialize_keras_object(config["discriminator"])
        return cls(**config)

    def save(self, filepath, overwrite=True, **kwargs):
        """``keras.Model.save``; to a local ``.keras`` path atomically (a temporary file in the same folder,
        then ``os.replace``), so that an interrupted save never leaves a half-written file behind."""
        path = os.fspath(filepath) if isinstance(filepath, (str, os.PathLike)) else None
        if path is None or not path.endswith(".keras") or "://" in path or (not overwrite and os.path.exists(path)):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        from gan2flow import _io

        _io._atomic(path, lambda temporary: super(GANFlow, self).save(temporary, overwrite=True, **kwargs), ".keras")

    @property
    def sample_shape(self):
        return tuple(self.generator.output_shape[1:])

    # sampling ----------------------------------------------------------------------------------
    def latents(self, n, seed=None):
        """z ~ N(0, I), [n, *latent_shape]; reproducible for an integer seed (stateless Philox)."""
        n = _checks.positive_int(n, "n")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        seed = _checks.positive_int(seed, "seed", allow_zero=True)
        return tf.random.stateless_normal((n,) + self.latent_shape, seed=[seed, 0], alg="philox")

    def generate(self, z, batch_size=4096):
        """G(z) in batches, float32."""
        z = _checks.as_float_tensor(z, "z", min_rank=2)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"`z` must have shape [batch, {', '.join(map(str, self.latent_shape))}], got {tuple(z.shape)}.")
        parts = [tf.cast(self.generator(z[i:i + batch_size], training=False), tf.float32)
                 for i in range(0, int(z.shape[0]), batch_size)]
        return tf.concat(parts, axis=0)

    def sample(self, n, *, refine=True, space="data", seed=None, **options):
        """Draw n samples: G(z), then refined in data space (``refine``) or latent space (``refine_latent``).

        Args:
            n: number of samples.
            refine: False gives the raw generator samples.
            space: ``"data"`` or ``"latent"``.
            seed: integer seed for z and any noise: the same seed gives the same samples.
            **options: passed to :meth:`refine` or :meth:`refine_latent` (``strategy=`` shards the refinement).

        Returns:
            float32 tensor [n, *sample_shape].
        """
        _checks.one_of(space, "space", ("data", "latent"))
        z = self.latents(n, seed)
        if refine and space == "latent":
            z = self.refine_latent(z, seed=seed, **options)
        x = self.generate(z)
        if refine and space == "data":
            x = self.refine(x, seed=seed, **options)
        return x

    def default_sigmas(self, levels=40):
        """The refinement schedule: geometric over the calibrated σ range."""
        return schedules.geometric(self.sigma_range[1], self.sigma_range[0], levels)

    def _drift_corrected(self, initial, block_size):
        """The calibrated SD plus a kernel term ∇log q₀,σ − ∇log q_t,σ (§7); reuses compiled flows."""
        key = (tuple(initial.shape), block_size)
        if key not in self._kernels:
            kernel = estimators.KernelScoreDifference(initial, source=None, block_size=block_size)
            self._kernels[key] = (kernel, estimators.ScoreDifferenceSum(self.estimator, kernel))
        else:
            self._kernels[key][0].assign_target(initial)
        return self._kernels[key][1]

    def refine(self, x, *, sigmas=None, levels=40, steps_per_sigma=2, step_scale=0.5, drift_correction=True,
               drift_min_sigma=None, method="euler", noise_scale=0.0, seed=None, batch_size=None,
               kernel_block_size=1024, verbose=False, callback=None, on_divergence="raise", strategy=None):
        """Refine samples in data space along the calibrated SD with a decreasing σ schedule.

        With ``drift_correction`` (default) the flow follows ∇log p_σ − ∇log q_t,σ for the *current*
        samples: the discriminator's term against the generator plus a kernel estimate of
        ∇log q₀,σ − ∇log q_t,σ from the starting samples and the current ones (shared/SD_FLOW.md §7).
        That kernel term is only trustworthy while σ exceeds the spacing of the samples: below it each
        kernel sees a handful of points and pulls particles onto individual starting samples (the
        memorisation caution of §8). It is therefore applied for σ ≥ ``drift_min_sigma`` (default: twice
        the median nearest-neighbour distance of the starting samples); below, the discriminator's field
        alone finishes the flow, by which time mode weights are settled. The kernel term couples the
        samples of one batch: pass a ``batch_size`` of a few thousand for very large n.

        Args:
            x: samples [n, *sample_shape] (e.g. ``generate(z)``).
            sigmas: schedule (default: :meth:`default_sigmas` with ``levels``).
            levels, steps_per_sigma, step_scale, method, noise_scale, seed, batch_size, callback,
            on_divergence: as :func:`gan2flow.flow`.
            drift_correction: keep the source term current (recommended).
            drift_min_sigma: smallest σ at which the drift correction is applied (None: automatic).
            kernel_block_size: block size of the kernel term.
            verbose: show a progress bar.
            strategy: a ``tf.distribute`` strategy: chunks of ``batch_size`` (default n / replicas) are
                refined in parallel on its replicas (:func:`gan2flow.distribute.refine`); the result equals
                this method's on one device with the same ``batch_size``. No ``callback`` then.

        Returns:
            float32 tensor shaped like x.
        """
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"`x` must have shape [batch, {', '.join(map(str, self.sample_shape))}], got {tuple(x.shape)}.")
        sigmas = self.default_sigmas(levels) if sigmas is None else schedules.validate(sigmas)
        if drift_min_sigma is not None:
            drift_min_sigma = _checks.positive_float(drift_min_sigma, "drift_min_sigma", allow_zero=True)
        # Checked here, before any chunk's work; the seed is resolved once for all chunks and both phases.
        steps_per_sigma = _checks.positive_int(steps_per_sigma, "steps_per_sigma")
        step_scale = _checks.positive_float(step_scale, "step_scale")
        noise_scale = _checks.positive_float(noise_scale, "noise_scale", allow_zero=True)
        method = _checks.one_of(method, "method", flows.METHODS)
        on_divergence = _checks.one_of(on_divergence, "on_divergence", flows._ON_DIVERGENCE)
        seed = flows._resolve_seed(seed, noise_scale)
        if strategy is not None:  # data-parallel over the strategy's replicas (docs/distributed.md)
            from gan2flow import distribute
            return distribute.refine(
                self, x, strategy=strategy, sigmas=sigmas, steps_per_sigma=steps_per_sigma, step_scale=step_scale,
                drift_correction=drift_correction, drift_min_sigma=drift_min_sigma, method=method,
                noise_scale=noise_scale, seed=seed, batch_size=batch_size, kernel_block_size=kernel_block_size,
                verbose=verbose, callback=callback, on_divergence=on_divergence)
        kwargs = dict(steps_per_sigma=steps_per_sigma, step_scale=step_scale, method=method,
                      noise_scale=noise_scale, callback=callback, on_divergence=on_divergence, verbose=verbose)
        chunk = int(x.shape[0]) if batch_size is None else _checks.positive_int(batch_size, "batch_size")
        if not drift_correction:
            return _progress.flow_with_progress(x, self.estimator, sigmas, label="refining in data space",
                                                seed=seed, batch_size=chunk, **kwargs)[0]
        values = sigmas.numpy()
        parts = []
        # Noise is keyed by the global row and step, so each chunk and phase draws its own part of the
        # noise of one uninterrupted flow (chunks only differ from it through the drift term's coupling).
        for start in range(0, int(x.shape[0]), chunk):
            part = x[start:start + chunk]
            threshold = _spacing(part.numpy()) * 2.0 if drift_min_sigma is None else drift_min_sigma
            corrected, plain = values[values >= threshold], values[values < threshold]
            if len(corrected):
                part = _progress.flow_with_progress(
                    part, self._drift_corrected(part, kernel_block_size), corrected, seed=seed, row_offset=start,
                    label=f"refining in data space, drift-corrected (sigma >= {threshold:.3g})", **kwargs)[0]
            if len(plain):
                part = _progress.flow_with_progress(
                    part, self.estimator, plain, seed=seed, row_offset=start,
                    step_offset=len(corrected) * int(steps_per_sigma),
                    label="refining in data space, final levels", **kwargs)[0]
            parts.append(part)
        return tf.concat(parts, axis=0)

    def jacobian_scale(self, n=256, seed=0):
        """RMS stretch of the generator, sqrt(E‖J_G(z) u‖²) for z ~ p₀ and random unit u (data units per
        latent unit): converts data-space step sizes into latent ones. Cached after the first call."""
        if getattr(self, "_jacobian_scale", None) is None:
            z = self.latents(n, seed=seed)
            directions = tf.random.stateless_normal(tf.shape(z), seed=[seed, 1])
            directions = directions / tf.norm(tf.reshape(directions, [n, -1]), axis=1)[:, None]
            with tf.autodiff.ForwardAccumulator(z, directions) as accumulator:
                x = tf.cast(self.generator(z, training=False), tf.float32)
            jvp = tf.reshape(accumulator.jvp(x), [n, -1])
            self._jacobian_scale = float(tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(jvp), axis=1))))
        return self._jacobian_scale

    def refine_latent(self, z, *, sigmas=None, levels=40, steps_per_sigma=2, step_scale=0.2, noise_scale=1.0,
                      prior_weight=1.0, seed=None, batch_size=None, verbose=False, callback=None,
                      on_divergence="raise", strategy=None):
        """Refine latents: z ← z + η_k ∇_z[link(T(G(z), σ_k)) + log p₀(z)] + sqrt(2η_k)·noise_scale·n.

        Annealed over the same σ schedule as :meth:`refine`, with η_k = step_scale·σ_k² / s² where s is
        :meth:`jacobian_scale`, so that a latent step moves G(z) about as far as a data-space step would.
        η_k is capped at 0.5 (stability of the prior term). With noise_scale = 1 this is annealed Langevin dynamics whose stationary law at level σ is
        p₀(z)·p_σ(G(z))/q_σ(G(z)): the prior reweighted by the density ratio, which needs no drift
        correction; with noise_scale = 0 it is mode-seeking ascent. Outputs stay on G's range.

        Args:
            z: latents [n, *latent_shape].
            sigmas, levels, steps_per_sigma, step_scale, noise_scale, seed, batch_size, callback,
            on_divergence: as :meth:`refine` / :func:`gan2flow.flow`.
            prior_weight: weight of log p₀(z) = −‖z‖²/2.
            verbose: show a progress bar.
            strategy: a ``tf.distribute`` strategy to shard the latents over (:func:`gan2flow.distribute.flow`;
                the same latents as on one device (with ``verbose=False`` when ``on_divergence="backoff"``);
                no ``callback`` or progress bar then).

        Returns:
            The refined latents (pass them to :meth:`generate`).
        """
        z = _checks.as_float_tensor(z, "z", min_rank=2)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"`z` must have shape [batch, {', '.join(map(str, self.latent_shape))}], got {tuple(z.shape)}.")
        sigmas = self.default_sigmas(levels) if sigmas is None else schedules.validate(sigmas)
        step_scale = _checks.positive_float(step_scale, "step_scale")
        prior_weight = _checks.positive_float(prior_weight, "prior_weight", allow_zero=True)
        if prior_weight not in self._latent_estimators:
            self._latent_estimators[prior_weight] = LatentScoreDifference(self.generator, self.estimator, prior_weight)
        estimator = self._latent_estimators[prior_weight]
        # Capped at 0.5: beyond η = 2 the prior term alone (z ← (1 − η) z) is unstable, and unadjusted Langevin
        # is biased well before that; a generator that barely stretches its latent would otherwise get huge steps.
        step_sizes = tf.minimum(step_scale * tf.square(sigmas) / self.jacobian_scale() ** 2, _MAX_LATENT_STEP)
        if strategy is not None:  # data-parallel over the strategy's replicas (docs/distributed.md)
            from gan2flow import distribute
            return distribute.flow(
                z, estimator, sigmas, step_sizes=step_sizes, steps_per_sigma=steps_per_sigma, noise_scale=noise_scale,
                seed=seed, batch_size=batch_size, callback=callback, on_divergence=on_divergence, strategy=strategy)
        return _progress.flow_with_progress(
            z, estimator, sigmas, step_sizes=step_sizes, steps_per_sigma=steps_per_sigma, noise_scale=noise_scale,
            seed=seed, batch_size=batch_size, callback=callback, verbose=verbose, on_divergence=on_divergence,
            label="refining in latent space")[0]

    # density ratio -----------------------------------------------------------------------------
    def log_ratio(self, x, sigma=None):
        """Estimated log p_σ(x)/q_σ(x) (the calibrated logit), [batch]; σ defaults to the smallest."""
        x = _checks.as_float_tensor(x, "x", min_rank=2)
        sigma = self.sigma_range[0] if sigma is None else _checks.positive_float(sigma, "sigma")
        return self.estimator.log_ratio(x, sigma)

    def importance_weights(self, x, sigma=None, normalize=True):
        """Density-ratio weights r(x) = exp(log_ratio(x)) for generator samples x (reweighting, rejection).

        With ``normalize`` they are divided by their mean (self-normalised importance weights, mean 1).
        """
        log_r = self.log_ratio(x, sigma)
        if normalize:
            return tf.exp(log_r - tf.reduce_logsumexp(log_r) + tf.math.log(tf.cast(tf.size(log_r), tf.float32)))
        return tf.exp(log_r)


# --------------------------------------------------------------------------------------------------
# Conversion


def _spacing(samples, max_points=2048, seed=0):
    """Median nearest-neighbour distance of (a subsample of) the samples: the scale below which a kernel
    estimate from them sees too few points."""
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    if len(flat) < 2:
        return 0.0
    if len(flat) > max_points:
        flat = flat[np.random.default_rng(seed).choice(len(flat), max_points, replace=False)]
    norms = (flat**2).sum(1)
    squared = norms[:, None] + norms[None, :] - 2.0 * flat @ flat.T
    np.fill_diagonal(squared, np.inf)
    return float(np.median(np.sqrt(np.maximum(squared.min(1), 0.0))))


def _effective_sample_fraction(log_weights):
    """(Σw)² / (n Σw²) for w = exp(log_weights): 1 for equal weights, 1/n for one dominant weight."""
    log_weights = np.asarray(log_weights, np.float64)
    shifted = np.exp(log_weights - log_weights.max())
    return float(shifted.sum() ** 2 / (len(shifted) * (shifted**2).sum()))


def _logistic_terms(logits_real, logits_fake):
    real_terms, fake_terms = _LOGISTIC.per_sample_discriminator_loss(logits_real, logits_fake)
    return real_terms.numpy(), fake_terms.numpy()


def diagnose(flow, real_train, real_heldout, *, n=2000, levels=5, seed=0):
    """Calibration report: per σ, held-out vs training loss and accuracy, divergence and ratio checks.

    For each σ, with noised real samples y + σn (held-out and training) and noised fresh generator
    samples G(z) + σn', and l = the calibrated logit:

    - ``heldout_loss``, ``train_loss``: logistic loss (chance: 2 log 2 ≈ 1.386); ``overfit_gap`` = held-out
      − train (a large gap means the log-ratio is sharp and wrong, §8).
    - ``accuracy`` on held-out real vs fake.
    - ``kl_q_p`` = E_q[−l] and ``kl_p_q`` = E_p[l]: plug-in estimates of KL(q_σ‖p_σ), KL(p_σ‖q_σ).
    - ``log_mean_ratio_q`` = log E_q[e^l] and ``log_mean_inverse_ratio_p`` = log E_p[e^−l]: both are 0 for an
      exact log-ratio (E_q[p/q] = 1); far from 0 means the logit is mis-calibrated at that σ. Both are
      Monte Carlo means of heavy-tailed weights: they are only checked (warned about) where the weights'
      effective sample fraction ``ratio_ess_q`` = (Σw)²/(nΣw²) is ≥ 0.1; at small σ, where p_σ and q_σ
      barely overlap, the check is not possible by sampling and E_p[1/r] reads low even when exact.
    """
    rng = np.random.default_rng(seed)
    sigmas = np.geomspace(flow.sigma_range[1], flow.sigma_range[0], levels)
    heldout = real_heldout[rng.choice(len(real_heldout), min(n, len(real_heldout)), replace=False)]
    train = real_train[rng.choice(len(real_train), min(n, len(real_train)), replace=False)]
    fake = flow.generate(flow.latents(len(heldout), seed=seed + 7919)).numpy()
    fake_for_train = flow.generate(flow.latents(len(train), seed=seed + 7920)).numpy()
    rows = []
    for sigma in sigmas:
        def noised(a, k):
            return (a + sigma * np.random.default_rng([seed, k]).normal(size=a.shape)).astype(np.float32)

        l_real = flow.log_ratio(noised(heldout, 1), sigma).numpy()
        l_fake = flow.log_ratio(noised(fake, 2), sigma).numpy()
        l_train = flow.log_ratio(noised(train, 3), sigma).numpy()
        l_train_fake = flow.log_ratio(noised(fake_for_train, 4), sigma).numpy()
        real_terms, fake_terms = _logistic_terms(l_real, l_fake)
        train_real_terms, train_fake_terms = _logistic_terms(l_train, l_train_fake)
        heldout_loss = float(real_terms.mean() + fake_terms.mean())
        train_loss = float(train_real_terms.mean() + train_fake_terms.mean())
        rows.append({
            "sigma": float(sigma),
            "heldout_loss": heldout_loss,
            "train_loss": train_loss,
            "overfit_gap": heldout_loss - train_loss,
            "accuracy": float(0.5 * ((l_real > 0).mean() + (l_fake < 0).mean())),
            "kl_q_p": float(-l_fake.mean()),
            "kl_p_q": float(l_real.mean()),
            "log_mean_ratio_q": float(np.log(np.mean(np.exp(np.clip(l_fake, -50, 50))))),
            "log_mean_inverse_ratio_p": float(np.log(np.mean(np.exp(np.clip(-l_real, -50, 50))))),
            "ratio_ess_q": _effective_sample_fraction(l_fake),
        })
    warnings_ = []
    for row in rows:
        if row["overfit_gap"] > 0.05:
            warnings_.append(f"sigma={row['sigma']:.3g}: held-out loss exceeds training loss by "
                             f"{row['overfit_gap']:.3f} (overfitting: use more data, fewer steps or a penalty)")
        if row["ratio_ess_q"] >= 0.1 and abs(row["log_mean_ratio_q"]) > 0.25:
            warnings_.append(f"sigma={row['sigma']:.3g}: density ratio mis-calibrated (log E_q[r] = "
                             f"{row['log_mean_ratio_q']:.2f}, should be ~0): train longer")
    return {"levels": rows, "warnings": warnings_, "good_enough": not warnings_,
            "chance_loss": 2 * math.log(2.0)}


def format_diagnostics(report):
    """The calibration report as a Markdown table plus warnings."""
    lines = ["| sigma | held-out loss | train loss | accuracy | KL(q‖p) | KL(p‖q) | log E_q[r] | log E_p[1/r] | ESS_q |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["levels"]:
        lines.append(
            f"| {row['sigma']:.3g} | {row['heldout_loss']:.3f} | {row['train_loss']:.3f} | {row['accuracy']:.1%} | "
            f"{row['kl_q_p']:.3f} | {row['kl_p_q']:.3f} | {row['log_mean_ratio_q']:+.2f} | "
            f"{row['log_mean_inverse_ratio_p']:+.2f} | {row['ratio_ess_q']:.2f} |")
    lines.append(f"chance loss = {report['chance_loss']:.3f}; "
                 + ("calibration looks good enough to flow." if report["good_enough"] else "warnings:"))
    lines.extend(f"- {warning}" for warning in report["warnings"])
    return "\n".join(lines)


def _default_sigma_range(real):
    """σ_max ≈ the data's RMS spread per coordinate × 1 (moves mass between modes); σ_min = σ_max / 100."""
    flat = real.reshape(len(real), -1)
    spread = float(np.sqrt(np.mean(np.var(flat, axis=0))))
    spread = spread if spread > 0 else 1.0
    return (spread / 100.0, spread)


def convert(generator, discriminator, real_data, *, loss=None, latent_dim=None, sigma_range=None, steps=3000,
            batch_size=256, learning_rate=1e-3, hidden=(256, 256, 256), reuse_discriminator=True,
            validation_fraction=0.2, seed=0, verbose=1, callbacks=None, strategy=None, jit_compile=True,
            fourier_features=128, backup_dir=None):
    """Turn a trained GAN into a calibrated :class:`GANFlow`.

    Args:
        generator: Keras model z -> x (or a ``.keras`` path); z ~ N(0, I).
        discriminator: Keras model x -> raw output [batch, 1] or [batch] (or [x, sigma] -> output), or a path,
            trained with any loss; or None to calibrate from scratch.
        real_data: real samples [n, *sample_shape] (array or ``.npy`` path).
        loss: the loss the given discriminator was trained with (a name from ``gan2flow.losses.names()``),
            used to map its output through the link when it has one; None: use the raw output.
        latent_dim: the generator's latent shape when it has no Keras ``inputs``.
        sigma_range: (σ_min, σ_max) for calibration and refinement; default from the data's spread
            (σ_max = RMS per-coordinate std, σ_min = σ_max / 100).
        steps: discriminator updates.
        batch_size, learning_rate, hidden: calibration training settings.
        reuse_discriminator: feed the given discriminator's output to the calibrated one as a feature.
        validation_fraction: share of ``real_data`` held out for the diagnostics.
        seed: seed for the split, latents, σ and noise.
        verbose: 0 silent, 1 progress bar and report.
        callbacks: Keras callbacks for the calibration ``fit`` (e.g. ModelCheckpoint, BackupAndRestore).
        backup_dir: a folder to back the calibration up in after every epoch (≤ 200 steps) with
            ``keras.callbacks.BackupAndRestore`` (weights, optimizer state, epoch; the previous backup is kept
            too, in case a kill lands mid-write). Calling convert again with the same arguments after a crash,
            even ``kill -9``, resumes from the last backup, losing at most one epoch. The folder also records
            the settings (other settings while it holds a backup raise ``ValueError``); its files are removed
            when convert returns.
        strategy: optional ``tf.distribute`` strategy to calibrate under.
        jit_compile: compile the calibration step with XLA (not under a multi-replica ``strategy``, where
            Keras cannot).
        fourier_features: number of σ-damped random Fourier features of x fed to the calibrated
            discriminator (0: none); they let it resolve sharp log-ratios at small σ (see FourierFeatures).

    Returns:
        A :class:`GANFlow` whose ``diagnostics`` say whether the calibration is good enough to flow.

    Raises:
        ValueError: bad models, shapes or data (named in the message).
        FileNotFoundError: a path that does not exist.
    """
    generator = load_keras_model(generator, "generator")
    given = None if discriminator is None else load_keras_model(discriminator, "discriminator")
    if isinstance(real_data, (str, os.PathLike)):
        path = os.fspath(real_data)
        if not os.path.exists(path):
            raise FileNotFoundError(f"`real_data`: no file at {path!r} (expected a .npy array).")
        try:
            real_data = np.load(path, allow_pickle=False)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"`real_data`: {path!r} is not a readable .npy array ({error}).") from None
    real = _checks.as_float_tensor(real_data, "real_data", min_rank=2).numpy()
    if len(real) < 20:
        raise ValueError(f"`real_data` must hold at least 20 samples for calibration and a held-out split, got {len(real)}.")
    if loss is not None:
        loss = losses.get(loss).name
    steps = _checks.positive_int(steps, "steps")
    learning_rate = _checks.positive_float(learning_rate, "learning_rate")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must be in (0, 1), got {validation_fraction!r}.")

    latent_shape = SDGAN._latent_shape(generator, latent_dim)  # the trainer's own inference and checks
    try:
        sample = generator(tf.zeros((2,) + tuple(latent_shape)), training=False)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"`generator` could not be called on latents of shape {(2,) + tuple(latent_shape)}: {error}") from None
    if isinstance(sample, (list, tuple, dict)):
        raise ValueError(f"`generator` must return one tensor of samples, got {len(sample)} outputs.")
    if not bool(tf.reduce_all(tf.math.is_finite(tf.cast(sample, tf.float32)))):
        raise ValueError("`generator` returned NaN/Inf samples for the latent z = 0, expected finite ones "
                         "(are its weights finite?).")
    if tuple(sample.shape[1:]) != tuple(real.shape[1:]):
        raise ValueError(
            f"`generator` output shape {tuple(sample.shape[1:])} does not match the samples of `real_data` "
            f"{tuple(real.shape[1:])}.")
    if given is not None:
        arity = estimators._model_arity(given)
        try:
            out = given([real[:2], np.ones((2, 1), np.float32)] if arity == 2 else real[:2], training=False)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"`discriminator` could not be called on samples of shape {tuple(real.shape[1:])}: "
                             f"{error}") from None
        estimators._output_column(out, "discriminator")

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    n_heldout = max(10, int(round(validation_fraction * len(real))))
    heldout, train = real[order[:n_heldout]], real[order[n_heldout:]]
    try:
        sigma_range = _default_sigma_range(train) if sigma_range is None else tuple(map(float, sigma_range))
    except (TypeError, ValueError):
        raise ValueError(f"`sigma_range` must be a pair (sigma_min, sigma_max), got {sigma_range!r}.") from None
    if len(sigma_range) != 2 or not 0 < sigma_range[0] <= sigma_range[1] < math.inf:
        raise ValueError(f"`sigma_range` must be (sigma_min, sigma_max) with 0 < sigma_min <= sigma_max < inf, got "
                         f"{sigma_range}.")

    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        calibrator = calibration_discriminator(
            real.shape[1:], given=given if reuse_discriminator else None, given_loss=loss, reference=train,
            hidden=hidden, fourier_features=fourier_features, fourier_scales=(sigma_range[0], 2 * sigma_range[1]))
        trainer = SDGAN(generator, calibrator, loss="logistic", generator_objective=None, sigma_range=sigma_range,
                        seed=seed, latent_dim=latent_shape)
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.1)
        # XLA cannot compile a step across replicas (SDGAN.compile would warn and drop it): ask only where it applies.
        replicated = strategy is not None and (strategy.num_replicas_in_sync > 1
                                               or isinstance(strategy, tf.distribute.TPUStrategy))
        trainer.compile(d_optimizer=keras.optimizers.Adam(schedule, beta_1=0.5),
                        jit_compile=bool(jit_compile) and not replicated)
    global_batch = min(batch_size, len(train))
    dataset = training._shuffled_batches(train, global_batch, seed)
    steps_per_epoch = max(1, min(steps, 200))
    epochs = int(math.ceil(steps / steps_per_epoch))
    if verbose:
        print(f"calibrating a σ-conditioned logistic discriminator: {steps} steps, σ in "
              f"[{sigma_range[0]:.3g}, {sigma_range[1]:.3g}]" + (", reusing the given discriminator" if
                                                                  given is not None and reuse_discriminator else ""))
    callbacks = list(callbacks or [])
    if backup_dir is not None:
        backup = _calibration_backup(backup_dir, {
            "real_data": _fingerprint(real), "generator": generator.name, "loss": loss, "latent_shape": list(latent_shape),
            "sigma_range": list(sigma_range), "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "hidden": list(hidden), "reuse_discriminator": bool(given is not None and reuse_discriminator),
            "validation_fraction": validation_fraction, "seed": seed, "fourier_features": fourier_features})
        callbacks.insert(0, backup)  # first: it saves an epoch before other callbacks can stop the run
        if verbose and os.path.exists(os.path.join(os.fspath(backup_dir), "training_metadata.json")):
            print(f"resuming the interrupted calibration backed up in {os.fspath(backup_dir)}")
    trainer.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=1 if verbose else 0, shuffle=False,
                callbacks=callbacks)
    flow = GANFlow(generator, calibrator, sigma_range=sigma_range, latent_shape=latent_shape)
    flow.diagnostics = diagnose(flow, train, heldout, seed=seed)
    flow.diagnostics.update({"steps": steps, "batch_size": global_batch, "sigma_range": list(sigma_range),
                             "reused_discriminator": bool(given is not None and reuse_discriminator),
                             "given_loss": loss, "n_train": len(train), "n_heldout": len(heldout)})
    if verbose:
        print(format_diagnostics(flow.diagnostics))
    if backup_dir is not None:
        _remove_backup(backup_dir)
    return flow


_BACKUP_FILES = ("latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json",
                 "training_metadata.json.bkp", "settings.json")


def _fingerprint(array):
    """Shape, dtype and a SHA-1 of (at most 10⁶ evenly strided elements of) an array."""
    import hashlib

    flat = np.ascontiguousarray(array).reshape(-1)
    strided = np.ascontiguousarray(flat[::max(1, flat.size // 1_000_000)])
    return f"{array.shape}:{array.dtype}:{hashlib.sha1(strided.tobytes()).hexdigest()[:16]}"


def _calibration_backup(backup_dir, settings):
    """A ``BackupAndRestore`` for the calibration in ``backup_dir``, refusing a backup made with other settings."""
    import json

    from gan2flow import _io

    backup_dir = os.fspath(backup_dir)
    path = os.path.join(backup_dir, "settings.json")
    settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
    saved = any(os.path.exists(os.path.join(backup_dir, name)) for name in _BACKUP_FILES[:2])
    if saved and os.path.exists(path):  # (settings without a backup: nothing to resume, start over)
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            changed = sorted(key for key in set(previous or {}) | set(settings)
                             if (previous or {}).get(key) != settings.get(key))
            raise ValueError(
                f"`backup_dir`: {backup_dir!r} holds an interrupted calibration with other settings "
                f"({', '.join(changed) or 'unreadable settings.json'}); call convert with the same arguments to "
                "resume it, or delete that folder to start over.")
    _io.write_json(path, settings)
    return keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True, delete_checkpoint=False)


def _remove_backup(backup_dir):
    """Delete the backup files convert wrote (only those), then the folder if it is empty."""
    for name in _BACKUP_FILES:
        try:
            os.remove(os.path.join(backup_dir, name))
        except OSError:  # already gone
            pass
    try:
        os.rmdir(backup_dir)
    except OSError:  # it holds other files: leave it
        pass


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load(path):
    """Load a :class:`GANFlow` saved with ``flow.save(path)`` (a ``.keras`` file).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ``.keras`` file, or a file holding another kind of model.
    """
    model = load_keras_model(path, "path")
    if not isinstance(model, GANFlow):
        raise ValueError(f"`path`: {os.fspath(path)!r} holds a {type(model).__name__}, not a gan2flow GANFlow "
                         "(save one with GANFlow.save or `gan2flow convert`).")
    return model
