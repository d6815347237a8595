"""Train GANs whose discriminators are score-difference estimators: :class:`SDGAN`.

The discriminator ``T(x, σ)`` is trained on noised real samples ``y + σn`` against noised generated
samples ``G(z) + σn'`` with the same σ for the paired real and fake sample (σ log-uniform over
``sigma_range``, one per pair), so at the optimum of an SD-consistent loss ``link(T(x, σ))`` is
``log p_σ(x)/q_σ(x)`` and its input gradient is the score difference v_σ (shared/SD_FLOW.md §2, §3.2,
§4). The generator is then trained with one of the objectives of §5, or frozen
(``generator_objective=None``: discriminator-only training, used to calibrate a discriminator
against a fixed generator).

Generator objectives (x = G(z), σ drawn per sample, ``T`` evaluated at the clean sample x):

* ``"minimax"``: minimise ``−fake_term(T(x, σ))`` (logistic: ``log(1 − D)``).
* ``"non_saturating"``: minimise the real-side term on fakes (logistic: ``−log D``).
* ``"logit"``: minimise ``−link(T(x, σ))``; its gradient moves x along exactly ``v_σ`` at the optimal
  discriminator: backprop through this loss *is* one SD-flow step followed by a regression.
* ``"flow_regression"``: the explicit form: run ``flow_steps`` Euler steps
  ``x ← x + η ∇ₓ link(T(x, σ))`` with ``η = flow_step_scale · σ²`` along the current discriminator,
  then minimise ``λ(σ)·½‖G(z) − stopgrad(x')‖²`` (summed over features, averaged over the batch) with
  ``λ(σ) = 1/(flow_steps·η)`` (``regression_weighting="inverse_step"``, the default) or 1 (``"uniform"``).
  With ``1/(kη)`` the generator's gradient is ``−Jᵀ`` times the mean SD along the k flow steps, the same
  size at every σ as the ``"logit"`` objective's ``−Jᵀ v``; with 1 it is ``−Jᵀ kη v̄ ∝ σ² v̄``, which
  weights the large-σ (blurred) levels by up to ``(σ_max/σ_min)²`` more than the small ones
  (docs/losses.md, "flow_regression").
* ``None``: discriminator only; the generator is never differentiated or updated.

Distribution: every loss is a per-sample loss averaged with ``tf.nn.compute_average_loss`` over the
global batch (the sum of the replicas' local batch sizes, so uneven last batches are exact), random
numbers come from a ``keras.random.SeedGenerator`` folded with the replica id (or, with
``replica_invariant_noise=True``, keyed by the global sample index), and the optimizers are built in
:meth:`SDGAN.compile`, so ``fit`` works under ``tf.distribute.MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` (create and compile the model inside ``strategy.scope()``; see
docs/distributed.md).

Example::

    import keras, gan2flow
    from gan2flow import models, training
    gan = training.SDGAN(models.mlp_generator(8, (2,)), models.mlp_discriminator((2,)),
                         loss="logistic", generator_objective="logit", seed=0)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    gan.fit(real, batch_size=256, epochs=10)
    samples = gan.generate(1000, seed=1)
    v = gan.score_difference()(samples, 0.1)        # ∇ₓ link(T(x, 0.1)), shaped like samples
"""
from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, adapters
from gan2flow import estimators as _estimators
from gan2flow import losses as _losses
from gan2flow import models as _models
from gan2flow import noise as _noise

__all__ = ["SDGAN", "GENERATOR_OBJECTIVES", "PENALTIES", "REGRESSION_WEIGHTINGS", "SIGMA_SAMPLINGS"]

#: Accepted values of ``SDGAN(generator_objective=...)`` besides ``None``.
GENERATOR_OBJECTIVES = ("minimax", "non_saturating", "logit", "flow_regression")
#: Accepted values of ``SDGAN(regression_weighting=...)`` (the ``"flow_regression"`` objective).
REGRESSION_WEIGHTINGS = ("inverse_step", "uniform")
#: Accepted values of ``SDGAN(penalty=...)`` besides ``None``.
PENALTIES = ("r1", "r1_scaled", "gradient_penalty")
# How σ is drawn on sigma_range: log σ = log σ_min + t(u)·log(σ_max/σ_min), u ~ U(0, 1), with t(u) = u
# ("log_uniform"), sin²(πu/2) ("log_ends": the arcsine law, more mass at both ends of the range) or u²
# ("log_small": more mass at small σ).
SIGMA_SAMPLINGS = ("log_uniform", "log_ends", "log_small")
# Default penalty weights: WGAN-GP's λ = 10 (Gulrajani et al. 2017); for R1 the weight multiplies
# mean ‖∇ₓT‖² directly, i.e. γ/2 = 1 in Mescheder et al. (2018)'s notation (γ = 2; they use 0.1-10).
_DEFAULT_PENALTY_WEIGHT = {"r1": 1.0, "r1_scaled": 1.0, "gradient_penalty": 10.0}
# Objectives whose generator loss needs a link (a log-ratio), and which sd-inconsistent losses may use.
_NEEDS_LINK = ("logit", "flow_regression")
_ALLOWED_WITHOUT_LINK = {"hinge": ("non_saturating",), "wasserstein": ("minimax", "non_saturating")}


def _sigma_range(value):
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`sigma_range` must be a pair (sigma_min, sigma_max), got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high < low or (low == 0 and high > 0):
        raise ValueError(
            "`sigma_range` must be (sigma_min, sigma_max) with 0 < sigma_min <= sigma_max (σ is drawn "
            f"log-uniformly), or (0, 0) for noise-free training; got {value!r}."
        )
    return low, high


def _replica_id():
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: not inside strategy.run
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def _all_reduce_sum(value):
    """Sum a per-replica value over replicas (the identity without a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)




def _global_rows(batch):
    """(first global row of this replica's batch, global batch size) from every replica's local size.

    Keras splits each global batch into contiguous per-replica slices in replica order (also unevenly,
    for a last partial batch, where some replicas may get no rows), so the true global batch is the sum
    of the local sizes, not ``batch × replicas``.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.constant(0, tf.int32), batch
    # An all-reduce of one-hot sizes (float32: exact below 2^24, and every cross-device op supports it).
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    one_hot = tf.one_hot(replica, context.num_replicas_in_sync, dtype=tf.float32)
    sizes = tf.cast(context.all_reduce(tf.distribute.ReduceOp.SUM, one_hot * tf.cast(batch, tf.float32)), tf.int32)
    before = tf.range(context.num_replicas_in_sync) < replica
    return tf.reduce_sum(tf.where(before, sizes, 0)), tf.reduce_sum(sizes)


def _multi_worker():
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def _logs(trackers):
    """``{name: result}``; shaped [1] with several workers, where Keras's fit reduces logs with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (tensorflow/tensorflow#72388)
    and returns the scalar mean of [1]-shaped values."""
    logs = {tracker.name: tracker.result() for tracker in trackers}
    if _multi_worker():
        logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _global_share(local_mean, local_rows, global_batch):
    """A mean over this replica's rows as its share of the global batch's mean: the penalty helpers average over
    the local batch (a replica with no rows, in a last partial batch, contributes 0, not 0 × NaN)."""
    local = tf.shape(local_rows)[0]
    return tf.where(local > 0, local_mean, 0.0) * (tf.cast(local, tf.float32) / tf.cast(global_batch, tf.float32))


class SDGAN(keras.Model):
    """A GAN trainer whose discriminator learns the score difference of noised real and fake data.

    Each :meth:`train_step` on a batch of ``b`` real samples:

    1. ``discriminator_steps`` times (the same real batch each time, fresh z, σ and noise): draw
       ``σ_i`` log-uniform on ``sigma_range`` (one per pair ``i``), ``y_i + σ_i n_i`` and
       ``G(z_i) + σ_i n'_i`` with independent ``n, n' ~ N(0, I)``, and take one ``d_optimizer`` step
       on ``mean_i real_term(T(y_i + σ_i n_i, σ_i)) + mean_i fake_term(T(G(z_i) + σ_i n'_i, σ_i))``
       plus ``penalty_weight × penalty``.
    2. Unless ``generator_objective`` is None, one ``g_optimizer`` step on the generator objective
       (module docstring; shared/SD_FLOW.md §5) with fresh ``z ~ N(0, I)`` and σ.

    Args:
      generator: a Keras model ``z -> x``; ``z ~ N(0, I)`` shaped ``[batch, *latent_shape]``.
      discriminator: a Keras model ``[x, sigma] -> T`` (σ-conditioned; sigma ``[batch, 1]``) or
        ``x -> T``; outputs ``[batch, 1]`` or ``[batch]``. It must treat samples independently (no
        batch statistics): the SD flow and the penalties take per-sample input gradients of a
        batch sum. An unconditioned discriminator sees all σ levels at once, so its gradient
        estimates an average of v_σ over the levels, not v_σ at one σ.
      loss: a name from ``gan2flow.losses.names()`` or a ``losses.Loss``.
      generator_objective: ``"minimax"``, ``"non_saturating"``, ``"logit"``, ``"flow_regression"``,
        or None (discriminator only). ``"logit"`` and ``"flow_regression"`` need a loss with a link;
        hinge allows ``"non_saturating"`` (``−T``) only, Wasserstein ``"minimax"`` and
        ``"non_saturating"`` (both ``−T``).
      sigma_range: ``(sigma_min, sigma_max)``, ``0 < sigma_min <= sigma_max``; σ is drawn on it as
        ``sigma_sampling`` says (``sigma_min == sigma_max`` fixes σ). ``(0, 0)`` trains without noise (a
        plain GAN; then a σ-conditioned discriminator receives σ = 0 and ``"flow_regression"`` is not
        allowed).
      sigma_sampling: one of :data:`SIGMA_SAMPLINGS`: ``log σ = log σ_min + t(u) log(σ_max/σ_min)``,
        ``u ~ U(0, 1)``, with ``t(u) = u`` (``"log_uniform"``, the default), ``sin²(πu/2)``
        (``"log_ends"``, the arcsine law: more mass at both ends) or ``u²`` (``"log_small"``).
      discriminator_steps: discriminator updates per train step (≥ 1).
      penalty: None, ``"r1"`` (``mean ‖∇ₓT(y + σn, σ)‖²`` on the noised real inputs at their σ,
        through ``losses.r1_penalty``), ``"r1_scaled"`` (``mean ‖σ²∇ₓT(y + σn, σ)‖²``: R1 on the
        denoiser difference ``σ² v``, whose size does not grow like ``1/σ²`` at small σ) or
        ``"gradient_penalty"`` (WGAN-GP at random interpolates of the noised real and fake samples, which
        share σ, through ``losses.gradient_penalty``).
      penalty_weight: multiplies the penalty; None: 1.0 for both R1s, 10.0 for the gradient penalty.
      denoising_weight: λ ≥ 0 of an auxiliary denoising-score-matching term on the two bowls ``T = A − B``
        of an energy-difference discriminator (``models.energy_bowls``): ``λ·(dsm_A + dsm_B)`` with
        ``dsm_A = losses.denoising_score_matching(A, y + σn, n, σ)`` on the noised real samples and
        ``dsm_B`` the same with B on the noised fakes (the same draws the discriminator loss sees). Its
        optimum ``∇A = ∇log p_σ``, ``∇B = ∇log q_σ`` is the exact SD, so it is SD-consistent; the
        discriminator loss fixes T's σ-dependent constant (``mlp_discriminator(energy_bias=True)`` gives
        the model one that changes no gradient). 0 (the default): no such term. σ-conditioned
        ``"energy_difference"`` discriminators with ``sigma_range`` above 0 only.
      flow_steps: Euler steps per generator update for ``"flow_regression"``.
      flow_step_scale: ε in ``η = ε σ²`` for ``"flow_regression"`` (the same σ for all steps of a sample).
      regression_weighting: ``"inverse_step"`` (divide each sample's regression loss by ``flow_steps·η``)
        or ``"uniform"`` (the unweighted ``½‖G(z) − x'‖²`` of earlier versions), for ``"flow_regression"``.
        Measured (docs/losses.md): ``"inverse_step"`` with the plain ``mlp_discriminator`` (ties
        ``"logit"``), ``"uniform"`` with ``parametrisation="energy_difference"``, whose small-σ field is
        correctly large.
      seed: int seed for z, σ and noise (None: random). Two models with the same seed, weights and
        data train identically.
      latent_dim: the latent size (int) or shape (tuple); None infers it from ``generator.inputs``.
      sigma_conditioned: whether the discriminator takes ``[x, sigma]``; None infers it from
        ``discriminator.inputs`` (1 or 2 inputs).
      replica_invariant_noise: draw z, σ, the noise and the WGAN-GP α as a pure function of
        (seed, draw counter, global sample index) with the counter-based generator of the flows,
        instead of Philox streams folded with the replica id. Training on R replicas then repeats a
        single-device run on the same global batches up to float32 summation order (docs/distributed.md);
        it costs a few dozen elementwise integer ops per draw instead of one Philox kernel.
      n_classes: K for a class-conditional pair (calibration only, ``generator_objective=None``): the
        generator takes ``[z, label]``, the discriminator ``[x, sigma, label]`` (or ``[x, label]``), and the data
        are ``(x, labels)`` pairs with integer labels; each fake is drawn with its real partner's label, so the
        discriminator learns log p_σ(x | y)/q_σ(x | y). Labels are shaped for each model's label input by
        ``gan2flow.adapters.label_input``. None: unconditional.
      name: the model name; further keyword arguments go to ``keras.Model``.

    Metrics (``fit`` logs, each an epoch-running mean of global-batch means, also under a strategy):
      ``d_loss`` (the discriminator loss without the penalty, averaged over the discriminator
      steps), ``d_accuracy`` (fraction of noised real samples with ``link(T) > 0`` and noised fakes
      with ``link(T) < 0``; ``T`` in place of ``link(T)`` for hinge/Wasserstein, where the threshold 0
      is arbitrary), ``penalty`` (unweighted, when a penalty is set), ``denoising`` (``dsm_A + dsm_B``,
      unweighted, when ``denoising_weight`` > 0) and ``g_loss`` (when the
      generator is trained). There is deliberately no ``loss`` key: monitor ``d_loss`` or ``g_loss``
      (``EarlyStopping`` then needs ``mode="min"``: Keras cannot infer a custom metric's direction).
      ``evaluate`` / ``validation_data`` report ``d_loss`` and ``d_accuracy`` on held-out real
      samples (:meth:`test_step`).

    Saving: the generator and discriminator are ordinary Keras models (save them as ``.keras``
    files). ``SDGAN`` itself is meant to be saved with ``save_weights`` / ``ModelCheckpoint(...,
    save_weights_only=True)`` to a ``.weights.h5`` file and restored into an SDGAN built the same way;
    saving the whole SDGAN as ``.keras`` is not supported.

    Raises:
      ValueError: for bad arguments (each message names the argument).

    Example::

        gan = SDGAN(gen, disc, loss="logistic", generator_objective="flow_regression",
                    sigma_range=(0.05, 1.0), flow_steps=5, seed=0)
        gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
        history = gan.fit(real, batch_size=256, epochs=20)
    """

    def __init__(self, generator, discriminator, *, loss="logistic", generator_objective="logit",
                 sigma_range=(0.05, 2.0), sigma_sampling="log_uniform", discriminator_steps=1, penalty=None,
                 penalty_weight=None, denoising_weight=0.0,
                 flow_steps=5, flow_step_scale=0.5, regression_weighting="inverse_step", seed=None,
                 latent_dim=None, sigma_conditioned=None,
                 replica_invariant_noise=False, n_classes=None, name="sdgan", **kwargs):
        super().__init__(name=name, **kwargs)
        for arg, value in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(value, keras.Model):
                raise ValueError(f"`{arg}` must be a keras.Model, got {type(value).__name__}.")
        self.gan_loss = _losses.get(loss)
        if generator_objective is not None:
            _checks.one_of(generator_objective, "generator_objective", GENERATOR_OBJECTIVES)
            self._check_objective(generator_objective)
        self.generator_objective = generator_objective
        self.n_classes = None if n_classes is None else _checks.positive_int(n_classes, "n_classes")
        if self.n_classes is not None and generator_objective is not None:
            raise ValueError("`n_classes` (a class-conditional pair) is supported for calibration only: pass "
                             f"generator_objective=None, got {generator_objective!r}.")
        self.sigma_range = _sigma_range(sigma_range)
        self.sigma_sampling = _checks.one_of(sigma_sampling, "sigma_sampling", SIGMA_SAMPLINGS)
        if generator_objective == "flow_regression" and self.sigma_range[1] == 0:
            raise ValueError(
                "`generator_objective`='flow_regression' needs sigma_range with sigma > 0 (its step "
                f"size is flow_step_scale * sigma^2); got sigma_range={tuple(sigma_range)!r}."
            )
        self.discriminator_steps = _checks.positive_int(discriminator_steps, "discriminator_steps")
        if penalty is not None:
            _checks.one_of(penalty, "penalty", PENALTIES)
        self.penalty = penalty
        if penalty_weight is None:
            penalty_weight = _DEFAULT_PENALTY_WEIGHT.get(penalty, 0.0)
        self.penalty_weight = _checks.positive_float(penalty_weight, "penalty_weight", allow_zero=True)
        self.denoising_weight = _checks.positive_float(denoising_weight, "denoising_weight", allow_zero=True)
        self.flow_steps = _checks.positive_int(flow_steps, "flow_steps")
        self.flow_step_scale = _checks.positive_float(flow_step_scale, "flow_step_scale")
        self.regression_weighting = _checks.one_of(regression_weighting, "regression_weighting",
                                                   REGRESSION_WEIGHTINGS)
        if self.gan_loss.name == "wasserstein" and penalty is None:
            warnings.warn(
                "loss='wasserstein' without a penalty: the critic loss is unbounded below; pass "
                "penalty='gradient_penalty' (WGAN-GP) or 'r1'.",
                stacklevel=2,
            )
        if seed is not None:
            seed = _checks.positive_int(seed, "seed", allow_zero=True)
        self.seed = seed

        self.generator = generator
        self.discriminator = discriminator
        self.latent_shape = adapters.latent_shape(generator, latent_dim)
        self.sigma_conditioned = adapters.sigma_conditioning(discriminator, sigma_conditioned,
                                                             labelled=self.n_classes is not None)
        self.replica_invariant_noise = bool(replica_invariant_noise)
        self._seed_generator = keras.random.SeedGenerator(seed, name="sdgan_seed_generator")

        self._d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self._d_accuracy_tracker = keras.metrics.Mean(name="d_accuracy")
        self._penalty_tracker = keras.metrics.Mean(name="penalty") if penalty else None
        self._bowls = None
        if self.denoising_weight > 0:
            if self.sigma_range[1] == 0 or not self.sigma_conditioned:
                raise ValueError("`denoising_weight` > 0 needs a σ-conditioned discriminator and sigma_range above 0 "
                                 f"(it matches scores of noised data), got sigma_range={tuple(sigma_range)!r}.")
            self._bowls = _models.energy_bowls(discriminator)
        self._denoising_tracker = keras.metrics.Mean(name="denoising") if self._bowls is not None else None
        self._g_loss_tracker = keras.metrics.Mean(name="g_loss") if generator_objective else None
        self.d_optimizer = None
        self.g_optimizer = None
        self._data_shape = self._sample_shape()
        self._ensure_built()

    # --------------------------------------------------------------------------------------------
    # Construction helpers
    # --------------------------------------------------------------------------------------------
    def _check_objective(self, objective):
        loss = self.gan_loss
        if loss.link_fn is not None:
            return
        allowed = _ALLOWED_WITHOUT_LINK.get(loss.name, ("minimax", "non_saturating"))
        if objective in _NEEDS_LINK:
            raise ValueError(
                f"`generator_objective`={objective!r} needs a loss with a link (a log-ratio to follow), "
                f"but loss={loss.name!r} has none. Use generator_objective in {list(allowed)} with "
                "this loss, or an SD-consistent loss such as 'logistic'."
            )
        if objective not in allowed:
            raise ValueError(
                f"`generator_objective`={objective!r} does not fit loss={loss.name!r}: its generator "
                "loss -relu(1 + T) has zero gradient wherever the discriminator rejects fakes "
                f"(T < -1). Use generator_objective in {list(allowed)} (-T)."
            )

    def _sample_shape(self):
        """The generator's sample shape, checked against the discriminator's x input when that is known."""
        try:
            shape = tuple(self.generator.output_shape[1:])
        except (AttributeError, ValueError, TypeError):
            shape = tuple(self.generator(tf.zeros((1,) + self.latent_shape), training=False).shape[1:])
        expected = adapters.input_sample_shape(self.discriminator)
        if expected is not None and not _checks.shapes_compatible(shape, expected):
            raise ValueError(f"`discriminator` takes samples of shape {expected}, but `generator` makes samples "
                             f"of shape {shape}.")
        return shape

    def _check_real(self, x):
        """Arrays: finite numbers shaped [n >= 1, *sample_shape]; datasets: batches of that sample shape."""
        expected = self._data_shape
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec[0] if isinstance(x.element_spec, (tuple, list)) else x.element_spec
            shape = getattr(spec, "shape", None)
            if shape is not None and shape.rank is not None and not _checks.shapes_compatible(shape[1:], expected):
                raise ValueError(f"`x` must yield batches [batch, {', '.join(map(str, expected))}] (the generator's "
                                 f"sample shape), got elements of shape {tuple(shape)}.")
            return
        if not isinstance(x, (np.ndarray, tf.Tensor)):
            return
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"`x` must be an array of numbers, got dtype {array.dtype}.")
        if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != expected or len(array) == 0:
            raise ValueError(f"`x` must be real samples [n, {', '.join(map(str, expected))}] with n >= 1 (the "
                             f"generator's sample shape), got shape {array.shape}.")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise ValueError(f"`x` must be finite, found {bad} NaN/Inf value(s) in shape {array.shape}.")

    def fit(self, x=None, *args, **kwargs):
        """``keras.Model.fit`` after checking the real samples ``x``: an array must be finite and shaped
        ``[n >= 1, *sample_shape]``; a ``tf.data.Dataset`` must yield batches of that sample shape (its values
        are not scanned: add ``keras.callbacks.TerminateOnNaN()`` to stop on a non-finite loss). Resuming: pass
        ``keras.callbacks.BackupAndRestore(folder, double_checkpoint=True)``; rerunning the same script after
        a crash (even ``kill -9``) restores the weights, both optimizers and the epoch (docs/reliability.md).

        Raises:
          ValueError: naming ``x``, with the expected and the found shape or values.
        """
        self._check_real(x)
        return super().fit(x, *args, **kwargs)

    def _ensure_built(self):
        """Build subclassed submodels by calling them once; mark this model built."""
        if self.n_classes is not None:  # (conditional models are functional: built when made)
            self.built = True
            return
        if not self.generator.built:
            self.generator(tf.zeros((1,) + self.latent_shape), training=False)
        if not self.discriminator.built:
            x = self.generator(tf.zeros((1,) + self.latent_shape), training=False)
            self._discriminate(x, tf.ones([1, 1]), training=False)
        self.built = True

    # --------------------------------------------------------------------------------------------
    # Keras plumbing
    # --------------------------------------------------------------------------------------------
    def compile(self, d_optimizer, g_optimizer=None, **kwargs):
        """Set and build the optimizers, then ``keras.Model.compile(**kwargs)``.

        Args:
          d_optimizer: the discriminator's optimizer (a ``keras.optimizers.Optimizer`` or a name). With
            ``use_ema=True`` (a frozen generator only) ``fit`` ends by writing the exponential moving
            average of the discriminator's weights into them (Keras's ``finalize_variable_values``).
          g_optimizer: the generator's; required unless ``generator_objective`` is None (then it is
            ignored, with a warning if given). Must be a different object from ``d_optimizer``.
          **kwargs: passed on (``run_eagerly``, ``jit_compile``, ``steps_per_execution``;
            ``jit_compile=True`` is dropped, with a warning, under a multi-replica strategy);
            ``optimizer``, ``loss``, ``metrics``, ``loss_weights`` and ``weighted_metrics`` are
            rejected: the losses and metrics are fixed by the constructor.

        Raises:
          ValueError: a missing or shared optimizer, a rejected keyword, or ``use_ema`` where Keras cannot
            finalise it (``g_optimizer``; ``d_optimizer`` with a trainable generator).
        """
        for key in ("optimizer", "loss", "metrics", "loss_weights", "weighted_metrics"):
            if key in kwargs:
                raise ValueError(
                    f"`{key}` cannot be passed to SDGAN.compile: use d_optimizer/g_optimizer; the loss is "
                    "set by SDGAN(loss=...) and the metrics are fixed."
                )
        if d_optimizer is None:
            raise ValueError("`d_optimizer` must be a Keras optimizer (or its name), got None.")
        d_optimizer = keras.optimizers.get(d_optimizer)
        if self.generator_objective is None:
            if g_optimizer is not None:
                warnings.warn("`g_optimizer` is ignored: generator_objective=None trains the "
                              "discriminator only.", stacklevel=2)
            g_optimizer = None
        else:
            if g_optimizer is None:
                raise ValueError(
                    f"`g_optimizer` must be given for generator_objective={self.generator_objective!r} "
                    "(only generator_objective=None trains without one)."
                )
            g_optimizer = keras.optimizers.get(g_optimizer)
            if g_optimizer is d_optimizer:
                raise ValueError("`g_optimizer` must be a different optimizer object from `d_optimizer`.")
        if g_optimizer is not None and g_optimizer.use_ema:
            raise ValueError("`g_optimizer` with use_ema=True is not supported: Keras writes the moving average "
                             "into the weights at the end of fit only for d_optimizer (its `optimizer` slot).")
        if d_optimizer.use_ema and self.generator.trainable_variables:
            raise ValueError(
                "`d_optimizer` with use_ema=True needs a generator without trainable variables (a frozen one, as "
                "in calibration): at the end of fit Keras writes the optimizer's averages into all of the "
                "SDGAN's trainable weights, which then include the generator's.")
        d_variables = self.discriminator.trainable_variables
        if not d_variables:
            raise ValueError("`discriminator` has no trainable variables to optimise.")
        d_optimizer.build(d_variables)
        if g_optimizer is not None:
            g_variables = self.generator.trainable_variables
            if not g_variables:
                raise ValueError(
                    "`generator` has no trainable variables; use generator_objective=None to train the "
                    "discriminator only."
                )
            g_optimizer.build(g_variables)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        strategy = self.distribute_strategy
        if kwargs.get("jit_compile") is True and (
                strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.TPUStrategy)):
            # Keras would compile the whole multi-replica step (strategy.run and its all-reduces) as one
            # XLA cluster on one device, which cannot read the other replicas' variables; "auto" already
            # resolves to False under a strategy. TPUs compile the step with XLA anyway.
            warnings.warn("jit_compile=True is ignored under a multi-replica tf.distribute strategy (Keras "
                          "cannot XLA-compile a step across replicas); training without XLA.", stacklevel=2)
            kwargs["jit_compile"] = False
        # Keras's own `optimizer` slot holds the (already built) discriminator optimizer, so fit()
        # builds nothing else and callbacks reading `model.optimizer.iterations` count D steps.
        super().compile(optimizer=d_optimizer, **kwargs)

    @property
    def metrics(self):
        trackers = [
            self._d_loss_tracker, self._d_accuracy_tracker, self._penalty_tracker, self._denoising_tracker,
            self._g_loss_tracker,
        ]
        return [tracker for tracker in trackers if tracker is not None]

    def call(self, z, training=False):
        """``generator(z)``."""
        return self.generator(z, training=training)

    def get_config(self):
        """Not supported: save the weights (``.weights.h5``) or the two submodels instead."""
        raise NotImplementedError(
            "SDGAN cannot be saved as a .keras file: save its weights with save_weights(...) / "
            "ModelCheckpoint(..., save_weights_only=True) to a .weights.h5 file, or save "
            "gan.generator and gan.discriminator as .keras files."
        )

    # --------------------------------------------------------------------------------------------
    # Random draws (stateless ops keyed by the SeedGenerator, folded with the replica id)
    # --------------------------------------------------------------------------------------------
    def _next_seed(self):
        seed = tf.cast(self._seed_generator.next(), tf.int64)
        return tf.random.experimental.stateless_fold_in(seed, _replica_id())

    def _normal(self, shape, offset=0):
        """N(0, I) draws for the local rows, which start at global row ``offset`` of the batch."""
        if self.replica_invariant_noise:
            state = self._seed_generator.next()
            return _noise.counter_normal(shape, state[0], state[1], offset)
        return tf.random.stateless_normal(shape, seed=self._next_seed(), dtype=tf.float32)

    def _uniform(self, shape, offset=0):
        """U(0, 1) draws for the local rows (as :meth:`_normal`)."""
        if self.replica_invariant_noise:
            state = self._seed_generator.next()
            return _noise.counter_uniform(shape, state[0], state[1], offset)
        return tf.random.stateless_uniform(shape, seed=self._next_seed(), dtype=tf.float32)

    def _latents(self, batch, offset=0):
        return self._normal(tf.concat([[batch], tf.constant(self.latent_shape, tf.int32)], axis=0), offset)

    def _sigmas(self, batch, offset=0):
        """σ per sample, shaped [batch, 1], on sigma_range as ``sigma_sampling`` says."""
        low, high = self.sigma_range
        if low == high:
            return tf.fill([batch, 1], tf.constant(low, tf.float32))
        u = self._uniform(tf.stack([batch, 1]), offset)
        if self.sigma_sampling == "log_ends":
            u = tf.square(tf.sin(0.5 * math.pi * u))
        elif self.sigma_sampling == "log_small":
            u = tf.square(u)
        return tf.exp(math.log(low) + u * (math.log(high) - math.log(low)))

    @staticmethod
    def _broadcastable(sigma, x):
        """σ [batch, 1] reshaped to [batch, 1, ..., 1] with x's rank."""
        return tf.reshape(sigma, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))

    def _add_noise(self, x, sigma, offset=0):
        """``(x + σ n, n)`` with ``n ~ N(0, I)`` (``(x, None)`` when training without noise)."""
        if self.sigma_range[1] == 0:
            return x, None
        noise = self._normal(tf.shape(x), offset)
        return x + self._broadcastable(sigma, x) * noise, noise

    # --------------------------------------------------------------------------------------------
    # Discriminator
    # --------------------------------------------------------------------------------------------
    def _discriminate(self, x, sigma, training, labels=None, model=None):
        """Raw outputs T(x, σ) (T(x, σ, y) with ``labels``) as float32 [batch] (``model``'s outputs, [batch, ...],
        for another model with the discriminator's inputs)."""
        if labels is not None:
            label = adapters.label_input(self.discriminator, labels, self.n_classes)
            inputs = [x, sigma, label] if self.sigma_conditioned else [x, label]
        else:
            inputs = [x, sigma] if self.sigma_conditioned else x
        if model is not None:
            return tf.cast(model(inputs, training=training), tf.float32)
        return tf.reshape(tf.cast(self.discriminator(inputs, training=training), tf.float32), [-1])

    def _denoising(self, noisy_real, noisy_fake, sigma, real_noise, fake_noise, labels=None):
        """``dsm_A + dsm_B``: denoising score matching of bowl A on the noised reals, of B on the noised fakes."""
        total = 0.0
        for column, x, noise in ((0, noisy_real, real_noise), (1, noisy_fake, fake_noise)):
            def bowl(points, column=column):
                return self._discriminate(points, sigma, training=True, labels=labels, model=self._bowls)[:, column]

            total = total + _losses.denoising_score_matching(bowl, x, noise, sigma)
        return total

    def _decision(self, output):
        """link(T), or T for losses without a link; positive means 'real'."""
        if self.gan_loss.link_fn is None:
            return output
        return self.gan_loss.log_ratio(output)

    def _penalty(self, noisy_real, noisy_fake, sigma, offset=0, labels=None):
        def critic(x):
            return self._discriminate(x, sigma, training=True, labels=labels)

        if self.penalty == "r1":
            return _losses.r1_penalty(critic, noisy_real)
        if self.penalty == "r1_scaled":  # ‖σ² ∇ₓT‖²: the denoiser difference's size, O(1) at every σ
            return _losses.r1_penalty(critic, noisy_real, weights=tf.square(tf.square(sigma)))
        # WGAN-GP at x̂ = real + α (fake − real), α drawn here from our seeded stream (stateless, the same
        # under a strategy and under XLA). Passing x̂ as both `real` and `fake` makes
        # losses.gradient_penalty evaluate exactly at x̂ (its own interpolation is then x̂ + α·0).
        alpha = self._uniform(tf.stack([tf.shape(noisy_real)[0], 1]), offset)
        alpha = self._broadcastable(alpha, noisy_real)
        interpolates = noisy_real + alpha * (noisy_fake - noisy_real)
        return _losses.gradient_penalty(critic, interpolates, interpolates)

    def _noised_pair(self, real, offset=0, labels=None, with_noise=False):
        """Noised real and fake batches at shared per-pair σ: (noisy_real, noisy_fake, sigma [batch, 1]), plus
        (real_noise, fake_noise) with ``with_noise``. With ``labels`` (conditional), fake i is drawn with real
        i's label."""
        batch = tf.shape(real)[0]
        latents = self._latents(batch, offset)
        if labels is not None:
            latents = [latents, adapters.label_input(self.generator, labels, self.n_classes)]
        # Fakes are made outside any tape: no generator gradient work for the discriminator.
        fake = tf.stop_gradient(self.generator(latents, training=self.generator_objective is not None))
        sigma = self._sigmas(batch, offset)
        noisy_real, real_noise = self._add_noise(real, sigma, offset)
        noisy_fake, fake_noise = self._add_noise(tf.cast(fake, tf.float32), sigma, offset)
        if with_noise:
            return noisy_real, noisy_fake, sigma, real_noise, fake_noise
        return noisy_real, noisy_fake, sigma

    def _discriminator_loss(self, real_output, fake_output, global_batch):
        real_terms, fake_terms = self.gan_loss.per_sample_discriminator_loss(real_output, fake_output)
        return tf.nn.compute_average_loss(real_terms, global_batch_size=global_batch) + \
            tf.nn.compute_average_loss(fake_terms, global_batch_size=global_batch)

    def _correct(self, real_output, fake_output):
        """How many samples the discriminator classifies correctly (a float count)."""
        return tf.reduce_sum(tf.cast(self._decision(real_output) > 0, tf.float32)) + \
            tf.reduce_sum(tf.cast(self._decision(fake_output) < 0, tf.float32))

    def _discriminator_step(self, real, global_batch, offset, labels=None):
        noisy_real, noisy_fake, sigma, real_noise, fake_noise = self._noised_pair(real, offset, labels,
                                                                                  with_noise=True)
        variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            real_output = self._discriminate(noisy_real, sigma, training=True, labels=labels)
            fake_output = self._discriminate(noisy_fake, sigma, training=True, labels=labels)
            d_loss = self._discriminator_loss(real_output, fake_output, global_batch)
            total = d_loss
            penalty = tf.constant(0.0)
            if self.penalty is not None:
                penalty = _global_share(self._penalty(noisy_real, noisy_fake, sigma, offset, labels), real,
                                        global_batch)
                total = total + self.penalty_weight * penalty
            denoising = tf.constant(0.0)
            if self._bowls is not None:
                denoising = _global_share(self._denoising(noisy_real, noisy_fake, sigma, real_noise, fake_noise,
                                                          labels), real, global_batch)
                total = total + self.denoising_weight * denoising
        gradients = tape.gradient(total, variables)
        self.d_optimizer.apply_gradients(zip(gradients, variables, strict=False))
        return d_loss, penalty, denoising, self._correct(real_output, fake_output)

    # --------------------------------------------------------------------------------------------
    # Generator
    # --------------------------------------------------------------------------------------------
    def _link_gradient(self, x, sigma):
        """∇ₓ link(T(x, σ)) per sample (the discriminator's SD estimate at x)."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = tf.reduce_sum(self.gan_loss.log_ratio(self._discriminate(x, sigma, training=False)))
        return tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def flow_targets(self, x, sigma):
        """The regression targets of ``"flow_regression"``: ``flow_steps`` Euler steps from x.

        ``x ← x + η ∇ₓ link(T(x, σ))`` with ``η = flow_step_scale · σ²`` (per sample), along the current
        discriminator.

        Args:
          x: samples ``[batch, ...]``.
          sigma: noise levels ``[batch, 1]`` (or a scalar, used for every sample).

        Returns:
          float32 tensor shaped like x (no gradient flows through it).
        """
        x = tf.stop_gradient(tf.convert_to_tensor(x, tf.float32))
        sigma = tf.convert_to_tensor(sigma, tf.float32)
        if sigma.shape.rank == 0:
            sigma = tf.fill([tf.shape(x)[0], 1], sigma)
        eta = self.flow_step_scale * tf.square(self._broadcastable(sigma, x))
        for _ in range(self.flow_steps):
            x = x + eta * self._link_gradient(x, sigma)
        return tf.stop_gradient(x)

    def _generator_step(self, batch, global_batch, offset):
        z = self._latents(batch, offset)
        sigma = self._sigmas(batch, offset)
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            fake = tf.cast(self.generator(z, training=True), tf.float32)
            if self.generator_objective == "flow_regression":
                with tape.stop_recording():
                    target = self.flow_targets(fake, sigma)
                flat = tf.reshape(fake - target, [batch, -1])
                per_sample = 0.5 * tf.reduce_sum(tf.square(flat), axis=1)
                if self.regression_weighting == "inverse_step":
                    total_step = self.flow_steps * self.flow_step_scale * tf.square(tf.reshape(sigma, [-1]))
                    per_sample = per_sample / total_step
            else:
                output = self._discriminate(fake, sigma, training=False)
                per_sample = self.gan_loss.generator_loss(output, self.generator_objective)
            g_loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)
        gradients = tape.gradient(g_loss, variables)
        self.g_optimizer.apply_gradients(zip(gradients, variables, strict=False))
        return g_loss

    # --------------------------------------------------------------------------------------------
    # Training
    # --------------------------------------------------------------------------------------------
    def _labels_of(self, data):
        """A conditional trainer's batch labels (the second entry of ``(x, labels)``); None if unconditional."""
        if self.n_classes is None:
            return None
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError("`x`: a class-conditional SDGAN (n_classes given) trains on (samples, labels) pairs, "
                             "got samples only.")
        return tf.reshape(tf.cast(data[1], tf.int32), [-1])

    def train_step(self, data):
        """One training step on a batch of real samples (or a tuple whose first entry is that batch).

        Returns:
          ``{"d_loss", "d_accuracy"[, "penalty"][, "denoising"][, "g_loss"]}``: the epoch-running means (Keras
          convention), each update being a global-batch mean summed over replicas.
        """
        if self.d_optimizer is None:
            raise ValueError("SDGAN must be compiled (compile(d_optimizer, g_optimizer)) before training.")
        real = data[0] if isinstance(data, (tuple, list)) else data
        real = tf.cast(real, tf.float32)
        labels = self._labels_of(data)
        batch = tf.shape(real)[0]
        offset, global_batch = _global_rows(batch)
        d_loss_sum = tf.constant(0.0)
        penalty_sum = tf.constant(0.0)
        denoising_sum = tf.constant(0.0)
        correct_sum = tf.constant(0.0)
        for _ in range(self.discriminator_steps):
            d_loss, penalty, denoising, correct = self._discriminator_step(real, global_batch, offset, labels)
            d_loss_sum += d_loss
            penalty_sum += penalty
            denoising_sum += denoising
            correct_sum += correct
        steps = float(self.discriminator_steps)
        self._d_loss_tracker.update_state(_all_reduce_sum(d_loss_sum) / steps)
        accuracy = _all_reduce_sum(correct_sum) / (2.0 * steps * tf.cast(global_batch, tf.float32))
        self._d_accuracy_tracker.update_state(accuracy)
        if self._penalty_tracker is not None:
            self._penalty_tracker.update_state(_all_reduce_sum(penalty_sum) / steps)
        if self._denoising_tracker is not None:
            self._denoising_tracker.update_state(_all_reduce_sum(denoising_sum) / steps)
        if self.generator_objective is not None:
            g_loss = self._generator_step(batch, global_batch, offset)
            self._g_loss_tracker.update_state(_all_reduce_sum(g_loss))
        return _logs(self.metrics)

    def test_step(self, data):
        """Evaluate the discriminator on held-out real samples (``evaluate``, ``validation_data``).

        Draws fakes, σ and noise as in training and reports ``{"d_loss", "d_accuracy"}`` (logged as
        ``val_d_loss`` / ``val_d_accuracy`` by ``fit``) without updating anything. A held-out
        ``d_loss`` well above the training one flags an overfitting discriminator, whose gradients
        are then a poor SD estimate (shared/SD_FLOW.md §8).
        """
        real = data[0] if isinstance(data, (tuple, list)) else data
        real = tf.cast(real, tf.float32)
        labels = self._labels_of(data)
        offset, global_batch = _global_rows(tf.shape(real)[0])
        noisy_real, noisy_fake, sigma = self._noised_pair(real, offset, labels)
        real_output = self._discriminate(noisy_real, sigma, training=False, labels=labels)
        fake_output = self._discriminate(noisy_fake, sigma, training=False, labels=labels)
        d_loss = self._discriminator_loss(real_output, fake_output, global_batch)
        self._d_loss_tracker.update_state(_all_reduce_sum(d_loss))
        correct = _all_reduce_sum(self._correct(real_output, fake_output))
        self._d_accuracy_tracker.update_state(correct / (2.0 * tf.cast(global_batch, tf.float32)))
        return _logs((self._d_loss_tracker, self._d_accuracy_tracker))

    # --------------------------------------------------------------------------------------------
    # After training
    # --------------------------------------------------------------------------------------------
    def generate(self, n, seed=None, *, batch_size=None):
        """Draw ``n`` samples ``G(z)``, ``z ~ N(0, I)``.

        Args:
          n: number of samples (≥ 0).
          seed: int for a reproducible draw (stateless Philox), None for a random one.
          batch_size: run the generator on at most this many latents at a time (None: all at once).

        Returns:
          float32 tensor ``[n, *sample_shape]``.
        """
        n = _checks.positive_int(n, "n", allow_zero=True)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        seed = _checks.positive_int(seed, "seed", allow_zero=True)
        z = tf.random.stateless_normal((n,) + self.latent_shape, seed=[seed, 0], dtype=tf.float32,
                                       alg="philox")
        chunk = n if batch_size is None else _checks.positive_int(batch_size, "batch_size")
        if n == 0 or chunk >= n:
            return tf.cast(self.generator(z, training=False), tf.float32)
        parts = [tf.cast(self.generator(z[start:start + chunk], training=False), tf.float32)
                 for start in range(0, n, chunk)]
        return tf.concat(parts, axis=0)

    def score_difference(self):
        """The discriminator as a score-difference estimator ``(x, sigma) -> ∇ₓ link(T(x, σ))``.

        Returns:
          ``gan2flow.estimators.DiscriminatorScoreDifference(self.discriminator, loss)``.

        Raises:
          ValueError: for a loss without a link (hinge, Wasserstein).
        """
        return _estimators.DiscriminatorScoreDifference(
            self.discriminator, loss=self.gan_loss, sigma_conditioned=self.sigma_conditioned
        )
