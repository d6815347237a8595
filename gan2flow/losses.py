"""GAN losses and their links: from a discriminator's raw output to the log density ratio.

A discriminator trained with an *SD-consistent* loss has an optimum whose raw output is a known
monotone function of the ratio ``r = p/q`` of the real (``p``) and fake (``q``) densities. The loss's
**link** maps the raw output back to ``log r``; the gradient of the link is then the score difference
``∇log p − ∇log q`` that gan2flow flows along (SD_FLOW.md §3.2, §4).

Conventions used throughout:

* ``real_output`` / ``fake_output`` are raw outputs of the discriminator network, shaped ``[batch]``
  or ``[batch, 1]``. For the f-GANs the raw output is ``v`` and the loss applies the output
  activation ``T = g_f(v)`` itself (Nowozin et al. 2016, Table 2); for the other losses ``T`` is the
  raw output.
* The discriminator **minimises** ``discriminator_loss``; the generator minimises ``generator_loss``.
* The f-GAN discriminator loss is ``−(E_p[T(v)] − E_q[f*(T(v))])``, written in closed, numerically
  stable forms of ``v`` (no ``log`` of a difference, no ``exp`` that cancels).

Link table (``r = p/q``; ``v`` the raw output):

=============== ======================== ===================== ======================= =========
loss            activation T(v)          optimum T*            link: log r =           SD-cons.
=============== ======================== ===================== ======================= =========
logistic        T = v (logit)            log r                 T                       yes
least_squares   T = v                    r / (1 + r)           log T − log(1 − T)      yes
kl              T = v                    1 + log r             v − 1                   yes
reverse_kl      T = −exp(−v)             −1/r                  v                       yes
jensen_shannon  T = log 2 − softplus(−v) log(2r / (1 + r))     v                       yes
hellinger       T = 1 − exp(−v)          1 − r^(−1/2)          2v                      yes
pearson         T = v                    2(r − 1)              log(1 + v/2), v > −2    yes
hinge           T = v                    sign(r − 1)           none                    no
wasserstein     T = v                    Kantorovich potential none                    no
=============== ======================== ===================== ======================= =========

Example::

    from gan2flow import losses
    loss = losses.get("logistic")
    d_loss = loss.discriminator_loss(real_logits, fake_logits)
    log_r = loss.log_ratio(logits)              # the optimal logit *is* log p/q

Reference: S. Nowozin, B. Cseke, R. Tomioka, "f-GAN: Training Generative Neural Samplers using
Variational Divergence Minimization", NeurIPS 2016 (Table 2: conjugates f* and activations g_f).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import tensorflow as tf

from gan2flow import _checks

__all__ = ["Loss", "names", "get", "gradient_penalty", "r1_penalty", "denoising_score_matching",
           "GENERATOR_OBJECTIVES"]

#: Generator objectives accepted by :meth:`Loss.generator_loss`.
GENERATOR_OBJECTIVES = ("minimax", "non_saturating", "logit")

_LOG2 = math.log(2.0)
# Clip for links with a bounded domain (least squares: T in (0, 1); Pearson: 1 + v/2 > 0). With
# eps = 1e-6 the link saturates at |log r| ≈ log(1/eps) ≈ 13.8, far beyond the log ratios a
# float32 discriminator resolves; 1 − eps is still exactly representable apart from 1 in float32
# (its spacing below 1 is 6e-8).
_LINK_EPS = 1e-6
# Added under the square root of the squared gradient norm in `gradient_penalty`, so the penalty
# stays differentiable (no 0/0) where a critic's input gradient vanishes; shifts the norm by
# at most 1e-6 (sqrt(1e-12)).
_NORM_EPS = 1e-12


def _batch_outputs(output, name):
    """A discriminator's raw output as a float32 ``[batch]`` tensor (accepts ``[batch, 1]``)."""
    tensor = _checks.as_float_tensor(output, name, min_rank=1)
    rank = tensor.shape.rank
    if rank is None:
        return tf.reshape(tensor, [-1])
    if rank > 2 or (rank == 2 and tensor.shape[1] not in (1, None)):
        raise ValueError(
            f"`{name}` must be a discriminator output shaped [batch] or [batch, 1], "
            f"got shape {tuple(tensor.shape)}."
        )
    return tf.reshape(tensor, [-1])


@dataclasses.dataclass(frozen=True)
class Loss:
    """A GAN loss: its discriminator and generator objectives, output activation and link.

    Build one with :func:`get`; the fields hold the per-loss formulas, all as functions of the raw
    output ``v`` (float32 tensors, any shape, elementwise):

    Attributes:
      name: the registry name, e.g. ``"logistic"``.
      sd_consistent: whether the optimal raw output is an invertible function of ``log p/q``
        (then :meth:`log_ratio` and :meth:`optimal_output` are exact inverses).
      description: one line.
      real_term_fn: per-sample discriminator loss on a real sample, ``v -> loss``.
      fake_term_fn: per-sample discriminator loss on a fake sample, ``v -> loss``.
      activation_fn: ``v -> T``, the f-GAN output activation ``g_f`` (identity otherwise).
      link_fn: ``v -> log r`` or ``None`` when the loss has no link.
      inverse_link_fn: ``log r -> v*`` (the closed-form optimum) or ``None``.
      non_saturating_fn: the per-sample non-saturating generator loss, ``v -> loss``.
      no_link_reason: why there is no link (used in error messages), ``None`` if there is one.
    """

    name: str
    sd_consistent: bool
    description: str
    real_term_fn: Callable = dataclasses.field(repr=False)
    fake_term_fn: Callable = dataclasses.field(repr=False)
    activation_fn: Callable = dataclasses.field(repr=False)
    non_saturating_fn: Callable = dataclasses.field(repr=False)
    link_fn: Callable | None = dataclasses.field(default=None, repr=False)
    inverse_link_fn: Callable | None = dataclasses.field(default=None, repr=False)
    no_link_reason: str | None = dataclasses.field(default=None, repr=False)

    # ----------------------------------------------------------------------------------------
    # Discriminator
    # ----------------------------------------------------------------------------------------
    def per_sample_discriminator_loss(self, real_output, fake_output):
        """Per-sample discriminator loss terms on real and on fake samples.

        ``discriminator_loss(real, fake) == mean(real_terms) + mean(fake_terms)``. Use the terms with
        ``tf.nn.compute_average_loss`` under a distribution strategy.

        Args:
          real_output: raw discriminator outputs on real samples, ``[batch_real]`` or
            ``[batch_real, 1]``.
          fake_output: raw discriminator outputs on fake samples, ``[batch_fake]`` or
            ``[batch_fake, 1]``.

        Returns:
          ``(real_terms, fake_terms)``, float32 tensors shaped ``[batch_real]`` and ``[batch_fake]``.

        Raises:
          ValueError: if an output is not shaped ``[batch]`` / ``[batch, 1]`` or (eagerly) is not
            finite.
        """
        real = _batch_outputs(real_output, "real_output")
        fake = _batch_outputs(fake_output, "fake_output")
        return self.real_term_fn(real), self.fake_term_fn(fake)

    def discriminator_loss(self, real_output, fake_output):
        """Scalar discriminator loss, ``mean(real_terms) + mean(fake_terms)``; minimised by D.

        See :func:`get` for the per-loss formulas.

        Args:
          real_output: raw discriminator outputs on real samples, ``[batch]`` or ``[batch, 1]``.
          fake_output: raw discriminator outputs on fake samples, ``[batch]`` or ``[batch, 1]``.

        Returns:
          A float32 scalar.

        Raises:
          ValueError: as :meth:`per_sample_discriminator_loss`.
        """
        real_terms, fake_terms = self.per_sample_discriminator_loss(real_output, fake_output)
        return tf.reduce_mean(real_terms) + tf.reduce_mean(fake_terms)

    # ----------------------------------------------------------------------------------------
    # Generator
    # ----------------------------------------------------------------------------------------
    def generator_loss(self, fake_output, objective="non_saturating"):
        """Per-sample generator loss (minimised by the generator).

        Objectives:

        * ``"minimax"``: ``−fake_term(v)``, the generator plays the discriminator's game directly
          (logistic: ``log(1 − D) = −softplus(T)``; f-GAN: ``−f*(T(v))``; Wasserstein: ``−T``).
        * ``"non_saturating"``: the real-side term applied to fakes, which keeps gradients alive
          where the discriminator confidently rejects fakes (logistic: ``softplus(−T) = −log D``;
          least squares: ``(T − 1)²``; f-GAN: ``−T(v)``, Nowozin et al. §3.2; Wasserstein: ``−T``).
          Hinge uses ``−T`` (as in SAGAN/BigGAN): its real-side term ``relu(1 − T)`` would be flat
          once ``T ≥ 1``.
        * ``"logit"``: ``−log_ratio(v)``, which moves samples along exactly the SD flow at the
          optimal discriminator (SD_FLOW.md §5). Losses with no link use ``−T`` (the raw output).

        Args:
          fake_output: raw discriminator outputs on generated samples, ``[batch]`` or ``[batch, 1]``.
          objective: one of ``"minimax"``, ``"non_saturating"``, ``"logit"``.

        Returns:
          A float32 tensor ``[batch]``; average it (or pass it to ``tf.nn.compute_average_loss``).

        Raises:
          ValueError: for an unknown objective or a badly shaped output.
        """
        _checks.one_of(objective, "objective", GENERATOR_OBJECTIVES)
        fake = _batch_outputs(fake_output, "fake_output")
        if objective == "minimax":
            return -self.fake_term_fn(fake)
        if objective == "non_saturating":
            return self.non_saturating_fn(fake)
        if self.link_fn is None:
            return -fake
        return -self.link_fn(fake)

    # ----------------------------------------------------------------------------------------
    # Link
    # ----------------------------------------------------------------------------------------
    def output_activation(self, raw):
        """The output activation ``T = g_f(v)`` of an f-GAN (identity for the other losses).

        Args:
          raw: raw discriminator output ``v``, any shape.

        Returns:
          ``T``, float32, the same shape.
        """
        return self.activation_fn(_checks.as_float_tensor(raw, "raw"))

    def log_ratio(self, output):
        """The link: raw discriminator output -> estimated ``log p/q`` (exact at the optimum).

        Args:
          output: raw discriminator output, any shape.

        Returns:
          float32 ``log r``, the same shape. Links with a bounded domain clip their input first:
          least squares clips ``T`` to ``[1e-6, 1 − 1e-6]``, Pearson clips ``v/2`` to
          ``[−1 + 1e-6, ∞)``, so ``|log r| ≲ 13.8`` there (and the gradient is zero outside).

        Raises:
          ValueError: for a loss with no link (hinge, Wasserstein).
        """
        if self.link_fn is None:
            raise ValueError(self.no_link_reason)
        return self.link_fn(_checks.as_float_tensor(output, "output"))

    def optimal_output(self, log_ratio):
        """The closed-form optimal raw output as a function of ``log r`` (the inverse link).

        For an f-GAN this is the raw network output ``v*`` (not ``T*``). For hinge it is
        ``sign(log r)``: where both densities are positive the hinge optimum is exactly ``±1``
        (any ``T ≥ 1`` is optimal only where ``q = 0``, any ``T ≤ −1`` only where ``p = 0``, and any
        ``T ∈ [−1, 1]`` where ``p = q``; ``sign(0) = 0`` is one of those).

        Args:
          log_ratio: ``log p/q``, any shape.

        Returns:
          float32 optimal raw output, the same shape.

        Raises:
          ValueError: for the Wasserstein loss, whose optimal critic is not a pointwise function of
            the density ratio.
        """
        if self.inverse_link_fn is None:
            raise ValueError(
                f"the {self.name} loss has no pointwise optimal output: its optimal critic is a "
                "Kantorovich potential, set by the whole transport problem, not by p/q at a point."
            )
        return self.inverse_link_fn(_checks.as_float_tensor(log_ratio, "log_ratio"))


# --------------------------------------------------------------------------------------------
# Per-loss formulas, all elementwise in the raw output v.
# --------------------------------------------------------------------------------------------
def _identity(v):
    return v


def _negate(v):
    return -v


def _clipped_logit(t):
    t = tf.clip_by_value(t, _LINK_EPS, 1.0 - _LINK_EPS)
    return tf.math.log(t) - tf.math.log1p(-t)


def _pearson_link(v):
    return tf.math.log1p(tf.maximum(0.5 * v, _LINK_EPS - 1.0))


def _no_link(name, optimum):
    return (
        f"the {name} loss has no link: its optimum is {optimum}, which carries no information about "
        "log p/q, so there is no log-ratio to recover. Use `raw_output` (flow along the raw "
        "discriminator output: DiscriminatorScoreDifference(..., loss=None)) and measure it with "
        "the loss comparison (`gan2flow compare`)."
    )


_LOSSES = {
    "logistic": Loss(
        name="logistic",
        sd_consistent=True,
        description="Binary cross-entropy on logits (minimax / non-saturating GAN); the optimal "
        "logit is log p/q.",
        # −log D(real) = softplus(−T);  −log(1 − D(fake)) = softplus(T).
        real_term_fn=lambda v: tf.math.softplus(-v),
        fake_term_fn=tf.math.softplus,
        activation_fn=_identity,
        non_saturating_fn=lambda v: tf.math.softplus(-v),
        link_fn=_identity,
        inverse_link_fn=_identity,
    ),
    "least_squares": Loss(
        name="least_squares",
        sd_consistent=True,
        description="Least squares (LSGAN) with targets 1 real / 0 fake; optimum p/(p+q), weak "
        "where one density dominates.",
        real_term_fn=lambda v: tf.square(v - 1.0),
        fake_term_fn=tf.square,
        activation_fn=_identity,
        non_saturating_fn=lambda v: tf.square(v - 1.0),
        link_fn=_clipped_logit,
        inverse_link_fn=tf.math.sigmoid,
    ),
    "kl": Loss(
        name="kl",
        sd_consistent=True,
        description="f-GAN KL: T = v, f*(t) = exp(t − 1); optimum v = 1 + log r.",
        # −T = −v;  f*(T) = exp(v − 1).
        real_term_fn=_negate,
        fake_term_fn=lambda v: tf.exp(v - 1.0),
        activation_fn=_identity,
        non_saturating_fn=_negate,
        link_fn=lambda v: v - 1.0,
        inverse_link_fn=lambda log_r: log_r + 1.0,
    ),
    "reverse_kl": Loss(
        name="reverse_kl",
        sd_consistent=True,
        description="f-GAN reverse KL: T = −exp(−v), f*(t) = −1 − log(−t); optimum v = log r.",
        # −T = exp(−v);  f*(T) = −1 − log(exp(−v)) = v − 1.
        real_term_fn=lambda v: tf.exp(-v),
        fake_term_fn=lambda v: v - 1.0,
        activation_fn=lambda v: -tf.exp(-v),
        non_saturating_fn=lambda v: tf.exp(-v),
        link_fn=_identity,
        inverse_link_fn=_identity,
    ),
    "jensen_shannon": Loss(
        name="jensen_shannon",
        sd_consistent=True,
        description="f-GAN Jensen-Shannon: T = log 2 − softplus(−v), f*(t) = −log(2 − e^t); "
        "optimum v = log r.",
        # −T = softplus(−v) − log 2;  f*(T) = −log(2 − 2σ(v)) = softplus(v) − log 2.
        real_term_fn=lambda v: tf.math.softplus(-v) - _LOG2,
        fake_term_fn=lambda v: tf.math.softplus(v) - _LOG2,
        activation_fn=lambda v: _LOG2 - tf.math.softplus(-v),
        non_saturating_fn=lambda v: tf.math.softplus(-v) - _LOG2,
        link_fn=_identity,
        inverse_link_fn=_identity,
    ),
    "hellinger": Loss(
        name="hellinger",
        sd_consistent=True,
        description="f-GAN squared Hellinger: T = 1 − exp(−v), f*(t) = t/(1 − t); optimum "
        "v = (log r)/2.",
        # −T = exp(−v) − 1;  f*(T) = (1 − e^{−v}) / e^{−v} = exp(v) − 1.
        real_term_fn=lambda v: tf.exp(-v) - 1.0,
        fake_term_fn=lambda v: tf.exp(v) - 1.0,
        activation_fn=lambda v: 1.0 - tf.exp(-v),
        non_saturating_fn=lambda v: tf.exp(-v) - 1.0,
        link_fn=lambda v: 2.0 * v,
        inverse_link_fn=lambda log_r: 0.5 * log_r,
    ),
    "pearson": Loss(
        name="pearson",
        sd_consistent=True,
        description="f-GAN Pearson chi-squared: T = v, f*(t) = t²/4 + t; optimum v = 2(r − 1).",
        # −T = −v;  f*(T) = v²/4 + v.
        real_term_fn=_negate,
        fake_term_fn=lambda v: 0.25 * tf.square(v) + v,
        activation_fn=_identity,
        non_saturating_fn=_negate,
        link_fn=_pearson_link,
        inverse_link_fn=lambda log_r: 2.0 * tf.math.expm1(log_r),
    ),
    "hinge": Loss(
        name="hinge",
        sd_consistent=False,
        description="Hinge loss relu(1 − T) real + relu(1 + T) fake; optimum sign(p − q), no link.",
        real_term_fn=lambda v: tf.nn.relu(1.0 - v),
        fake_term_fn=lambda v: tf.nn.relu(1.0 + v),
        activation_fn=_identity,
        non_saturating_fn=_negate,
        link_fn=None,
        inverse_link_fn=tf.math.sign,
        no_link_reason=_no_link(
            "hinge", "sign(p - q) (saturated: zero gradient almost everywhere)"
        ),
    ),
    "wasserstein": Loss(
        name="wasserstein",
        sd_consistent=False,
        description="Wasserstein critic mean(T_fake) − mean(T_real) (add `gradient_penalty`); "
        "no link.",
        real_term_fn=_negate,
        fake_term_fn=_identity,
        activation_fn=_identity,
        non_saturating_fn=_negate,
        link_fn=None,
        inverse_link_fn=None,
        no_link_reason=_no_link(
            "wasserstein",
            "a Kantorovich potential (a transport direction, not a function of p/q)",
        ),
    ),
}


def names():
    """Names of the available losses, in a stable order.

    Returns:
      A new list of strings: ``logistic``, ``least_squares``, ``kl``, ``reverse_kl``,
      ``jensen_shannon``, ``hellinger``, ``pearson``, ``hinge``, ``wasserstein``.
    """
    return list(_LOSSES)


def get(name):
    """Look up a loss by name (a :class:`Loss` is returned unchanged).

    Discriminator losses (minimised; ``v`` the raw output, means over each batch):

    * logistic: ``mean softplus(−v_real) + mean softplus(v_fake)`` (BCE on logits).
    * least_squares: ``mean (v_real − 1)² + mean v_fake²``.
    * f-GANs: ``−mean T(v_real) + mean f*(T(v_fake))`` with ``T = g_f(v)`` from the link table.
    * hinge: ``mean relu(1 − v_real) + mean relu(1 + v_fake)``.
    * wasserstein: ``mean v_fake − mean v_real`` (add :func:`gradient_penalty` separately).

    Args:
      name: a name from :func:`names`, or a :class:`Loss`.

    Returns:
      The :class:`Loss`.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
      TypeError: for anything that is neither a string nor a :class:`Loss`.
    """
    if isinstance(name, Loss):
        return name
    # Messages say `loss`: every public caller takes the loss as an argument named `loss`.
    if not isinstance(name, str):
        raise TypeError(f"`loss` must be a loss name or a Loss, got {type(name).__name__}.")
    _checks.one_of(name, "loss", _LOSSES)
    return _LOSSES[name]


# --------------------------------------------------------------------------------------------
# Regularisers
# --------------------------------------------------------------------------------------------
def _input_gradient_sq_norms(discriminator_fn, x):
    """Per-sample ``‖∇ₓ D(x)‖²`` for a batch ``x`` (batch first, any rank), shape ``[batch]``."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = discriminator_fn(x)
        # Each output depends only on its own sample, so the gradient of the sum is the batch of
        # per-sample gradients.
        total = tf.reduce_sum(tf.cast(output, tf.float32))
    grads = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = tf.reshape(grads, [tf.shape(x)[0], -1])
    return tf.reduce_sum(tf.square(grads), axis=1)


def _check_discriminator_fn(discriminator_fn):
    if not callable(discriminator_fn):
        raise TypeError(
            f"`discriminator_fn` must be callable (x -> output), got {type(discriminator_fn).__name__}."
        )


def gradient_penalty(discriminator_fn, real, fake, *, target=1.0, seed=None):
    """WGAN-GP gradient penalty ``mean((‖∇ₓ D(x̂)‖ − target)²)`` at random interpolates.

    ``x̂ = real + α (fake − real)`` with one ``α ~ U[0, 1)`` per sample (Gulrajani et al. 2017).
    Multiply by the penalty weight (λ = 10 in the paper) and add it to the discriminator loss.
    The norm is ``sqrt(‖∇‖² + 1e-12)`` so that the penalty stays differentiable where the gradient
    vanishes. The discriminator must treat samples independently (no batch statistics).

    Args:
      discriminator_fn: callable ``x -> output`` (``[batch]`` or ``[batch, 1]``), e.g. a Keras model.
      real: real samples, ``[batch, ...]``.
      fake: fake samples, the same shape as ``real``.
      target: the gradient norm to pull towards (1 for WGAN-GP; 0 gives a zero-centred penalty).
      seed: ``None`` (draw from the global generator) or an int for a reproducible
        ``tf.random.stateless_uniform`` (Philox) draw, the same eagerly and under XLA.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if the shapes differ, ``target`` is negative, or ``seed`` is not an int.
      TypeError: if ``discriminator_fn`` is not callable.
    """
    _check_discriminator_fn(discriminator_fn)
    real = _checks.as_float_tensor(real, "real", min_rank=1)
    fake = _checks.as_float_tensor(fake, "fake", min_rank=1)
    if real.shape != fake.shape and real.shape.is_fully_defined() and fake.shape.is_fully_defined():
        raise ValueError(
            f"`real` and `fake` must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}."
        )
    _checks.same_trailing_shape(real, fake, "real", "fake")
    target = _checks.positive_float(target, "target", allow_zero=True)
    alpha_shape = tf.concat([tf.shape(real)[:1], tf.ones([tf.rank(real) - 1], tf.int32)], axis=0)
    if seed is None:
        alpha = tf.random.uniform(alpha_shape, dtype=tf.float32)
    else:
        seed = _checks.positive_int(seed, "seed", allow_zero=True)
        # Philox explicitly: the default "auto_select" picks a different generator under XLA, so
        # the same seed would give different interpolates eagerly and compiled.
        alpha = tf.random.stateless_uniform(
            alpha_shape, seed=[seed, 0], dtype=tf.float32, alg="philox"
        )
    interpolates = real + alpha * (fake - real)
    norms = tf.sqrt(_input_gradient_sq_norms(discriminator_fn, interpolates) + _NORM_EPS)
    return tf.reduce_mean(tf.square(norms - target))


def r1_penalty(discriminator_fn, real, weights=None):
    """R1 penalty ``mean_i w_i ‖∇ₓ D(real_i)‖²`` on real samples (Mescheder et al. 2018: ``w_i = 1``).

    The paper's regulariser is ``(γ/2) · r1_penalty``; the weight is left to the caller. The
    discriminator must treat samples independently (no batch statistics).

    Args:
      discriminator_fn: callable ``x -> output`` (``[batch]`` or ``[batch, 1]``).
      real: real samples, ``[batch, ...]``.
      weights: None (all 1) or per-sample weights ``w_i`` (anything reshapeable to ``[batch]``), e.g.
        ``σ_i⁴`` to penalise ``‖σ_i² ∇ₓD‖²``, the size of the denoiser difference rather than of the SD.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if ``real`` has no batch axis or (eagerly) is not finite.
      TypeError: if ``discriminator_fn`` is not callable.
    """
    _check_discriminator_fn(discriminator_fn)
    real = _checks.as_float_tensor(real, "real", min_rank=1)
    norms = _input_gradient_sq_norms(discriminator_fn, real)
    if weights is not None:
        norms = norms * tf.reshape(tf.cast(weights, tf.float32), [-1])
    return tf.reduce_mean(norms)


def denoising_score_matching(log_density_fn, x, noise, sigma):
    """Denoising score matching ``mean_i ‖σ_i ∇ₓ f(x_i) + n_i‖² / d`` at ``x_i = x0_i + σ_i n_i``.

    For ``x0 ~ p`` and ``n ~ N(0, I)`` this is minimised over f exactly when ``∇ₓ f = ∇log p_σ``
    (Vincent 2011; ``E[n | x] = −σ ∇log p_σ(x)`` by Tweedie), with minimum
    ``1 − σ² E‖∇log p_σ(x)‖²/d`` (for one σ): equal to ``E‖σ(∇f − ∇log p_σ)‖²/d`` plus that constant,
    i.e. the score error weighted by σ² (EDM's weighting of the denoiser error, divided by σ²). The
    squared norm is divided by ``d`` (features per sample) so one weight means the same in every dimension.

    Args:
      log_density_fn: callable ``x -> f(x)`` (``[batch]`` or ``[batch, 1]``), an unnormalised log-density
        whose input gradient is the score estimate; it must treat samples independently.
      x: the noised samples ``x0 + σ n``, ``[batch, ...]``.
      noise: the ``n`` that noised them, shaped like x.
      sigma: per-sample noise levels (anything reshapeable to ``[batch]``) or a scalar.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if ``x`` has no batch axis or ``noise`` has another shape.
      TypeError: if ``log_density_fn`` is not callable.

    Example::

        # x0 ~ N(0, I), σ = 1: f = −‖x‖²/4 is the exact log-density of p_σ = N(0, 2I) (up to a constant),
        # and the loss is then its minimum 1/(1 + σ²) = 0.5 (up to Monte Carlo error)
        loss = denoising_score_matching(lambda x: -tf.reduce_sum(x**2, 1) / 4.0, x0 + n, n, 1.0)
    """
    if not callable(log_density_fn):
        raise TypeError(f"`log_density_fn` must be callable (x -> f(x)), got {type(log_density_fn).__name__}.")
    x = _checks.as_float_tensor(x, "x", min_rank=1)
    noise = tf.cast(noise, tf.float32)
    if noise.shape.is_fully_defined() and x.shape.is_fully_defined() and noise.shape != x.shape:
        raise ValueError(f"`noise` must be shaped like `x` {tuple(x.shape)}, got {tuple(noise.shape)}.")
    with tf.GradientTape() as tape:
        tape.watch(x)
        # Each output depends only on its own sample: the gradient of the sum is the per-sample gradient.
        total = tf.reduce_sum(tf.cast(log_density_fn(x), tf.float32))
    scores = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    batch = tf.shape(x)[0]
    scores = tf.reshape(scores, [batch, -1])
    sigma = tf.cast(sigma, tf.float32)
    sigma = tf.reshape(sigma, [-1, 1]) if sigma.shape.rank else sigma
    residuals = sigma * scores + tf.reshape(noise, [batch, -1])
    return tf.reduce_mean(tf.square(residuals))
