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

from gan2flow import _checks, adapters, conv_models, datasets, losses, resume, staged
from gan2flow import sigmas as schedules
from gan2flow.diagnostics import diagnose, format_diagnostics
from gan2flow.ganflow import GANFlow, load  # noqa: F401 - gan2flow.conversion.GANFlow/load keep working
from gan2flow.training import SDGAN

__all__ = ["convert"]

# The staged calibration's settings for class-conditional GANs (see convert).
_CONDITIONAL_STAGE_OPTIONS = {"step_scale": 0.5, "fine_ratio": None, "max_increase": math.inf}



# --------------------------------------------------------------------------------------------------
# Conversion


def convert(generator, discriminator, real_data, *, loss=None, latent_dim=None, sigma_range=None, steps=None,
            batch_size=None, learning_rate=1e-3, hidden=(256, 256, 256), reuse_discriminator=True,
            validation_fraction=0.2, seed=0, verbose=1, callbacks=None, strategy=None, jit_compile=True,
            fourier_features=128, backup_dir=None, stages=True, stage_options=None, labels=None, n_classes=None):
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
        steps: discriminator updates; None: 3 000, or for image-shaped samples (H×W×C with H, W ≥ 16) the
            smaller budget of ``gan2flow.conv_models.convert_defaults`` (800).
        batch_size, learning_rate, hidden: calibration training settings (``batch_size`` None: 256, images 64).
        reuse_discriminator: feed the given discriminator's output to the calibrated one as a feature.
        validation_fraction: share of ``real_data`` held out for the diagnostics.
        seed: seed for the split, latents, σ and noise, and — through ``keras.utils.set_random_seed(seed)``,
            which also reseeds Python's, NumPy's and TensorFlow's global generators — the networks' initial
            weights, so that a conversion repeats exactly.
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

        stages: also calibrate the staged refinement (``gan2flow.staged``, shared/SD_FLOW.md §9.2), the
            default field of :meth:`GANFlow.refine`: one discriminator per σ stage, each calibrated against
            the generator's samples as the flow has moved them so far, the σ range and the trusted stages
            chosen from the data and the calibration. It makes conversion slower (about K × 100 discriminator
            steps, K ≈ 20–40 stages) and keeps GANs trained elsewhere in the data's range (docs/convert.md).
            False: only the generator-calibrated discriminator (``field="calibrated"``).
        stage_options: keyword arguments for :func:`gan2flow.staged.calibrate_stages` (e.g. smaller
            ``train_steps`` and ``n_particles`` for a quick test); None: its defaults, for image-shaped samples
            those of ``gan2flow.conv_models.convert_defaults`` (given options override them).
        labels: for a class-conditional GAN (a generator taking ``[z, label]``, a discriminator taking
            ``[x, label]`` or ``[x, sigma, label]``): the integer class of each row of ``real_data`` (array or
            ``.npy`` path). Labels are fed to each model in the form its label input declares (``[n]``,
            ``[n, 1]`` or one-hot ``[n, K]``). The calibrated discriminator and the stages then take the label too
            (an embedding and a projection term) and learn log p_σ(x | y)/q_σ(x | y); the diagnostics gain a
            per-class table (``diagnostics["classes"]``) naming the classes with too little data to trust. None:
            an unconditional GAN (a conditional generator without labels raises, saying how to pass them).
        n_classes: the number of classes K; None: the width of a one-hot label input, else max(labels) + 1.

    Returns:
        A :class:`GANFlow` whose ``diagnostics`` say whether the calibration is good enough to flow.

    Raises:
        ValueError: bad models, shapes or data (named in the message).
        FileNotFoundError: a path that does not exist.
    """
    generator = adapters.load_model(generator, "generator")
    given = None if discriminator is None else adapters.load_model(discriminator, "discriminator")
    real = adapters.load_array(real_data, "real_data")
    if len(real) < 20:
        raise ValueError("`real_data` must hold at least 20 samples for calibration and a held-out split, got "
                         f"{len(real)}.")
    if loss is not None:
        loss = losses.get(loss).name
    image_defaults = conv_models.convert_defaults(real.shape[1:])  # {} unless image-shaped (issue 17)
    steps = _checks.positive_int(image_defaults.get("steps", 3000) if steps is None else steps, "steps")
    batch_size = image_defaults.get("batch_size", 256) if batch_size is None else batch_size
    stage_options = {**image_defaults.get("stage_options", {}), **(stage_options or {})}
    learning_rate = _checks.positive_float(learning_rate, "learning_rate")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must be in (0, 1), got {validation_fraction!r}.")

    conditional = adapters.model_arity(generator) == 2
    if conditional and labels is None:
        raise ValueError("`labels` must be given: the generator takes two inputs ([z, label], a class-conditional "
                         "GAN). Pass convert(generator, discriminator, real_data, labels=y) with y the integer class "
                         "of each row of real_data (CLI: gan2flow convert ... --labels LABELS.npy).")
    if labels is not None and not conditional:
        raise ValueError("`labels` applies to class-conditional generators taking [z, label]; this generator takes "
                         f"{adapters.model_arity(generator) or 'an unknown number of'} input(s). Drop `labels` to "
                         "convert an unconditional GAN.")
    if conditional:
        labels = adapters.check_labels(labels, len(real), "labels")
        n_classes = _n_classes(generator, labels, n_classes)
        labels = adapters.check_labels(labels, len(real), "labels", n_classes)
        if latent_dim is None:
            latent_dim = tuple(generator.inputs[0].shape[1:])
    latent_shape = adapters.latent_shape(generator, latent_dim)

    def generate(z, classes=None):
        if not conditional:
            return generator(z, training=False)
        classes = np.arange(int(z.shape[0])) % n_classes if classes is None else classes
        return generator([z, adapters.label_input(generator, classes, n_classes)], training=False)

    try:
        sample = generate(tf.zeros((2,) + tuple(latent_shape)))
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"`generator` could not be called on latents of shape {(2,) + tuple(latent_shape)}: "
                         f"{error}") from None
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
        arity = adapters.model_arity(given)
        if conditional and arity not in (2, 3):
            raise ValueError("`discriminator` must take [x, label] or [x, sigma, label] for a class-conditional GAN, "
                             f"got a model with {arity} input(s); pass discriminator=None to calibrate without it.")
        inputs = [real[:2], np.ones((2, 1), np.float32)] if arity == 2 else real[:2]
        if conditional:  # (all tensors: Keras refuses a mix of arrays and tensors)
            label = adapters.label_input(given, labels[:2], n_classes)
            x2 = tf.constant(real[:2])
            inputs = [x2, label] if arity == 2 else [x2, tf.ones((2, 1)), label]
        try:
            out = given(inputs, training=False)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"`discriminator` could not be called on samples of shape {tuple(real.shape[1:])}: "
                             f"{error}") from None
        adapters.output_column(out, "discriminator")
    adapters.check_ranges(real, generate(tf.random.stateless_normal((256,) + tuple(latent_shape), seed=[seed, 3])),
                          generator=generator)

    keras.utils.set_random_seed(seed)  # initial weights come from Keras's global generator
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    n_heldout = max(10, int(round(validation_fraction * len(real))))
    heldout, train = real[order[:n_heldout]], real[order[n_heldout:]]
    heldout_labels, train_labels = (None, None) if not conditional else (labels[order[:n_heldout]],
                                                                         labels[order[n_heldout:]])
    try:
        sigma_range = schedules.range_from_data(train) if sigma_range is None else tuple(map(float, sigma_range))
    except (TypeError, ValueError):
        raise ValueError(f"`sigma_range` must be a pair (sigma_min, sigma_max), got {sigma_range!r}.") from None
    if len(sigma_range) != 2 or not 0 < sigma_range[0] <= sigma_range[1] < math.inf:
        raise ValueError(f"`sigma_range` must be (sigma_min, sigma_max) with 0 < sigma_min <= sigma_max < inf, got "
                         f"{sigma_range}.")

    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        calibrator = conv_models.calibration_model(  # convolutional for images ≥ 16×16, else the MLP
            real.shape[1:], given=given if reuse_discriminator else None, given_loss=loss, reference=train,
            hidden=hidden, fourier_features=fourier_features, fourier_scales=(sigma_range[0], 2 * sigma_range[1]),
            n_classes=n_classes if conditional else None, reference_labels=train_labels)
        trainer = SDGAN(generator, calibrator, loss="logistic", generator_objective=None, sigma_range=sigma_range,
                        seed=seed, latent_dim=latent_shape, n_classes=n_classes if conditional else None)
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.1)
        # XLA cannot compile a step across replicas (SDGAN.compile would warn and drop it): ask only where it applies.
        replicated = strategy is not None and (strategy.num_replicas_in_sync > 1
                                               or isinstance(strategy, tf.distribute.TPUStrategy))
        trainer.compile(d_optimizer=keras.optimizers.Adam(schedule, beta_1=0.5),
                        jit_compile=bool(jit_compile) and not replicated)
    global_batch = min(batch_size, len(train))
    dataset = datasets.shuffled_batches(train if not conditional else (train, train_labels), global_batch, seed)
    steps_per_epoch = max(1, min(steps, 200))
    epochs = int(math.ceil(steps / steps_per_epoch))
    if verbose:
        print(f"calibrating a σ-conditioned logistic discriminator: {steps} steps, σ in "
              f"[{sigma_range[0]:.3g}, {sigma_range[1]:.3g}]" + (", reusing the given discriminator" if
                                                                  given is not None and reuse_discriminator else ""))
    callbacks = list(callbacks or [])
    if backup_dir is not None:
        backup = resume.calibration_backup(backup_dir, {
            "real_data": resume.fingerprint(real), "generator": generator.name, "loss": loss,
            "latent_shape": list(latent_shape),
            "sigma_range": list(sigma_range), "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "hidden": list(hidden), "reuse_discriminator": bool(given is not None and reuse_discriminator),
            "validation_fraction": validation_fraction, "seed": seed, "fourier_features": fourier_features}
            | ({"labels": resume.fingerprint(labels), "n_classes": n_classes} if conditional else {}))
        callbacks.insert(0, backup)  # first: it saves an epoch before other callbacks can stop the run
        if verbose and os.path.exists(os.path.join(os.fspath(backup_dir), "training_metadata.json")):
            print(f"resuming the interrupted calibration backed up in {os.fspath(backup_dir)}")
    trainer.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=1 if verbose else 0, shuffle=False,
                callbacks=callbacks)
    options = dict(stage_options or {})
    if conditional:
        options.update(train_labels=train_labels, heldout_labels=heldout_labels, n_classes=n_classes)
        # Class-conditional stages keep the settings issue 16 measured (four moves of ε = 0.5 on a fixed σ ratio):
        # with the unconditional defaults (ε = 1, the adaptive schedule) ring_classes_cgan's refined samples fell
        # off their class's modes (own-class share 0.965 → 0.900 in class 1) and class 1 came to copy its
        # training samples (nn ratio 0.64): the copying check watches all classes' particles together.
        for key, value in _CONDITIONAL_STAGE_OPTIONS.items():
            options.setdefault(key, value)
    stage_fields = (_calibrate_stages(generator, train, heldout, latent_shape, seed, verbose, options)
                    if stages else {})
    flow = GANFlow(generator, calibrator, sigma_range=sigma_range, latent_shape=latent_shape,
                   **({"n_classes": n_classes} if conditional else {}), **stage_fields)
    flow.diagnostics = diagnose(flow, train, heldout, seed=seed,
                                **({"train_labels": train_labels, "heldout_labels": heldout_labels}
                                   if conditional else {}))
    if stages:
        flow.diagnostics["stages"] = stage_fields["stages"].get("report", [])
    flow.diagnostics.update({"steps": steps, "batch_size": global_batch, "sigma_range": list(sigma_range),
                             "reused_discriminator": bool(given is not None and reuse_discriminator),
                             "given_loss": loss, "n_train": len(train), "n_heldout": len(heldout),
                             "given_output": _given_output(calibrator)})
    if verbose:
        print(format_diagnostics(flow.diagnostics))
    if backup_dir is not None:
        resume.remove_backup(backup_dir)
    return flow


def _n_classes(generator, labels, n_classes):
    """K: given, else the width of the generator's one-hot label input, else max(labels) + 1."""
    if n_classes is not None:
        return _checks.positive_int(n_classes, "n_classes")
    shape = tuple(generator.inputs[1].shape)
    if len(shape) == 2 and shape[1] is not None and shape[1] > 1:
        return int(shape[1])
    return int(labels.max()) + 1 if len(labels) else 1


def _calibrate_stages(generator, train, heldout, latent_shape, seed, verbose, options):
    """The staged refinement's fields of a GANFlow: the trusted stages' discriminator weights, σ's and step
    sizes, the data's per-coordinate range (the box) and diameter (the Tweedie bound), and the stage report.

    The given discriminator is not fed to the stages (measured on the digits DCGAN: Fréchet distance 6.26
    with it, 5.71 without, at twice the time; docs/convert.md)."""
    calibration = staged.calibrate_stages(generator, train, heldout, latent_shape=latent_shape, seed=seed,
                                          verbose=verbose, **options)
    used = [k for k in range(calibration.n_trusted) if calibration.report[k].get("moves", True)]
    flat = train.reshape(len(train), -1)
    subset = flat[np.random.default_rng(seed).choice(len(flat), min(len(flat), 2048), replace=False)]
    squared = (subset**2).sum(1)
    diameter = float(np.sqrt(max((squared[:, None] + squared[None, :] - 2 * subset @ subset.T).max(), 0.0)))
    low, high = calibration.bounds
    return {
        "stages": {
            "sigmas": [float(calibration.sigmas[k]) for k in used],
            "step_sizes": [float(calibration.step_sizes[k]) for k in used],
            "flow_steps": int(calibration.flow_steps),
            "noise_scale": float(calibration.noise_scale),
            "noise_levels": [float(calibration.noise_levels[k]) for k in used],
            "box": [np.asarray(low).tolist(), np.asarray(high).tolist()],
            "max_displacement": diameter,
            "report": calibration.report,
            "sigma_search": list(calibration.sigma_search),
        },
        "stage_discriminator": calibration.model,
        "stage_weights": _trainable_stage_weights(calibration, used) if used else None,
    }


def _trainable_stage_weights(calibration, stages):
    """The chosen stages' trainable weights, stacked per trainable variable (the non-trainable ones, Fourier
    frequencies and the frozen given discriminator, are the same at every stage)."""
    positions = {variable.path: index for index, variable in enumerate(calibration.model.weights)}
    order = [positions[variable.path] for variable in calibration.model.trainable_variables]
    return [np.stack([calibration.weights[k][index] for k in stages]) for index in order]


def _given_output(calibrator):
    """How the given discriminator's output was read (for the report), or None when it is not reused."""
    try:
        feature = calibrator.get_layer("given_discriminator")
    except ValueError:
        return None
    if feature.probability:
        return "probability (the model ends in a sigmoid): its logit log D - log(1 - D) is used"
    return "raw output" if feature.loss_name is None else f"output through the {feature.loss_name} link"


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
