"""Command line: ``gan2flow demo | train | convert | refine | compare`` (also ``python -m gan2flow``).

Errors in user input print one line (``gan2flow: error: ...``) and exit with status 2 (other failures:
one line too, status 1); pass ``--traceback`` to see the full trace. ``train`` and ``convert`` back up
their state in the output folder after every epoch: rerunning the same command after a kill resumes
(:mod:`gan2flow.resume`). The demos and ``compare`` run the experiments in :mod:`gan2flow.experiments`.
TensorFlow's C++ start-up log is hidden unless ``GAN2FLOW_TF_LOG=1`` (:mod:`gan2flow._startup`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

__all__ = ["main", "build_parser"]


def _demo(args):
    from gan2flow.experiments import demo

    if args.dataset == "digits":
        if args.kernel:
            raise _CommandLineError("`--kernel` runs on grid25 only; drop it or `--dataset digits`.")
        from gan2flow.experiments import digits

        digits.run(out_dir=args.out or "gan2flow-out/digits", seed=args.seed, quick=args.quick)
    elif args.kernel:
        demo.kernel_demo(out_dir=args.out or "gan2flow-out/kernel-demo", seed=args.seed)
    else:
        demo.gan_demo(out_dir=args.out or "gan2flow-out/demo", seed=args.seed, quick=args.quick)
    return 0


# --------------------------------------------------------------------------------------------------
# train / convert / refine: the pipeline a user runs on their own data (docs/convert.md)

_TOY_DEFAULT_SAMPLES = 10000


class _CommandLineError(ValueError):
    """A bad command-line value, already phrased with the flag's name."""


@contextlib.contextmanager
def _flag_names(names):
    """Re-raise library ``ValueError``s with the command-line names of the arguments they name.

    Library messages name Python arguments in backticks (```steps```); on the command line the user
    typed ``--steps``, so the one-line error should say that.
    """
    try:
        yield
    except ValueError as error:
        message = str(error)
        for name, flag in names.items():
            message = message.replace(f"`{name}`", f"`{flag}`")
        if message == str(error):
            raise
        raise ValueError(message) from error


def _positive(value, flag, *, allow_none=False, allow_zero=False):
    """``_checks.positive_int`` under the flag's name (None passes when ``allow_none``)."""
    from gan2flow import _checks

    if value is None and allow_none:
        return None
    return _checks.positive_int(value, flag, allow_zero=allow_zero)


def _positive_float(value, flag):
    """``_checks.positive_float`` under the flag's name."""
    from gan2flow import _checks

    return _checks.positive_float(value, flag)


def _with_suffix(path, suffix, flag):
    if not path.endswith(suffix):
        raise _CommandLineError(f"`{flag}` must be a path ending in {suffix}, got {path!r}.")
    return path


def _load_array(path, flag):
    """A finite float32 array [n, ...] from a ``.npy`` file (``gan2flow.adapters.load_array``); errors name ``flag``."""
    from gan2flow import adapters

    try:
        return adapters.load_array(os.fspath(path), flag)
    except ValueError as error:
        raise _CommandLineError(str(error)) from None


def _save_model(model, path):
    """``model.save`` to a ``.keras`` file, atomically (a killed run never leaves half a file)."""
    from gan2flow import _io

    return _io.atomic_write(path, model.save, ".keras")


def _sigma_range(args, real, *, none_for_default=False):
    """(σ_min, σ_max) from the flags; a missing end defaults from the data's spread, as in convert.

    With ``none_for_default`` and neither flag given: None (the library picks its own default).
    """
    from gan2flow import sigmas

    if none_for_default and args.sigma_min is None and args.sigma_max is None:
        return None

    default_min, default_max = sigmas.range_from_data(real)
    high = default_max if args.sigma_max is None else args.sigma_max
    low = (high / 100.0 if args.sigma_max is not None else default_min) if args.sigma_min is None else args.sigma_min
    if not 0 < low <= high:
        raise _CommandLineError(
            f"`--sigma-min`/`--sigma-max` must satisfy 0 < sigma_min <= sigma_max, got {low:g} and {high:g}.")
    return (float(low), float(high))


def _training_data(args):
    """(samples, description) for ``train``: ``--data`` or ``--toy``."""
    import numpy as np

    from gan2flow import toys

    if args.toy is not None:
        n = _positive(_TOY_DEFAULT_SAMPLES if args.n_samples is None else args.n_samples, "--n-samples")
        return toys.sample(toys.get(args.toy), n, seed=args.seed), f"toy {args.toy} ({n} samples)"
    if args.n_samples is not None:
        raise _CommandLineError("`--n-samples` only applies to --toy (with --data every row is used).")
    real = _load_array(args.data, "--data")
    if real.ndim not in (2, 4):
        raise _CommandLineError(
            f"`--data`: samples must be vectors [n, d] or images [n, H, W, C]; got shape {real.shape}.")
    return np.ascontiguousarray(real), f"{args.data} {real.shape}"


def _train(args):
    import time

    import keras

    from gan2flow import _io, losses, models, resume, training

    started = time.perf_counter()
    _positive(args.epochs, "--epochs")
    _positive(args.batch_size, "--batch-size")
    _positive(args.latent_dim, "--latent-dim", allow_none=True)
    _positive(args.seed, "--seed", allow_zero=True)
    _positive_float(args.learning_rate, "--learning-rate")
    if args.d_learning_rate is not None:
        _positive_float(args.d_learning_rate, "--d-learning-rate")
    d_learning_rate = args.learning_rate if args.d_learning_rate is None else args.d_learning_rate
    real, description = _training_data(args)
    sample_shape = tuple(real.shape[1:])
    images = len(sample_shape) == 3
    latent_dim = args.latent_dim or (16 if images else 8)
    sigma_range = _sigma_range(args, real)
    batch_size = min(args.batch_size, len(real))
    out = args.out or "gan2flow-out/train"
    settings = {
        "data": description, "data_sha1": resume.content_hash(real), "sample_shape": list(sample_shape),
        "model": "conv" if images else "mlp", "loss": losses.get(args.loss).name, "objective": args.objective,
        "penalty": args.penalty, "latent_dim": latent_dim, "batch_size": batch_size,
        "sigma_range": list(sigma_range), "learning_rate": args.learning_rate, "seed": args.seed,
    }
    if d_learning_rate != args.learning_rate:  # only then: backups of runs without the flag still resume
        settings["d_learning_rate"] = d_learning_rate

    backup_dir = os.path.join(out, "backup")
    changed = resume.changed_settings(backup_dir, settings)
    if changed:
        raise _CommandLineError(
            f"`--out`: {backup_dir} holds an interrupted run with other settings ({', '.join(changed)}); "
            "rerun with the same settings to resume it, or delete that folder to start over.")

    keras.utils.set_random_seed(args.seed)
    with _flag_names({"latent_dim": "--latent-dim", "generator_objective": "--objective", "loss": "--loss",
                      "penalty": "--penalty", "sigma_range": "--sigma-min/--sigma-max"}):
        if images:
            generator = models.conv_generator(latent_dim, sample_shape)
            discriminator = models.conv_discriminator(sample_shape)
        else:
            generator = models.mlp_generator(latent_dim, sample_shape)
            discriminator = models.mlp_discriminator(sample_shape)
        gan = training.SDGAN(generator, discriminator, loss=args.loss, generator_objective=args.objective,
                             sigma_range=sigma_range, penalty=args.penalty, seed=args.seed)
    gan.compile(d_optimizer=keras.optimizers.Adam(d_learning_rate, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(args.learning_rate, beta_1=0.5))

    # Resume: restore the backup (weights, optimizer states, epoch) before building the data, so that
    # epoch k gets the same shuffle (seeded by (seed, k)) as in an uninterrupted run.
    backup, start = resume.restore_backup(gan, backup_dir)
    resume.write_settings(backup_dir, settings)
    # SDGAN's noise generator state is not part of its weights file (keras SeedGenerator): the epoch log
    # keeps it, so a resumed run draws the same z, σ and noise as an uninterrupted one.
    noise_state = getattr(getattr(gan, "_seed_generator", None), "state", None)
    epoch_log = resume.EpochLog(os.path.join(backup_dir, "epochs.json"), noise_state)
    if start:
        epoch_log.restore(start)

    steps_per_epoch = len(real) // batch_size
    print(f"training an SDGAN on {description}: {settings['model']} models, latent {latent_dim}, "
          f"loss {settings['loss']}, objective {args.objective}, σ in [{sigma_range[0]:.3g}, {sigma_range[1]:.3g}], "
          f"{args.epochs} epochs × {steps_per_epoch} steps of {batch_size}")
    if start:
        print(f"resuming the interrupted run in {backup_dir} at epoch {start + 1}/{args.epochs}")
    if start < args.epochs:
        dataset = resume.epoch_batches(real, batch_size, args.seed, first_epoch=start, epochs=args.epochs)
        gan.fit(dataset, epochs=args.epochs, steps_per_epoch=steps_per_epoch, callbacks=[epoch_log, backup],
                shuffle=False, verbose=1)
    else:
        backup.on_train_end()
    history = epoch_log.history()

    files = {
        "generator": _save_model(generator, os.path.join(out, "generator.keras")),
        "discriminator": _save_model(discriminator, os.path.join(out, "discriminator.keras")),
    }
    data_path = None
    if args.toy is not None:  # so that `gan2flow convert --data` has the training samples
        data_path = files["data"] = _io.save_npy(os.path.join(out, "data.npy"), real)
    files["history"] = os.path.abspath(os.path.join(out, "history.json"))
    _io.write_json(files["history"], {
        "history": history, "epochs": len(epoch_log.epochs), "resumed_at_epoch": start or None, "settings": settings,
        "seconds": time.perf_counter() - started, "files": files})
    for name, path in files.items():
        print(f"wrote {name}: {path}")
    print("next: gan2flow convert --generator {} --discriminator {} --data {} --loss {}".format(
        files["generator"], files["discriminator"], data_path or args.data, settings["loss"]))
    return 0


def _convert(args):
    import time

    from gan2flow import _io, conversion

    started = time.perf_counter()
    _positive(args.steps, "--steps")
    _positive(args.batch_size, "--batch-size")
    _positive(args.latent_dim, "--latent-dim", allow_none=True)
    _positive_float(args.learning_rate, "--learning-rate")
    _positive(args.seed, "--seed", allow_zero=True)
    if args.output is not None:
        flow_path = _with_suffix(args.output, ".keras", "--output")
        diagnostics_path = flow_path[: -len(".keras")] + ".diagnostics.json"
    else:
        out = args.out or "gan2flow-out/convert"
        flow_path, diagnostics_path = os.path.join(out, "flow.keras"), os.path.join(out, "diagnostics.json")
    # The calibration backs up every epoch here; rerunning the same command after a kill resumes it.
    backup_dir = flow_path[: -len(".keras")] + ".backup" if args.output is not None else os.path.join(out, "backup")
    from gan2flow import adapters

    generator = adapters.load_model(args.generator, "--generator")
    discriminator = None if args.discriminator is None else \
        adapters.load_model(args.discriminator, "--discriminator")
    real = _load_array(args.data, "--data")
    try:
        output_shape = tuple(generator.output_shape[1:])
    except Exception:  # noqa: BLE001 - a subclassed model without a static output shape: convert checks it
        output_shape = None
    if output_shape is not None and None not in output_shape and output_shape != tuple(real.shape[1:]):
        raise _CommandLineError(
            f"`--data`: samples have shape {tuple(real.shape[1:])} but the generator outputs {output_shape}.")
    sigma_range = _sigma_range(args, real, none_for_default=True)
    with _flag_names({"generator": "--generator", "discriminator": "--discriminator", "real_data": "--data",
                         "loss": "--loss", "latent_dim": "--latent-dim", "steps": "--steps",
                         "batch_size": "--batch-size", "sigma_range": "--sigma-min/--sigma-max",
                         "learning_rate": "--learning-rate", "labels": "--labels",
                         "backup_dir": "--output" if args.output is not None else "--out"}):
        flow = conversion.convert(generator, discriminator, real, loss=args.loss, latent_dim=args.latent_dim,
                                  sigma_range=sigma_range, steps=args.steps, batch_size=args.batch_size,
                                  learning_rate=args.learning_rate, seed=args.seed, verbose=1,
                                  backup_dir=backup_dir, stages=not args.no_stages, labels=args.labels)
    flow.diagnostics["seconds"] = time.perf_counter() - started
    flow.diagnostics["inputs"] = {"generator": args.generator, "discriminator": args.discriminator,
                                  "data": args.data, "loss": args.loss, "seed": args.seed}
    if args.labels is not None:
        flow.diagnostics["inputs"]["labels"] = args.labels
    _save_model(flow, flow_path)
    _io.write_json(diagnostics_path, flow.diagnostics)
    print(f"wrote flow: {os.path.abspath(flow_path)}")
    print(f"wrote diagnostics: {os.path.abspath(diagnostics_path)}")
    if not flow.diagnostics.get("good_enough", True):
        print("the calibration has warnings (above): consider more --steps or more data before refining")
    print(f"next: gan2flow refine --flow {flow_path} --n 1000 "
          f"{'--label 0 ' if flow.n_classes is not None else ''}--out samples.npy")
    return 0


def _refine(args):
    import numpy as np

    from gan2flow import _io, conversion, flows

    _positive(args.n, "--n")
    _positive(args.batch_size, "--batch-size", allow_none=True)
    _positive(args.levels, "--levels", allow_none=True)
    if args.step_scale is not None:
        _positive_float(args.step_scale, "--step-scale")
    _positive(args.seed, "--seed", allow_zero=True)
    _with_suffix(args.out, ".npy", "--out")
    from gan2flow import adapters

    flow = adapters.load_model(args.flow, "--flow")
    if not isinstance(flow, conversion.GANFlow):
        raise _CommandLineError(f"`--flow`: {args.flow!r} holds a {type(flow).__name__}, not a gan2flow flow "
                                "(make one with `gan2flow convert`).")
    options = {}
    if not args.no_refine:
        options = {"batch_size": args.batch_size, "verbose": True}
        if args.space == "data":
            options["field"] = args.field
        for name, value in (("levels", args.levels), ("step_scale", args.step_scale)):
            if value is not None:
                options[name] = value
    labels = args.label if args.label is not None else args.labels
    what = "raw generator samples" if args.no_refine else f"samples refined in {args.space} space"
    print(f"drawing {args.n} {what} (seed {args.seed})"
          + (f" of class {args.label}" if args.label is not None else ""))
    try:
        with _flag_names({"n": "--n", "batch_size": "--batch-size", "levels": "--levels", "seed": "--seed",
                          "step_scale": "--step-scale", "field": "--field", "labels": "--label/--labels"}):
            x = flow.sample(args.n, refine=not args.no_refine, space=args.space, seed=args.seed, labels=labels,
                            **options)
    except flows.FlowDivergenceError as error:
        raise ValueError(
            f"`--step-scale`: refinement diverged at sigma={error.sigma:.3g} (step size {error.step_size:.3g}); "
            "rerun with a smaller --step-scale (default 0.5 in data space, 0.2 in latent space)") from None
    x = np.asarray(x, np.float32)
    path = _io.save_npy(args.out, x)
    print(f"wrote samples {x.shape}: {path}")
    return 0


_EXAMPLES_TRAIN = """\
examples:
  gan2flow train --toy grid25 --epochs 20 --out runs/grid25
  gan2flow train --data images.npy --objective flow_regression --epochs 50 --out runs/images
  gan2flow train --data x.npy --loss hinge --objective non_saturating --out runs/hinge

Vectors [n, d] get MLP models, images [n, H, W, C] small convolutional ones (gan2flow.models).
Scale your data (e.g. to [-1, 1]) before training. A killed run resumes where it left off when
rerun with the same command (state in OUT/backup, removed when training ends).
"""

_EXAMPLES_CONVERT = """\
examples:
  gan2flow convert --generator G.keras --discriminator D.keras --data x.npy --loss hinge
  gan2flow convert --generator runs/grid25/generator.keras \\
      --discriminator runs/grid25/discriminator.keras --data runs/grid25/data.npy --out runs/flow
  gan2flow convert --generator G.keras --data x.npy --output my_flow.keras   # no discriminator
  gan2flow convert --generator cG.keras --discriminator cD.keras --data x.npy --labels y.npy   # conditional

The diagnostics table lists, per noise level sigma, the calibrated discriminator's held-out
logistic loss (chance = 1.386; lower is better) next to its training loss (a gap means
overfitting), its accuracy, two KL estimates and the checks log E_q[r] and log E_p[1/r], which are
~0 for an exact density ratio. See docs/convert.md.
"""

_EXAMPLES_REFINE = """\
examples:
  gan2flow refine --flow runs/flow/flow.keras --n 1000 --out refined.npy
  gan2flow refine --flow flow.keras --n 1000 --space latent --out latent_refined.npy
  gan2flow refine --flow flow.keras --n 1000 --no-refine --out raw.npy     # the GAN's own samples
  gan2flow refine --flow conditional.keras --n 1000 --label 3 --out class3.npy   # a conditional flow

The same --seed gives the same samples, bit for bit. Data-space refinement couples the samples of
one batch (its drift correction is a kernel estimate over them): keep --batch-size in the
thousands, and the same --batch-size to reproduce a result.
"""


def _add_sigma_range_arguments(parser):
    """--sigma-min/--sigma-max of train and convert (read back by _sigma_range)."""
    parser.add_argument("--sigma-min", type=float, default=None, metavar="S",
                        help="smallest noise level (default sigma_max / 100)")
    parser.add_argument("--sigma-max", type=float, default=None, metavar="S",
                        help="largest noise level (default: the data's RMS spread per coordinate)")


def _add_pipeline_commands(commands):
    """The ``train``, ``convert`` and ``refine`` subcommands."""
    from argparse import RawDescriptionHelpFormatter

    from gan2flow import losses  # already imported with the package; gives the --loss choices

    loss_names = losses.names()

    train = commands.add_parser(
        "train", help="train an SD-consistent GAN (SDGAN) on a .npy array or a toy set",
        formatter_class=RawDescriptionHelpFormatter, epilog=_EXAMPLES_TRAIN,
        description="Train a GAN whose discriminator is a score-difference estimator (gan2flow.SDGAN): the\n"
                    "discriminator sees real and generated samples noised with the same sigma and is told\n"
                    "sigma, so its gradient drives a score-difference flow. Writes OUT/generator.keras,\n"
                    "OUT/discriminator.keras and OUT/history.json (and OUT/data.npy for --toy).")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="X.npy", help="training samples, [n, d] vectors or [n, H, W, C] images")
    source.add_argument("--toy", choices=["grid25", "ring8"], help="a built-in 2-D Gaussian mixture (no download)")
    train.add_argument("--n-samples", type=int, default=None, metavar="N",
                       help=f"samples drawn from --toy (default {_TOY_DEFAULT_SAMPLES})")
    train.add_argument("--loss", default="logistic", choices=loss_names, help="discriminator loss (default logistic)")
    train.add_argument("--objective", default="logit",
                       choices=["logit", "flow_regression", "minimax", "non_saturating"],
                       help="generator objective (default logit: the exact SD flow at the optimum)")
    train.add_argument("--penalty", default=None, choices=["r1", "gradient_penalty"],
                       help="gradient regularisation of the discriminator (default none)")
    train.add_argument("--epochs", type=int, default=20, metavar="N", help="passes over the data (default 20)")
    train.add_argument("--batch-size", type=int, default=256, metavar="B", help="batch size (default 256)")
    train.add_argument("--latent-dim", type=int, default=None, metavar="D",
                       help="latent size (default 8 for vectors, 16 for images)")
    train.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR",
                       help="Adam learning rate (default 1e-3)")
    train.add_argument("--d-learning-rate", type=float, default=None, metavar="LR",
                       help="the discriminator's Adam learning rate (default: --learning-rate); on images a "
                            "discriminator 5-10x faster than the generator avoids collapse (docs/training.md)")
    _add_sigma_range_arguments(train)
    train.add_argument("--out", default=None, metavar="DIR", help="output folder (default gan2flow-out/train)")
    train.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    train.set_defaults(handler=_train)

    convert = commands.add_parser(
        "convert", help="convert a trained GAN (G.keras, D.keras) into a calibrated flow",
        formatter_class=RawDescriptionHelpFormatter, epilog=_EXAMPLES_CONVERT,
        description="Turn any trained Keras GAN into a score-difference flow (gan2flow.convert): calibrate a\n"
                    "sigma-conditioned logistic discriminator against the frozen generator on noised real\n"
                    "data, reusing the given discriminator's output as a feature, print the calibration\n"
                    "diagnostics, and save the flow (.keras) with its diagnostics (JSON).")
    convert.add_argument("--generator", required=True, metavar="G.keras", help="the generator, z -> x")
    convert.add_argument("--discriminator", default=None, metavar="D.keras",
                         help="the discriminator, x (or [x, sigma]) -> raw output; omit to calibrate from scratch")
    convert.add_argument("--data", required=True, metavar="X.npy",
                         help="real samples, shaped like the generator's output")
    convert.add_argument("--loss", default=None, choices=loss_names,
                         help="the loss the discriminator was trained with (maps its output through the "
                              "loss's link; default: use the raw output)")
    convert.add_argument("--steps", type=int, default=3000, metavar="N", help="calibration steps (default 3000)")
    convert.add_argument("--batch-size", type=int, default=256, metavar="B",
                         help="calibration batch size (default 256)")
    convert.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR",
                         help="calibration learning rate (default 1e-3)")
    convert.add_argument("--latent-dim", type=int, default=None, metavar="D",
                         help="latent size, only for a generator without Keras inputs")
    _add_sigma_range_arguments(convert)
    where = convert.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, metavar="DIR",
                       help="output folder for flow.keras and diagnostics.json (default gan2flow-out/convert)")
    where.add_argument("--output", default=None, metavar="F.keras",
                       help="write the flow to this file (diagnostics to F.diagnostics.json) instead")
    convert.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    convert.add_argument("--no-stages", action="store_true",
                         help="skip the staged calibration (faster; refinement then uses --field calibrated)")
    convert.add_argument("--labels", default=None, metavar="LABELS.npy",
                         help="a class-conditional GAN (generator [z, label], discriminator [x, label]): the integer "
                              "class of each row of --data (docs/convert.md, 'Conditional GANs')")
    convert.set_defaults(handler=_convert)

    refine = commands.add_parser(
        "refine", help="draw samples from a flow, refined in data or latent space, into a .npy file",
        formatter_class=RawDescriptionHelpFormatter, epilog=_EXAMPLES_REFINE,
        description="Load a flow made by `gan2flow convert`, draw N generator samples and refine them along\n"
                    "the calibrated score difference: in data space (through the staged discriminators, or\n"
                    "sigma-annealed and drift-corrected along the generator-calibrated one: --field)\n"
                    "or in latent space (Langevin dynamics on log p0(z) + log r(G(z)), outputs stay on the\n"
                    "generator's range). Writes the samples as a .npy array [N, ...].")
    refine.add_argument("--flow", required=True, metavar="F.keras", help="a flow saved by `gan2flow convert`")
    refine.add_argument("--n", type=int, required=True, metavar="N", help="number of samples")
    refine.add_argument("--out", required=True, metavar="SAMPLES.npy", help="output .npy file (folders are created)")
    refine.add_argument("--space", default="data", choices=["data", "latent"], help="where to refine (default data)")
    refine.add_argument("--no-refine", action="store_true", help="write the raw generator samples instead")
    refine.add_argument("--field", default="auto", choices=["auto", "staged", "calibrated"],
                        help="data space: 'staged' (the default of flows converted with stages: the discriminators "
                             "calibrated on the particles stage by stage) or 'calibrated' (the generator-calibrated "
                             "discriminator over a schedule, drift-corrected); auto picks staged when the flow has it")
    refine.add_argument("--levels", type=int, default=None, metavar="L",
                        help="noise levels of the schedule of --field calibrated and of --space latent (default 40)")
    refine.add_argument("--step-scale", type=float, default=None, metavar="E",
                        help="step size factor, eta = E * sigma^2, of --field calibrated (default 0.5) and of "
                             "--space latent (default 0.2); lower it if refinement diverges")
    refine.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="refine this many samples at a time (default: all at once)")
    refine.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    classes = refine.add_mutually_exclusive_group()
    classes.add_argument("--label", type=int, default=None, metavar="K",
                         help="a class-conditional flow: draw every sample of class K")
    classes.add_argument("--labels", default=None, metavar="LABELS.npy",
                         help="a class-conditional flow: the class of each of the N samples (integers, shape [N])")
    refine.set_defaults(handler=_refine)


# --------------------------------------------------------------------------------------------------
# compare: which GAN losses give score-difference estimators (docs/losses.md, "Measured results")

def _names(text, flag, choices):
    """A comma-separated list of names from ``choices`` (a one-line error naming ``flag`` otherwise)."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [value for value in values if value not in choices]
    if not values or unknown:
        raise _CommandLineError(
            f"`{flag}` must be a comma-separated list of names from {', '.join(choices)}; got {text!r}.")
    return values


def _seed_list(text):
    """``--seeds``: comma-separated distinct integers >= 0."""
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise _CommandLineError(f"`--seeds` must be comma-separated integers, got {text!r}.") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise _CommandLineError(f"`--seeds` must be distinct comma-separated integers >= 0, got {text!r}.")
    return seeds


def _compare(args):
    if args.refiners:
        return _compare_refiners(args)
    if args.members is not None or args.methods is not None or args.n is not None:
        raise _CommandLineError("`--members`, `--methods` and `--n` apply to `gan2flow compare --refiners`.")
    from gan2flow import losses as loss_registry
    from gan2flow import models
    from gan2flow.experiments import compare

    losses = None if args.losses is None else _names(args.losses, "--losses", loss_registry.names())
    targets = compare.PROBLEMS if args.targets is None else _names(args.targets, "--targets", compare.PROBLEMS)
    _positive(args.seed, "--seed", allow_zero=True)
    seeds = None if args.seeds is None else _seed_list(args.seeds)
    options = None
    if args.parametrisation is not None:
        options = {"parametrisation": _names(args.parametrisation, "--parametrisation", models.PARAMETRISATIONS)[0]}
    training = {}
    if args.discriminator_training is not None:
        training["discriminator_training"] = _names(args.discriminator_training, "--discriminator-training",
                                                    tuple(compare.budgets.DISCRIMINATOR_TRAININGS))[0]
    compare.run(args.out or "gan2flow-out/compare", quick=args.quick, seed=args.seed, seeds=seeds, losses=losses,
                targets=targets, objectives=() if args.no_objectives else compare.GENERATOR_OBJECTIVES,
                discriminator_options=options, **training)
    return 0


def _compare_refiners(args):
    """``gan2flow compare --refiners``: every refiner on every zoo GAN (docs/refiners.md)."""
    from gan2flow import refiners
    from gan2flow.experiments import refiners as experiment
    from gan2flow.experiments import zoo

    if (args.losses is not None or args.targets is not None or args.no_objectives or args.parametrisation is not None
            or args.discriminator_training is not None):
        raise _CommandLineError("`--losses`, `--targets`, `--no-objectives`, `--parametrisation` and "
                                "`--discriminator-training` apply to the loss comparison, not to `--refiners`.")
    members = None if args.members is None else _names(args.members, "--members", zoo.names())
    methods = None if args.methods is None else _names(args.methods, "--methods", refiners.names())
    seeds = None if args.seeds is None else _seed_list(args.seeds)
    if args.n is not None:
        _positive(args.n, "--n")
    experiment.run(args.out or "gan2flow-out/refiners", quick=args.quick, members=members, seeds=seeds, n=args.n,
                   methods=methods)
    return 0


def _add_compare_command(commands):
    """The ``compare`` subcommand."""
    from argparse import RawDescriptionHelpFormatter

    compare = commands.add_parser(
        "compare", help="measure every GAN loss against the exact score difference (tables, CSV, plots)",
        formatter_class=RawDescriptionHelpFormatter,
        description="For every loss in gan2flow.losses.names(), train a sigma-conditioned discriminator against\n"
                    "a frozen affine generator (its law q is a known Gaussian) on Gaussian-mixture targets\n"
                    "whose smoothed scores are exact (2-D ring of 8 modes; 16-D mixture of 8), then per sigma:\n"
                    "the cosine and relative error between grad link(T) (grad T for hinge and Wasserstein) and\n"
                    "the exact score difference at noised source samples, also after the best single scale;\n"
                    "then flow the source along each field and score the samples (sliced W2, MMD, modes,\n"
                    "high-quality %). A second table trains full SDGANs with each generator objective\n"
                    "(minimax, non_saturating, logit, flow_regression) at an equal budget.\n\n"
                    "Writes report.md, fields.csv, flows.csv, training.csv, objectives.csv, seeds.csv, results.json\n"
                    "(seeds, budgets, schedules, wall times) and PNG plots into --out. The full budget took\n"
                    "about 9 CPU-minutes before its default added denoising score matching and 256-wide\n"
                    "discriminators (10 minutes on 2 cores, more when they are shared; each costs more:\n"
                    "DSM 20-65 %, the widths 1.5-2x the training time); --quick about 3 (192 s with DSM).",
        epilog="examples:\n"
               "  gan2flow compare --quick --out /tmp/compare-quick\n"
               "  gan2flow compare --losses logistic,hinge --targets 2d --seed 1\n"
               "  gan2flow compare --quick --losses logistic --seeds 0,1,2 --no-objectives\n"
               "  gan2flow compare --quick --parametrisation plain --discriminator-training previous"
               "   # as before issue 15\n"
               "  gan2flow compare --refiners --quick          # DRS, MH-GAN, DOT, DDLS, DGflow, gan2flow on the zoo\n"
               "  gan2flow compare --refiners --members digits_dcgan --seeds 0,1,2 --n 1000",
    )
    compare.add_argument("--quick", action="store_true",
                         help="small budget (about 3 minutes): 300 training steps per loss, smaller networks "
                              "and samples; a smoke test, its numbers are not the measured results")
    compare.add_argument("--out", default=None,
                         help="output folder (default gan2flow-out/compare; gan2flow-out/refiners with --refiners)")
    compare.add_argument("--seed", type=int, default=0,
                         help="base seed for data, initial weights, noise and metrics (default 0)")
    compare.add_argument("--losses", default=None, metavar="NAMES",
                         help="comma-separated subset of losses (default: all of gan2flow.losses.names())")
    compare.add_argument("--targets", default=None, metavar="NAMES",
                         help="comma-separated problems among 2d,16d (default: both)")
    compare.add_argument("--no-objectives", action="store_true",
                         help="skip the generator-objective comparison")
    compare.add_argument("--refiners", action="store_true",
                         help="instead: every refiner of gan2flow.refiners (DRS, MH-GAN, DOT, DDLS, DGflow, gan2flow's "
                              "own) on every zoo GAN, converted once and cached in OUT/flows; refiners.csv, "
                              "refiners.md, refiners.json and sample figures (docs/refiners.md). Full: 7 members, "
                              "3 seeds, 1 000 samples (measured: 17 minutes on 2 shared cores, after 8 minutes "
                              "of conversions); --quick: the 4 fast members, 2 seeds, 500 samples (about 2 "
                              "minutes, plus 3-4 of conversions on the first run)")
    compare.add_argument("--members", default=None, metavar="NAMES",
                         help="with --refiners: comma-separated zoo members (default: all)")
    compare.add_argument("--methods", default=None, metavar="NAMES",
                         help="with --refiners: comma-separated refiners (default: all of gan2flow.refiners.names())")
    compare.add_argument("--seeds", default=None, metavar="S,S,...",
                         help="base seeds: the loss comparison runs once per seed and the report adds the headline "
                              "numbers as mean ± standard deviation (seeds.csv); the objective comparison runs as "
                              "many seeds. With --refiners: sampling seeds (default 0,1,2; 0,1 with --quick)")
    compare.add_argument("--parametrisation", default=None, metavar="NAME",
                         help="the discriminators' parametrisation, one of gan2flow.models.PARAMETRISATIONS, for "
                              "both comparisons (default: energy_difference for the loss comparison, plain for the "
                              "objectives; 'plain' with --discriminator-training previous reproduces the runs "
                              "before issue 15; docs/losses.md, 'Parametrisations')")
    compare.add_argument("--discriminator-training", default=None, metavar="NAME",
                         help="how the loss comparison trains its discriminators: 'sd_dsm' ('sd' plus denoising "
                              "score matching of weight 10 on the energy difference's bowls, SD-consistent losses "
                              "only), 'sd' (batch 1024, Adam 3e-3, R1 penalty 1e-3) or 'previous' (batch 256, Adam "
                              "1e-3, no penalty: the runs before issue 15). Default: 'sd_dsm' at both budgets, 'sd' "
                              "with another --parametrisation than energy_difference; pass 'sd' to turn DSM "
                              "off. The training that ran is in report.md and results.json; docs/losses.md, "
                              "'Denoising score matching on the bowls'")
    compare.add_argument("--n", type=int, default=None,
                         help="with --refiners: samples per refiner and seed (default 1000; 500 with --quick)")
    compare.set_defaults(handler=_compare)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gan2flow",
        description="Turn GANs into score-difference flows: train, convert, refine, compare.",
        epilog="TensorFlow's C++ start-up log (oneDNN and CPU notes, missing CUDA drivers, cuInit) is hidden;\n"
               "set GAN2FLOW_TF_LOG=1 to see it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="run the embedded demo (no data download, about a minute on 2 cores)",
        description="Train a small, visibly imperfect GAN on the 25-Gaussian grid, convert it into a flow, "
                    "refine its samples in data and latent space, print a metrics table and write a PNG "
                    "figure and a JSON of the numbers. With --kernel: the training-free kernel SD flow from "
                    "N(0, I) to the grid instead.",
    )
    demo.add_argument("--kernel", action="store_true", help="run the training-free kernel SD flow demo")
    demo.add_argument("--out", default=None, help="output folder (default gan2flow-out/demo or .../kernel-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="smaller budget (for smoke tests)")
    demo.add_argument("--dataset", choices=("grid25", "digits"), default="grid25",
                      help="grid25 (default) or digits: scikit-learn's 8x8 handwritten digits end to end "
                           "(conv GAN, conversion, refinement, SDGAN comparisons, image metrics, pictures; "
                           "about 6 minutes on 2 cores, under 3 with --quick; output gan2flow-out/digits)")
    demo.set_defaults(handler=_demo)
    _add_pipeline_commands(commands)
    _add_compare_command(commands)
    return parser


def main(argv=None):
    """Entry point of the ``gan2flow`` console script. Returns the exit status."""
    from gan2flow import _startup

    _startup.quiet_tensorflow_log()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("gan2flow: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, OSError, FloatingPointError) as error:
        if args.traceback:
            raise
        print(f"gan2flow: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - not a known input error: still one line, status 1
        if args.traceback:
            raise
        print(f"gan2flow: error: {type(error).__name__}: {_one_line(error)} (rerun with --traceback for details)",
              file=sys.stderr)
        return 1


def _one_line(error):
    """The line of an error message that says what went wrong.

    Errors raised while TensorFlow traces a function read ``in user code:``, the call stack, then the
    original message last: that last line is the one to show.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if lines[0].startswith("in user code:") else lines[0]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
