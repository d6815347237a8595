"""Score-difference estimators: callables ``(x, sigma) -> v`` with v_σ(x) = ∇log p_σ(x) − ∇log q_σ(x).

Every estimator here follows one contract (shared/STYLE.md): it takes a float32 batch ``x`` of shape
``[batch, ...]`` and a scalar noise level ``sigma`` (a Python float or a scalar tensor) and returns a
float32 tensor shaped like ``x``. They run eagerly, inside ``tf.function`` and under XLA, so
:func:`gan2flow.flow` can compile a whole flow into one program.

- :class:`KernelScoreDifference`: training-free mean-shift estimate from samples (§3.1).
- :class:`AnalyticScoreDifference`: exact, for Gaussians and Gaussian mixtures (§3.3).
- :class:`DiscriminatorScoreDifference`: the GAN route, ∇ₓ link(T(x, σ)) (§3.2).
- :class:`DenoiserScoreDifference`: (D_p − D_q)/σ², the diffusion link (§3.4).
- :class:`ScoreDifferenceSum` and :func:`drift_corrected`: keep the source term current (§7).
- :class:`RowLabels` and :class:`LabelledModel`: class-conditional models with the rows' labels bound, so a
  conditional field is an ordinary estimator ``(x, sigma) -> v`` (docs/convert.md, "Conditional GANs").

Reference: shared/SD_FLOW.md; Tweedie's formula ∇log p_σ(x) = (D_p(x, σ) − x)/σ².
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from gan2flow import _checks, adapters
from gan2flow import losses as _losses

tfd = tfp.distributions

__all__ = [
    "KernelScoreDifference",
    "AnalyticScoreDifference",
    "DiscriminatorScoreDifference",
    "DenoiserScoreDifference",
    "ScoreDifferenceSum",
    "drift_corrected",
    "ReweightedPriorScore",
    "StagedScoreDifference",
    "RowLabels",
    "LabelledModel",
    "kernel_denoise",
    "checked_block_size",
    "kernel_samples",
    "kernel_score_difference",
    "KernelSamples",
    "auto_block_size",
    "smooth",
]


def _sigma_tensor(sigma):
    return tf.convert_to_tensor(sigma, tf.float32)


def _flatten(x):
    """[batch, ...] -> [batch, D]."""
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _as_sample_variable(samples, name):
    tensor = _checks.as_float_tensor(samples, name, min_rank=2)
    if tensor.shape[0] == 0 or tensor.shape.num_elements() == 0:
        raise ValueError(f"`{name}` must hold at least one sample, got shape {tuple(tensor.shape)}.")
    return tensor


# Elements of one [block, M] logit block: 2²² float32 = 16 MiB, so the matmul output, its exponentials
# and the second matmul's input stay in a server CPU's last-level cache (measured best on the 2-core
# benchmark machine, docs/performance.md); on a GPU it is a modest working set.
_AUTO_BLOCK_ELEMENTS = 1 << 22
_MIN_AUTO_BLOCK = 16


def auto_block_size(n_queries, n_samples):
    """The query block :func:`kernel_denoise` uses for ``block_size="auto"``.

    The largest power of two with ``block · n_samples ≤ 2²²`` (16 MiB of float32 logits per block), at
    least 16 and at most ``n_queries`` (then one block). Memory is O(block · n_samples), never
    O(n_queries · n_samples).

    Args:
        n_queries: N, rows of x (a Python int, or None when unknown).
        n_samples: M, rows of the sample set (a Python int, or None when unknown).

    Returns:
        A positive Python int.
    """
    m = max(int(n_samples), 1) if n_samples is not None else 1024
    block = max(_MIN_AUTO_BLOCK, 1 << max(0, (_AUTO_BLOCK_ELEMENTS // m).bit_length() - 1))
    if n_queries is not None:
        block = min(block, max(int(n_queries), 1))
    return block


def kernel_denoise(x, samples, sigma, *, block_size="auto", samples_half_sq_norm=None):
    """Posterior-mean denoiser of the Gaussian KDE of ``samples``: D̂(x, σ) = Σ_j w_j y_j.

    w = softmax_j(−‖x − y_j‖²/2σ²) = softmax_j(x/σ² · y_j − ½‖y_j‖²/σ²) (the ‖x‖² term cancels).
    Per block of query rows: one matrix product for the logits, a stable log-sum-exp (subtract the
    row maximum, exponentiate), one matrix product of the *unnormalised* weights with the samples,
    and a division by the row sums at the end ([block, D] work instead of [block, M]). Memory is
    O(block_size · M), never O(N · M); the block loop is a ``tf.while_loop`` (one XLA loop when
    compiled).

    Args:
        x: float32 [N, D] queries.
        samples: float32 [M, D] sample set {y_j}.
        sigma: scalar noise level > 0.
        block_size: rows of ``x`` per block; ``"auto"`` (default) picks :func:`auto_block_size` (about
            16 MiB of logits per block); None: all N rows in one block (memory O(N · M)).
        samples_half_sq_norm: optional precomputed ½‖y_j‖², shape [M] (saves a pass over the samples).

    Returns:
        float32 [N, D].

    Example:
        >>> denoised = kernel_denoise(x, data, 0.5)            # [N, D]
    """
    sigma = _sigma_tensor(sigma)
    inverse_variance = 1.0 / tf.square(sigma)
    if samples_half_sq_norm is None:
        samples_half_sq_norm = 0.5 * tf.reduce_sum(tf.square(samples), axis=1)
    # Scale the [N, D] queries and the [M] norms, not the [block, M] logits.
    scaled_queries = x * inverse_variance
    scaled_half_sq = samples_half_sq_norm * inverse_variance

    def denoise_block(queries):
        logits = tf.matmul(queries, samples, transpose_b=True) - scaled_half_sq
        weights = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))
        total = tf.reduce_sum(weights, axis=1, keepdims=True)
        return tf.matmul(weights, samples) / total

    block_size = checked_block_size(block_size)
    if block_size == "auto":
        block_size = auto_block_size(x.shape[0], samples.shape[0])
    n_static = x.shape[0]
    if block_size is None or (n_static is not None and n_static <= block_size):
        return denoise_block(scaled_queries)
    n = tf.shape(x)[0]
    dim = tf.shape(x)[1]
    n_blocks = (n + block_size - 1) // block_size
    padded = tf.pad(scaled_queries, [[0, n_blocks * block_size - n], [0, 0]])
    blocks = tf.reshape(padded, [n_blocks, block_size, dim])

    def body(index, outputs):
        return index + 1, outputs.write(index, denoise_block(blocks[index]))

    _, outputs = tf.while_loop(
        lambda index, _: index < n_blocks,
        body,
        (tf.constant(0, n_blocks.dtype),
         tf.TensorArray(x.dtype, size=n_blocks, element_shape=[block_size, x.shape[1]])),
        parallel_iterations=1,
    )
    return tf.reshape(outputs.stack(), [n_blocks * block_size, dim])[:n]


def checked_block_size(value):
    """``block_size`` checked: a positive int, "auto" or None."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, str):
        raise ValueError(f"`block_size` must be a positive int, 'auto' or None, got {value!r}.")
    return _checks.positive_int(value, "block_size")


class KernelSamples(NamedTuple):
    """A sample set prepared for :func:`kernel_score_difference`: flattened, centred, with ½‖y_j‖².

    ``center`` [D] is subtracted from queries and samples alike (the kernel weights are
    shift-invariant; smaller coordinates keep x·y − ½‖y‖² accurate in float32).
    """

    center: tf.Tensor
    samples: tf.Tensor
    half_sq_norm: tf.Tensor


def kernel_samples(samples, center=None):
    """:class:`KernelSamples` of ``samples`` [M, ...] (tensors, usable inside compiled loops), centred
    on ``center`` (default: their mean)."""
    flat = _flatten(tf.convert_to_tensor(samples, tf.float32))
    center = tf.reduce_mean(flat, axis=0) if center is None else center
    centered = flat - center
    return KernelSamples(center, centered, 0.5 * tf.reduce_sum(tf.square(centered), axis=1))


def kernel_score_difference(x, target, source, sigma, *, block_size="auto", source_weight=1.0):
    """(D̂_target(x, σ) − D̂_source(x, σ)) / σ², shaped like x: the kernel SD between two sample sets (§3.1).

    With ``source_weight`` w ≠ 1: ∇log p̂_σ − w ∇log q̂_σ = (D̂_target − x)/σ² − w (D̂_source − x)/σ², the drift
    that makes Langevin noise of scale s = sqrt(1 − w) leave p, not a tempered p, stationary (§9.4).

    The one place this arithmetic lives: :class:`KernelScoreDifference` and the drift correction of the
    flows (``FlowPlan(drift_correction=True)``) both call it.

    Args:
        x: queries [N, ...].
        target: :class:`KernelSamples` of p's samples.
        source: :class:`KernelSamples` of q's samples, or None: the queries themselves (the particles are
            the source), centred on ``target.center``.
        sigma: scalar noise level > 0.
        block_size: query rows per block (see :func:`kernel_denoise`).
        source_weight: a Python float w (1: the plain score difference).
    """
    sigma = _sigma_tensor(sigma)
    flat = _flatten(x) - target.center
    target_mean = kernel_denoise(flat, target.samples, sigma, block_size=block_size,
                                 samples_half_sq_norm=target.half_sq_norm)
    if source is None:
        source_mean = kernel_denoise(flat, flat, sigma, block_size=block_size)
    else:
        source_mean = kernel_denoise(flat, source.samples, sigma, block_size=block_size,
                                     samples_half_sq_norm=source.half_sq_norm)
    if source_weight == 1.0:
        difference = target_mean - source_mean
    else:
        difference = (target_mean - flat) - source_weight * (source_mean - flat)
    return tf.reshape(difference / tf.square(sigma), tf.shape(x))


class KernelScoreDifference:
    """Training-free SD estimate from samples: v̂_σ(x) = (D̂_p(x, σ) − D̂_q(x, σ)) / σ².

    D̂_p is the mean-shift denoiser of the target samples and D̂_q that of the source samples
    (shared/SD_FLOW.md §3.1): exactly the score difference of the two Gaussian kernel density
    estimates with bandwidth σ. With ``source=None`` the particles being flowed are the source
    sample (the usual kernel SD flow: q is whatever the particles are now).

    Args:
        target: samples of p, array [M, ...].
        source: samples of q, array [M', ...] with the same trailing shape, or None (use x itself).
        source_weight: w in ∇log p_σ − w·∇log q_σ (1: the score difference; flows with Langevin noise s
            use 1 − s², see :meth:`with_source_weight`).
        block_size: query rows per block; memory is O(block_size · M). ``"auto"`` (default): about
            16 MiB of logits per block (:func:`auto_block_size`), the fastest measured on CPU
            (docs/performance.md). None: one block (memory O(N · M)).

    Example:
        >>> est = gan2flow.KernelScoreDifference(target=real_samples, block_size=1024)
        >>> v = est(x, 0.5)           # same shape as x

    Raises:
        ValueError: non-finite or empty samples, mismatched shapes, block_size < 1.

    Caution (§8): with small σ and few target samples the flow collapses onto the target samples.
    """

    def __init__(self, target, source=None, block_size="auto", *, source_weight=1.0):
        self.source_weight = float(source_weight)
        target = _as_sample_variable(target, "target")
        self.event_shape = tuple(target.shape[1:])
        flat_target = tf.reshape(target, [target.shape[0], -1])
        # Centre everything on the target mean: the weights are shift-invariant and smaller
        # coordinates keep x·y − ½‖y‖² accurate in float32.
        self._center = tf.Variable(tf.reduce_mean(flat_target, axis=0), trainable=False, name="center")
        centered = flat_target - self._center
        self._target = tf.Variable(centered, trainable=False, name="target")
        self._target_half_sq = tf.Variable(
            0.5 * tf.reduce_sum(tf.square(centered), axis=1), trainable=False, name="target_half_sq"
        )
        if source is None:
            self._source = None
            self._source_half_sq = None
        else:
            source = _as_sample_variable(source, "source")
            _checks.same_trailing_shape(target, source, "target", "source")
            flat_source = tf.reshape(source, [source.shape[0], -1]) - self._center
            self._source = tf.Variable(flat_source, trainable=False, name="source")
            self._source_half_sq = tf.Variable(
                0.5 * tf.reduce_sum(tf.square(flat_source), axis=1), trainable=False, name="source_half_sq"
            )
        self.block_size = checked_block_size(block_size)

    def assign_target(self, target):
        """Replace the target samples by new ones of the same shape, reusing compiled flows.

        Raises:
            ValueError: a different shape (build a new estimator instead) or non-finite values.
        """
        target = _as_sample_variable(target, "target")
        flat = tf.reshape(target, [target.shape[0], -1])
        if tuple(flat.shape) != tuple(self._target.shape):
            raise ValueError(
                f"`target` must keep the shape {(self._target.shape[0],) + self.event_shape} to be "
                f"reassigned, got {tuple(target.shape)}; build a new KernelScoreDifference instead."
            )
        if self._source is None:  # re-centre on the new samples (with a fixed source, keep its frame)
            self._center.assign(tf.reduce_mean(flat, axis=0))
        centered = flat - self._center
        self._target.assign(centered)
        self._target_half_sq.assign(0.5 * tf.reduce_sum(tf.square(centered), axis=1))

    def denoise_target(self, x, sigma):
        """D̂_p(x, σ), shaped like x."""
        flat = _flatten(tf.convert_to_tensor(x, tf.float32)) - self._center
        denoised = kernel_denoise(
            flat, self._target, sigma, block_size=self.block_size, samples_half_sq_norm=self._target_half_sq
        )
        return tf.reshape(denoised + self._center, tf.shape(x))

    def _check_x(self, x):
        if x.shape.rank is not None and not _checks.shapes_compatible(x.shape[1:], self.event_shape):
            raise ValueError(
                f"`x` must be a batch of samples of shape {self.event_shape} (the target samples'), got shape "
                f"{tuple(x.shape)}."
            )

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        self._check_x(x)
        target = KernelSamples(self._center, self._target, self._target_half_sq)
        source = None if self._source is None else KernelSamples(self._center, self._source, self._source_half_sq)
        return kernel_score_difference(x, target, source, sigma, block_size=self.block_size,
                                       source_weight=self.source_weight)

    def with_source_weight(self, weight):
        """The same estimator for ∇log p_σ − weight·∇log q_σ (sharing the samples; see §9.4).

        ``gan2flow.flow(..., noise_scale=s)`` uses it with weight = 1 − s², so that Langevin noise added to
        this explicit-source drift leaves p stationary instead of the tempered p^{1/(1+s²)}.
        """
        twins = self.__dict__.setdefault("_twins", {})
        if float(weight) not in twins:  # one object per weight: compiled flows are cached per estimator object
            twin = object.__new__(type(self))
            twin.__dict__.update(self.__dict__)
            twin.source_weight = float(weight)
            twins[float(weight)] = twin
        return twins[float(weight)]


# --------------------------------------------------------------------------------------------------
# Analytic (Gaussians and Gaussian mixtures through tensorflow-probability)

_SUPPORTED = (
    "tfd.MultivariateNormalDiag, tfd.MultivariateNormalTriL, tfd.MultivariateNormalFullCovariance, "
    "tfd.Independent(tfd.Normal, 1), and tfd.MixtureSameFamily of these"
)


def smooth(distribution, sigma):
    """The proxy p_σ = p * N(0, σ²I) of a Gaussian or Gaussian mixture, exactly.

    A Gaussian N(μ, Σ) becomes N(μ, Σ + σ²I); a mixture smooths each component (§3.3).

    Args:
        distribution: one of tfd.MultivariateNormalDiag, MultivariateNormalTriL,
            MultivariateNormalFullCovariance, Independent(Normal, 1), or MixtureSameFamily of these.
        sigma: scalar noise level ≥ 0 (tensor or float).

    Returns:
        A tensorflow-probability distribution of the same family.

    Raises:
        ValueError: for any other distribution (named in the message).
    """
    sigma = _sigma_tensor(sigma)
    variance = tf.square(sigma)
    if isinstance(distribution, tfd.MixtureSameFamily):
        return tfd.MixtureSameFamily(
            mixture_distribution=distribution.mixture_distribution,
            components_distribution=smooth(distribution.components_distribution, sigma),
        )
    if isinstance(distribution, tfd.MultivariateNormalDiag):
        scale = distribution.stddev()
        return tfd.MultivariateNormalDiag(loc=distribution.mean(), scale_diag=tf.sqrt(tf.square(scale) + variance))
    if isinstance(distribution, tfd.Independent) and isinstance(distribution.distribution, tfd.Normal):
        inner = distribution.distribution
        if distribution.reinterpreted_batch_ndims != 1:
            raise ValueError(
                "`distribution` Independent(Normal) must reinterpret exactly 1 batch axis as the event, "
                f"got reinterpreted_batch_ndims={distribution.reinterpreted_batch_ndims}."
            )
        scale = tf.broadcast_to(inner.scale, tf.shape(inner.loc))
        return tfd.Independent(tfd.Normal(inner.loc, tf.sqrt(tf.square(scale) + variance)), 1)
    if isinstance(distribution, (tfd.MultivariateNormalTriL, tfd.MultivariateNormalFullCovariance)) or (
        isinstance(distribution, tfd.MultivariateNormalLinearOperator)
    ):
        covariance = distribution.covariance()
        dim = tf.shape(covariance)[-1]
        smoothed = covariance + variance * tf.eye(dim, dtype=covariance.dtype)
        return tfd.MultivariateNormalTriL(loc=distribution.mean(), scale_tril=tf.linalg.cholesky(smoothed))
    raise ValueError(
        f"`distribution` must be a Gaussian or Gaussian mixture ({_SUPPORTED}); "
        f"got {type(distribution).__name__}."
    )


def _check_analytic(distribution, name):
    if not isinstance(distribution, tfd.Distribution):
        raise ValueError(
            f"`{name}` must be a tensorflow-probability distribution ({_SUPPORTED}), "
            f"got {type(distribution).__name__}."
        )
    try:
        smooth(distribution, 0.0)
    except ValueError as error:
        raise ValueError(str(error).replace("`distribution`", f"`{name}`")) from None
    if distribution.event_shape.rank != 1:
        raise ValueError(f"`{name}` must have a vector event shape [d], got {distribution.event_shape}.")
    if distribution.batch_shape.rank not in (0, None):
        raise ValueError(f"`{name}` must have an empty batch shape, got {distribution.batch_shape}.")


class AnalyticScoreDifference:
    """Exact v_σ = ∇log p_σ − ∇log q_σ for Gaussians and Gaussian mixtures (ground truth, §3.3).

    Both are smoothed exactly by :func:`smooth` and their scores come from automatic differentiation
    of ``log_prob``.

    Args:
        target: p, a tensorflow-probability Gaussian or Gaussian mixture with event shape [d].
        source: q, the same kinds; or None for a flat source (∇log q_σ = 0: then v is the target score).

    Example:
        >>> tfd = tfp.distributions
        >>> source = tfd.MultivariateNormalDiag([0., 0.], [1., 1.])
        >>> est = gan2flow.AnalyticScoreDifference(gan2flow.toys.grid25(), source)
        >>> v = est(x, 0.3)

    Raises:
        ValueError: unsupported distributions, or x whose last axis does not match d.
    """

    def __init__(self, target, source):
        _check_analytic(target, "target")
        if source is not None:
            _check_analytic(source, "source")
            if target.event_shape != source.event_shape:
                raise ValueError(
                    f"`target` and `source` must have the same event shape, got {target.event_shape} "
                    f"and {source.event_shape}."
                )
        self.target = target
        self.source = source
        self.event_shape = tuple(target.event_shape.as_list())

    def _check_x(self, x):
        if x.shape.rank is not None and (x.shape.rank != 2 or x.shape[-1] != self.event_shape[0]):
            raise ValueError(f"`x` must have shape [batch, {self.event_shape[0]}], got {tuple(x.shape)}.")

    def log_ratio(self, x, sigma):
        """log p_σ(x) − log q_σ(x), shape [batch]."""
        x = tf.convert_to_tensor(x, tf.float32)
        self._check_x(x)
        value = smooth(self.target, sigma).log_prob(x)
        if self.source is not None:
            value = value - smooth(self.source, sigma).log_prob(x)
        return value

    def target_score(self, x, sigma):
        """∇log p_σ(x)."""
        return self._score(self.target, x, sigma)

    def source_score(self, x, sigma):
        """∇log q_σ(x) (zeros for a flat source)."""
        if self.source is None:
            return tf.zeros_like(tf.convert_to_tensor(x, tf.float32))
        return self._score(self.source, x, sigma)

    def _score(self, distribution, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        self._check_x(x)
        smoothed = smooth(distribution, sigma)
        with tf.GradientTape() as tape:
            tape.watch(x)
            log_prob = tf.reduce_sum(smoothed.log_prob(x))
        return tape.gradient(log_prob, x)

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        self._check_x(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(self.log_ratio(x, sigma))
        return tape.gradient(value, x)


# --------------------------------------------------------------------------------------------------
# Discriminators


class DiscriminatorScoreDifference:
    """The GAN route: v_σ(x) ≈ ∇ₓ link(T(x, σ)) for a discriminator trained with an SD-consistent loss.

    At the optimum of the loss on noised data, link(T) = log p_σ/q_σ (shared/SD_FLOW.md §3.2, §4),
    so its input gradient is the score difference. For the logistic loss the link is the identity.

    Args:
        discriminator: a Keras model (or any callable) taking ``x`` — or ``[x, sigma]`` with sigma
            shaped [batch, 1] when σ-conditioned — and returning raw outputs [batch, 1] or [batch].
        loss: the loss it was trained with (a name from ``gan2flow.losses.names()`` or a loss object),
            whose link maps outputs to log-ratios; ``None`` means flow along ∇T itself (for losses with
            no link, such as hinge or Wasserstein: a direction, not an SD estimate).
        sigma_conditioned: whether the model takes σ as a second input; None infers it from the
            model's ``inputs`` (functional and sequential Keras models). A value that contradicts the
            model's ``inputs`` is an error.
        check_gradient: on the first eager call, raise if ∇ₓ link(T) is zero everywhere on the batch (a
            discriminator that ignores its input would flow nowhere, silently). :func:`gan2flow.flow`
            makes that first call on a few rows of its input before compiling; traced calls never check.

    Example:
        >>> est = gan2flow.DiscriminatorScoreDifference(disc, loss="logistic")
        >>> v = est(x, 0.1)

    Raises:
        ValueError: a loss with no link, an undeterminable or contradicted σ-conditioning, several
            outputs or outputs of the wrong shape, x of a sample shape the model does not take, or an
            all-zero input gradient (``check_gradient``).
    """

    def __init__(self, discriminator, loss="logistic", sigma_conditioned=None, *, check_gradient=True):
        if not callable(discriminator):
            raise ValueError(
                f"`discriminator` must be a Keras model or callable, got {type(discriminator).__name__}."
            )
        self.discriminator = discriminator
        if loss is None:
            self.loss = None
        else:
            self.loss = _losses.get(loss)
            if not self.loss.sd_consistent:
                raise ValueError(
                    f"`loss`={self.loss.name!r} has no link from discriminator output to log p/q, so its "
                    "gradient is not a score-difference estimate. Calibrate it with gan2flow.convert(...), "
                    "or pass loss=None to flow along the raw output gradient."
                )
        self.sigma_conditioned = adapters.sigma_conditioning(discriminator, sigma_conditioned)
        self._unchecked_gradient = bool(check_gradient)
        self._sample_shape = adapters.input_sample_shape(discriminator) if adapters.model_arity(discriminator) else None

    def raw_output(self, x, sigma):
        """The discriminator's raw output T(x, σ), shape [batch]."""
        x = tf.convert_to_tensor(x, tf.float32)
        expected = self._sample_shape
        if expected is not None and x.shape.rank is not None and not _checks.shapes_compatible(x.shape[1:], expected):
            raise ValueError(
                f"`x` must be a batch of samples of shape {expected} for this discriminator, got shape "
                f"{tuple(x.shape)}."
            )
        if self.sigma_conditioned:
            sigma_column = tf.fill([tf.shape(x)[0], 1], _sigma_tensor(sigma))
            output = self.discriminator([x, sigma_column], training=False)
        else:
            output = self.discriminator(x, training=False)
        return tf.cast(adapters.output_column(output, "discriminator")[:, 0], tf.float32)

    def log_ratio(self, x, sigma):
        """link(T(x, σ)): the estimated log p_σ(x)/q_σ(x), shape [batch] (T itself when loss is None)."""
        output = self.raw_output(x, sigma)
        return output if self.loss is None else self.loss.log_ratio(output)

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(self.log_ratio(x, sigma))
        gradient = tape.gradient(value, x)
        if gradient is None:
            raise ValueError("`discriminator` output does not depend on its input x (no gradient path).")
        if self._unchecked_gradient and tf.executing_eagerly():  # once; never while tracing (XLA-safe)
            if not bool(tf.reduce_any(tf.not_equal(gradient, 0.0))):
                raise ValueError(
                    "`discriminator` output does not depend on its input x: its gradient is exactly zero at "
                    f"all {int(tf.shape(x)[0])} samples of shape {tuple(x.shape[1:])} (a constant, untrained "
                    "or disconnected model?); pass check_gradient=False if that is intended."
                )
            self._unchecked_gradient = False
        return gradient


# --------------------------------------------------------------------------------------------------
# Denoisers and combinations


class DenoiserScoreDifference:
    """The diffusion link: v_σ(x) = (D_p(x, σ) − D_q(x, σ)) / σ² for posterior-mean denoisers (§3.4).

    Args:
        target_denoiser: callable (x, sigma) -> D_p(x, σ), shaped like x.
        source_denoiser: callable for D_q, or None for a flat source proxy (D_q(x, σ) = x), which turns
            the SD flow into a deterministic diffusion sampler (DDIM/Euler) with
            ``step_sizes=gan2flow.sigmas.diffusion_step_sizes(sigmas)``.
    """

    def __init__(self, target_denoiser, source_denoiser=None):
        for name, value in (("target_denoiser", target_denoiser), ("source_denoiser", source_denoiser)):
            if value is not None and not callable(value):
                raise ValueError(f"`{name}` must be a callable (x, sigma) -> denoised x, got {type(value).__name__}.")
        if target_denoiser is None:
            raise ValueError("`target_denoiser` must be a callable (x, sigma) -> denoised x, got None.")
        self.target_denoiser = target_denoiser
        self.source_denoiser = source_denoiser

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        sigma = _sigma_tensor(sigma)
        target = tf.convert_to_tensor(self.target_denoiser(x, sigma), tf.float32)
        source = x if self.source_denoiser is None else tf.convert_to_tensor(self.source_denoiser(x, sigma), tf.float32)
        return (target - source) / tf.square(sigma)


class ScoreDifferenceSum:
    """The sum of several score-difference estimators (exact telescoping of log-ratios).

    ∇log p_σ − ∇log r_σ = [∇log p_σ − ∇log q_σ] + [∇log q_σ − ∇log r_σ]: chaining estimators whose
    targets and sources meet gives the SD between the outer ends (shared/SD_FLOW.md §7).
    """

    def __init__(self, *estimators):
        if not estimators:
            raise ValueError("`estimators` must name at least one estimator, got none.")
        for index, estimator in enumerate(estimators):
            if not callable(estimator):
                raise ValueError(f"`estimators[{index}]` must be callable (x, sigma) -> v, got "
                                 f"{type(estimator).__name__}.")
        self.estimators = tuple(estimators)

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        total = self.estimators[0](x, sigma)
        for estimator in self.estimators[1:]:
            total = total + estimator(x, sigma)
        return total


def drift_corrected(estimator, initial_samples, *, block_size="auto"):
    """Keep a fixed estimator's source term current as particles move (shared/SD_FLOW.md §7).

    ``estimator`` gives ∇log p_σ − ∇log q₀,σ for the *initial* source q₀. The exact identity
    ∇log p_σ − ∇log q_t,σ = [∇log p_σ − ∇log q₀,σ] + [∇log q₀,σ − ∇log q_t,σ] adds a kernel estimate of
    the second bracket from the starting samples (target) and the current particles (source), with no
    training.

    Args:
        estimator: an SD estimator against q₀ (e.g. a :class:`DiscriminatorScoreDifference`).
        initial_samples: samples of q₀ (typically the particles before the flow), [M, ...].
        block_size: block size for the kernel term (``"auto"``, an int, or None for one block).

    Returns:
        A :class:`ScoreDifferenceSum`.
    """
    return ScoreDifferenceSum(estimator, KernelScoreDifference(initial_samples, source=None, block_size=block_size))


# --------------------------------------------------------------------------------------------------
# Latent space


class ReweightedPriorScore:
    """The latent drift (z, σ) -> ∇_z log[p₀(z) · r_σ(G(z))] = ∇_z [log r_σ(G(z)) + prior_weight · log p₀(z)].

    The score of the generator's latent prior p₀ = N(0, I) reweighted by the density ratio
    r_σ = p_σ/q_σ that ``estimator.log_ratio`` estimates (e.g. a :class:`DiscriminatorScoreDifference`).

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
# Class-conditional models: the labels of the rows, bound


class RowLabels:
    """The integer class labels of the rows an estimator is asked about, bound once for a batch.

    A class-conditional field v_σ(x | y) = ∇ₓ log p_σ(x | y) − ∇ₓ log q_σ(x | y) needs each row's label y. The
    flow engine's contract stays ``(x, sigma) -> v``: the labels live here, in a variable the compiled flow
    reads when it runs (so new labels never retrace), and conditional estimators read the labels of x's rows
    from it. Row i of x has label ``labels[i]``: bind the labels of exactly the batch being flowed (a chunk of a
    larger batch: bind that chunk's labels, as ``GANFlow.refine`` does per chunk). x may also be the first
    rows of the bound batch (the engine probes an estimator on the first rows of x before compiling).

    Args:
        n_classes: the number of classes K (labels in 0 … K − 1).

    Example:
        >>> labels = gan2flow.estimators.RowLabels(10)
        >>> estimator = gan2flow.estimators.StagedScoreDifference(model, weights, sigmas, labels=labels)
        >>> labels.assign(y)                                      # y: [n] ints, the rows of x
        >>> v = estimator(x, 0.5)                                 # v_σ(x | y)
    """

    def __init__(self, n_classes):
        self.n_classes = _checks.positive_int(n_classes, "n_classes")
        self.variable = tf.Variable(tf.zeros([0], tf.int32), shape=tf.TensorShape([None]), trainable=False,
                                    name="row_labels")

    def assign(self, labels):
        """Bind ``labels`` (integers [n], each in 0 … K − 1) to the rows of the next batch; returns self.

        Raises:
            ValueError: not a 1-D array of integer labels in range (naming ``labels``).
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise ValueError(f"`labels` must be a 1-D array of integer class labels, got shape {labels.shape} and "
                             f"dtype {labels.dtype}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"`labels` must lie in 0 … {self.n_classes - 1}, got {int(labels.min())} … "
                             f"{int(labels.max())}.")
        self.variable.assign(labels.astype(np.int32))
        return self

    def __call__(self, x):
        """The labels of x's rows, int32 [batch] (x: the bound batch or its first rows)."""
        rows = tf.shape(x)[0]
        if tf.executing_eagerly() and int(rows) > int(tf.shape(self.variable)[0]):
            raise ValueError(f"`labels`: {int(tf.shape(self.variable)[0])} labels are bound, but x has {int(rows)} "
                             "rows (bind one label per row of the batch before flowing it).")
        return self.variable[:rows]


class LabelledModel:
    """A class-conditional Keras model with its label input bound: ``inputs -> model([*inputs, labels])``.

    ``LabelledModel(generator, labels)(z)`` is G(z, y) and ``LabelledModel(discriminator, labels)([x, sigma])`` is
    T(x, σ, y), y the labels bound in ``labels`` (a :class:`RowLabels`) for the rows of the first input, shaped as
    the model's label input declares (``gan2flow.adapters.label_input``: ``[n]``, ``[n, 1]`` or one-hot). So
    :class:`DiscriminatorScoreDifference` (pass ``sigma_conditioned``) and :class:`ReweightedPriorScore` take
    conditional models unchanged.
    """

    def __init__(self, model, labels):
        if not isinstance(labels, RowLabels):
            raise ValueError(f"`labels` must be a gan2flow.estimators.RowLabels, got {type(labels).__name__}.")
        self.model = model
        self.labels = labels

    def __call__(self, inputs, training=False):
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        label = adapters.label_input(self.model, self.labels(inputs[0]), self.labels.n_classes)
        return self.model([*inputs, label], training=training)


# --------------------------------------------------------------------------------------------------
# A family of fields, one per σ stage


class StagedScoreDifference:
    """A σ-indexed family of discriminator SD estimators: v_σ(x) = ∇ₓ link(T_k(x, σ)), k the stage nearest σ.

    Stage k's discriminator T_k was calibrated at σ_k against the samples *as they are at stage k* of a
    flow (shared/SD_FLOW.md §9.2): its gradient is ∇log p_σk − ∇log q_k,σk, the SD of the current particles,
    with no drift correction. All stages share one architecture, ``discriminator``; stage k is that model
    with the trainable weights ``stage_weights[i][k]`` (its non-trainable ones are shared). The stage is
    chosen in-graph from σ (the nearest σ_k in log scale) and its weights gathered into a stateless call,
    so one compiled flow loop, of the size of one model, holds every stage.

    Args:
        discriminator: a Keras model ``[x, sigma] -> [batch, 1]`` (the shared architecture).
        stage_weights: one array (or variable) per trainable variable of ``discriminator`` (in
            ``discriminator.trainable_variables`` order), each shaped ``[K, *variable.shape]``.
        sigmas: the K stage levels σ_k.
        loss: the loss the stages were trained with (its link maps outputs to log-ratios).
        labels: a :class:`RowLabels` for class-conditional stages (``[x, sigma, label] -> logit``): the field is
            then v_σ(x | y) with y the labels bound there for x's rows; None: unconditional.

    Raises:
        ValueError: stage weights that do not fit the model, or not one σ per stage.
    """

    def __init__(self, discriminator, stage_weights, sigmas, loss="logistic", labels=None):
        sigmas = np.asarray(sigmas, np.float64).reshape(-1)
        variables = discriminator.trainable_variables
        stage_weights = list(stage_weights)
        if len(stage_weights) != len(variables):
            raise ValueError(f"`stage_weights` must hold one array per trainable variable of the discriminator "
                             f"({len(variables)}), got {len(stage_weights)}.")
        for weight, variable in zip(stage_weights, variables, strict=True):
            if tuple(weight.shape) != (len(sigmas),) + tuple(variable.shape):
                raise ValueError(f"`stage_weights` for {variable.path} must have shape "
                                 f"{(len(sigmas),) + tuple(variable.shape)} (one per stage), got "
                                 f"{tuple(weight.shape)}.")
        if len(sigmas) == 0 or np.any(sigmas <= 0):
            raise ValueError(f"`sigmas` must give one positive σ per stage, got {sigmas.tolist()}.")
        self.discriminator = discriminator
        self.stage_weights = stage_weights
        self.sigmas = sigmas
        self.loss = _losses.get(loss)
        if labels is not None and not isinstance(labels, RowLabels):
            raise ValueError(f"`labels` must be a gan2flow.estimators.RowLabels or None, got {type(labels).__name__}.")
        self.labels = labels
        self.sigma_conditioned = adapters.sigma_conditioning(discriminator, labelled=labels is not None)
        self._log_sigmas = tf.constant(np.log(sigmas), tf.float32)

    @staticmethod
    def stack(models):
        """The ``stage_weights`` of K models of one architecture: their trainable weights stacked per variable."""
        return [np.stack(values) for values in zip(*[[np.asarray(v) for v in model.trainable_variables]
                                                     for model in models], strict=True)]

    def stage_index(self, sigma):
        """The index of the stage whose σ_k is nearest ``sigma`` (in log scale), an int32 scalar tensor."""
        distance = tf.abs(self._log_sigmas - tf.math.log(_sigma_tensor(sigma)))
        return tf.cast(tf.argmin(distance), tf.int32)

    def log_ratio(self, x, sigma):
        """link(T_k(x, σ)): the estimated log p_σ(x)/q_k,σ(x), shape [batch]."""
        x = tf.convert_to_tensor(x, tf.float32)
        index = self.stage_index(sigma)
        weights = [tf.gather(tf.convert_to_tensor(w, tf.float32), index) for w in self.stage_weights]
        frozen = [v.value for v in self.discriminator.non_trainable_variables]
        inputs = [x, tf.fill([tf.shape(x)[0], 1], _sigma_tensor(sigma))] if self.sigma_conditioned else x
        if self.labels is not None:
            inputs = (inputs if self.sigma_conditioned else [x]) + [
                adapters.label_input(self.discriminator, self.labels(x), self.labels.n_classes)]
        output, _ = self.discriminator.stateless_call(weights, frozen, inputs, training=False)
        return self.loss.log_ratio(tf.cast(adapters.output_column(output, "discriminator")[:, 0], tf.float32))

    def __call__(self, x, sigma):
        x = tf.convert_to_tensor(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(self.log_ratio(x, sigma))
        return tape.gradient(value, x)
