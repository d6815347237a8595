"""Handwritten digits end to end: a GAN trained the ordinary way, converted, refined, measured, pictured.

Real images that install with a package: scikit-learn's 8×8 digits (``sklearn.datasets.load_digits``,
1 797 images, 17 grey levels 0–16), scaled to [−1, 1] with a stratified held-out split.

The pipeline (:func:`run`, also ``gan2flow demo --dataset digits`` and ``examples/digits.py``):

1. :func:`train_gan`: a small conv GAN trained the ordinary way: non-saturating logistic loss on clean
   images, an unconditioned LeakyReLU discriminator, Adam(2e-4, β₁ = 0.5), as keras-io's DCGAN example
   (without its label noise, which moves the discriminator's optimum: shared/SD_FLOW.md §8).
2. :func:`gan2flow.convert`: calibrate a σ-conditioned discriminator against the frozen generator.
3. Refine the generator's samples in data space (:meth:`GANFlow.refine`) and in latent space
   (:meth:`GANFlow.refine_latent`) over one σ schedule.
4. For comparison, :func:`train_sdgan`: SDGANs trained directly with the ``logit`` and
   ``flow_regression`` generator objectives (shared/SD_FLOW.md §5), same generator, same budget.
5. Measure every sample set with :mod:`gan2flow.image_metrics` against the held-out images: Fréchet
   distance and k-NN precision/recall in the feature space of the toolkit's own digit classifier, and
   each sample's distance to its nearest training image (memorisation).
6. Write sample grids, a trajectory strip across σ, a nearest-neighbour histogram and a JSON of the
   numbers.

Why σ_min = 0.1: the images are quantised to steps of 1/8 in the [−1, 1] scale and the background is
exactly −1. Below about that step a discriminator separates real from generated images by the
quantisation alone, which says nothing about shapes; its gradient there is large and useless.

Example::

    from gan2flow.experiments import digits
    result = digits.run("gan2flow-out/digits", quick=True)
    print(result["table"])
"""
from __future__ import annotations

import os
import time

import numpy as np

from gan2flow import _checks, _io, datasets, image_metrics, plotting

__all__ = ["load", "train_gan", "train_sdgan", "run", "format_table", "FULL", "QUICK", "SIGMA_RANGE"]

#: Noise range of the latent-space refinement and of the SDGANs (see the module docstring). Conversion and
#: data-space refinement use gan2flow's defaults: nothing here is tuned for them.
SIGMA_RANGE = (0.1, 0.8)
#: The budgets of :func:`run` (measured on 2 CPU cores: about 6 minutes, and under 3 with ``quick``).
#: The SDGANs get as many steps as the GAN (a flow_regression step costs about twice a plain one).
FULL = dict(n=2000, latent_dim=16, gan_steps=2000, convert_steps=1500, sdgan_steps=2000,
            latent_levels=10, latent_step_scale=0.1, flow_steps=3, batch_size=64, classifier_epochs=30)
#: The quick GAN trains 1 200 steps: at 600 (FD 59.5) its stage discriminators saturate at σ 0.7 and the staged
#: refinement stops there (FD −0.4 %, recall 0.40 → 0.86; docs/digits.md).
QUICK = dict(FULL, n=1000, gan_steps=1200, convert_steps=400, sdgan_steps=300)


# --------------------------------------------------------------------------------------------------
# Data


#: scikit-learn's digits in [−1, 1] with a stratified held-out split: :func:`gan2flow.datasets.load_digits`.
load = datasets.load_digits


def _fit(gan, images, steps, batch_size, seed, verbose):
    epoch = max(1, min(steps, 500))
    gan.fit(datasets.shuffled_batches(images, batch_size, seed), steps_per_epoch=epoch,
            epochs=max(1, -(-steps // epoch)),
            verbose=2 if verbose else 0)


# --------------------------------------------------------------------------------------------------
# Models


def train_gan(images, *, latent_dim=16, steps=2000, batch_size=64, learning_rate=2e-4, seed=0, verbose=False):
    """Train a small conv GAN the ordinary way (stands for "a GAN someone else trained").

    Generator :func:`gan2flow.models.conv_generator` (tanh output); discriminator
    :func:`gan2flow.models.conv_discriminator` without σ input and with LeakyReLU; clean images (no noise
    proxies); logistic discriminator loss and the non-saturating generator loss −log D(G(z)); one
    discriminator step per generator step; Adam(learning_rate, β₁ = 0.5) for both. Runs through
    :class:`gan2flow.SDGAN` with ``sigma_range=(0, 0)``, which is exactly that plain GAN.

    Returns:
        (generator, discriminator): Keras models z [b, latent_dim] -> [b, 8, 8, 1] and x -> logit [b, 1].
    """
    import keras

    from gan2flow import models, training

    images = _checks.as_float_tensor(images, "images", rank=4).numpy()
    keras.utils.set_random_seed(seed)
    generator = models.conv_generator(latent_dim, images.shape[1:], output_activation="tanh")
    discriminator = models.conv_discriminator(images.shape[1:], sigma_conditioned=False, activation="leaky_relu")
    gan = training.SDGAN(generator, discriminator, loss="logistic", generator_objective="non_saturating",
                         sigma_range=(0.0, 0.0), seed=seed)
    gan.compile(d_optimizer=keras.optimizers.Adam(learning_rate, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(learning_rate, beta_1=0.5))
    _fit(gan, images, _checks.positive_int(steps, "steps"), batch_size, seed, verbose)
    return generator, discriminator


def train_sdgan(images, objective, *, latent_dim=16, steps=2000, batch_size=64, learning_rate=2e-4,
                d_learning_rate=2e-3, sigma_range=SIGMA_RANGE, flow_steps=3, seed=0, verbose=False):
    """Train an :class:`gan2flow.SDGAN` on the images with the ``"logit"`` or ``"flow_regression"`` objective.

    The same conv generator as :func:`train_gan`; a σ-conditioned conv discriminator (swish: its input
    gradient is the SD estimate); logistic loss on σ-paired noised images, σ log-uniform on
    ``sigma_range``; ``flow_steps`` Euler steps per generator update for ``"flow_regression"``;
    Adam(β₁ = 0.5) with ``learning_rate`` for the generator and ``d_learning_rate`` for the discriminator.

    The discriminator gets a 10× larger learning rate than the generator (measured, docs/digits.md):
    on noised images the noised real and fake sets overlap heavily, the logistic loss is nearly flat
    (accuracy ≈ 0.55–0.6 at 2e-4), and a discriminator that lags gives the generator a weak, wrong SD;
    at 1000 steps FD fell from 149 (2e-4) to 57 (1e-3) and 27 (2e-3) with recall 0.10 → 0.82.

    Returns:
        The trained SDGAN (``.generator``, ``.discriminator``, ``.generate(n, seed)``).
    """
    import keras

    from gan2flow import models, training

    _checks.one_of(objective, "objective", ("logit", "flow_regression"))
    images = _checks.as_float_tensor(images, "images", rank=4).numpy()
    keras.utils.set_random_seed(seed)
    generator = models.conv_generator(latent_dim, images.shape[1:], output_activation="tanh")
    discriminator = models.conv_discriminator(images.shape[1:], sigma_conditioned=True)
    gan = training.SDGAN(generator, discriminator, loss="logistic", generator_objective=objective,
                         sigma_range=sigma_range, flow_steps=flow_steps, seed=seed)
    gan.compile(d_optimizer=keras.optimizers.Adam(d_learning_rate, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(learning_rate, beta_1=0.5))
    _fit(gan, images, _checks.positive_int(steps, "steps"), batch_size, seed, verbose)
    return gan


# --------------------------------------------------------------------------------------------------
# Report


_COLUMNS = (("fd", "FD ↓", "{:.2f}"), ("precision", "precision ↑", "{:.3f}"), ("recall", "recall ↑", "{:.3f}"),
            ("confident", "confident ↑", "{:.1%}"), ("nn_median", "NN median", "{:.2f}"),
            ("nn_p05", "NN 5%", "{:.2f}"), ("seconds", "seconds", "{:.0f}"))


def format_table(rows):
    """A Markdown table of ``{row name: image_summary(...) dict}`` (missing entries left blank)."""
    lines = ["| samples | " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
             "|" + "---|" * (len(_COLUMNS) + 1)]
    for name, row in rows.items():
        cells = ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in _COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nn_histogram(distances, path, *, title):
    plt = plotting.pyplot()
    figure, axis = plt.subplots(figsize=(6.0, 3.2))
    high = max(float(np.max(d)) for d in distances.values())
    bins = np.linspace(0.0, high, 40)
    for name, values in distances.items():
        axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.4, label=name)
    axis.set_xlabel("distance to the nearest training image (pixel units, [−1, 1] scale)")
    axis.set_ylabel("density")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    plotting.save_figure(figure, path)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------------
# The pipeline


def run(out_dir="gan2flow-out/digits", *, quick=False, seed=0, classifier=None, n=None, gan_steps=None,
        convert_steps=None, sdgan_steps=None, latent_levels=None, latent_step_scale=None, flow_steps=None,
        classifier_epochs=None, sigma_range=SIGMA_RANGE, verbose=True):
    """The digits pipeline: GAN → convert → refine (data and latent space) → SDGAN comparisons → report.

    Every sample set is measured against the held-out images with
    :func:`gan2flow.image_metrics.image_summary`; the GAN rows use the same latents, so "GAN",
    "+ data refinement" and "+ latent refinement" are paired samples. Writes into ``out_dir``:
    ``metrics.json`` (numbers, settings, per-stage seconds, calibration diagnostics, every sample's
    nearest-training-image distance), ``table.md``, ``flow.keras`` (the converted GAN, for
    :func:`gan2flow.load`), ``real.png``, ``gan.png``, ``gan_refined.png``,
    ``gan_latent.png``, ``sdgan_logit.png``, ``sdgan_flow_regression.png`` (sample grids),
    ``before_after.png`` (rows: GAN, data-refined, latent-refined), ``trajectory.png`` (the first sample
    across σ) and ``nearest_training.png`` (histogram of nearest-training-image distances).

    Args:
        out_dir: output folder.
        quick: use :data:`QUICK` instead of :data:`FULL` budgets.
        seed: seed of the split-independent training runs, latents and noise.
        classifier: a digit classifier model or ``.keras`` path (None: the cached default,
            :func:`gan2flow.image_metrics.digit_classifier`).
        n: samples per row; gan_steps, convert_steps, sdgan_steps: training steps (``sdgan_steps=0``
            skips the SDGAN rows); latent_levels, latent_step_scale: σ levels (geometric over
            ``sigma_range``, one step per level) and ε of the latent-space refinement; flow_steps: of the
            ``flow_regression`` SDGAN; classifier_epochs: for the default classifier. None takes the value
            from :data:`FULL` / :data:`QUICK`. Conversion and data-space refinement run with gan2flow's
            defaults (the staged refinement, docs/convert.md).
        sigma_range: (σ_min, σ_max) of the latent-space refinement and the SDGANs.
        verbose: print progress and the table.

    Returns:
        dict: ``rows`` (numbers per sample set), ``table`` (Markdown), ``fd_reduction`` (relative FD
        drop of the data-space refinement), ``target_met`` (≥ 30 % lower FD and recall not lower),
        ``settings``, ``seconds``, ``files``.
    """
    import keras

    import gan2flow
    from gan2flow import sigmas as schedules

    started = time.perf_counter()
    settings = dict(QUICK if quick else FULL)
    for key, value in dict(n=n, gan_steps=gan_steps, convert_steps=convert_steps, sdgan_steps=sdgan_steps,
                           latent_levels=latent_levels, latent_step_scale=latent_step_scale,
                           flow_steps=flow_steps, classifier_epochs=classifier_epochs).items():
        if value is not None:
            settings[key] = value
    settings.update(seed=seed, quick=bool(quick), sigma_range=[float(s) for s in sigma_range])
    stage_seconds = {}
    clock = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        stage_seconds[name] = now - clock[0]
        clock[0] = now
        if verbose:
            print(f"[digits] {name}: {stage_seconds[name]:.1f} s", flush=True)
        return stage_seconds[name]

    def say(message):
        if verbose:
            print(f"[digits] {message}", flush=True)

    os.makedirs(out_dir, exist_ok=True)
    data = load()
    train, test = data["train"], data["test"]
    if classifier is None or isinstance(classifier, (str, os.PathLike)):
        classifier = image_metrics.digit_classifier(classifier, seed=0, epochs=settings["classifier_epochs"],
                                                    verbose=verbose)
    test_features = image_metrics.image_features(test, classifier)
    classifier_accuracy = float(np.mean(np.argmax(classifier(test, training=False), axis=1) == data["test_labels"]))
    say(f"{len(train)} training / {len(test)} held-out images; classifier held-out accuracy "
        f"{classifier_accuracy:.1%}")
    lap("data and classifier")

    rows, nn_distances, grids = {}, {}, {}

    def measure(name, samples, seconds=None):
        samples = np.asarray(samples, np.float32)
        summary = image_metrics.image_summary(samples, test, train, classifier=classifier,
                                              reference_features=test_features)
        nn_distances[name] = np.round(summary.pop("nn_distances"), 4)
        summary["seconds"] = seconds
        rows[name] = summary
        say(f"{name}: FD {summary['fd']:.2f}, precision {summary['precision']:.3f}, recall "
            f"{summary['recall']:.3f}, NN median {summary['nn_median']:.2f}")
        return samples

    measure("real: training images", train)
    held_out_nn = image_metrics.nearest_distances(test, train)
    rows["real: held-out images"] = {"nn_median": float(np.median(held_out_nn)),
                                     "nn_p05": float(np.percentile(held_out_nn, 5))}
    nn_distances["real: held-out images"] = np.round(held_out_nn, 4)

    # 1. the ordinary GAN
    generator, discriminator = train_gan(train, latent_dim=settings["latent_dim"], steps=settings["gan_steps"],
                                         batch_size=settings["batch_size"], seed=seed, verbose=verbose)
    gan_seconds = lap("GAN training")

    # 2. conversion
    flow = gan2flow.convert(generator, discriminator, train, loss="logistic", steps=settings["convert_steps"],
                            seed=seed, verbose=1 if verbose else 0)
    convert_seconds = lap("conversion")
    flow_path = os.path.join(out_dir, "flow.keras")
    flow.save(flow_path)  # gan2flow.load(flow_path) gives it back: sample, refine, log_ratio, ...
    z = flow.latents(settings["n"], seed=seed + 1)
    grids["gan"] = measure("GAN (non-saturating)", flow.generate(z), gan_seconds)

    # 3. refinement in data space (the defaults: the staged field) and in latent space
    report = {}
    refined = flow.refine(grids["gan"], seed=seed + 2, report=report)
    refine_seconds = lap("data-space refinement")
    say(f"data-space refinement: {report}")
    grids["gan_refined"] = measure("GAN + data-space refinement", refined, convert_seconds + refine_seconds)
    # The strip: the first sample's state after each stage.
    strip_states, sigmas = flow.trajectory(grids["gan"][:1])
    latent_sigmas = schedules.geometric(sigma_range[1], sigma_range[0], settings["latent_levels"])
    z_refined = flow.refine_latent(z, sigmas=latent_sigmas, steps_per_sigma=1,
                                   step_scale=settings["latent_step_scale"], seed=seed + 3)
    latent_seconds = lap("latent-space refinement")
    grids["gan_latent"] = measure("GAN + latent-space refinement", flow.generate(z_refined),
                                  convert_seconds + latent_seconds)

    # 4. SDGANs trained directly
    if settings["sdgan_steps"]:
        for objective in ("logit", "flow_regression"):
            gan = train_sdgan(train, objective, latent_dim=settings["latent_dim"], steps=settings["sdgan_steps"],
                              batch_size=settings["batch_size"], sigma_range=sigma_range,
                              flow_steps=settings["flow_steps"], seed=seed, verbose=verbose)
            seconds = lap(f"SDGAN {objective}")
            grids[f"sdgan_{objective}"] = measure(f"SDGAN {objective}", gan.generate(settings["n"], seed=seed + 1),
                                                  seconds)

    # 5. report
    before, after = rows["GAN (non-saturating)"], rows["GAN + data-space refinement"]
    fd_reduction = 1.0 - after["fd"] / before["fd"]
    target_met = bool(fd_reduction >= 0.30 and after["recall"] >= before["recall"])
    table = format_table(rows)
    value_range = (-1.0, 1.0)
    files = {"numbers": os.path.join(out_dir, "metrics.json"), "table": os.path.join(out_dir, "table.md"),
             "flow": flow_path}
    files["real"] = plotting.image_grid(test[:40], os.path.join(out_dir, "real.png"), title="held-out real digits",
                                        value_range=value_range)
    titles = {"gan": "GAN (non-saturating), raw samples", "gan_refined": "GAN + data-space refinement",
              "gan_latent": "GAN + latent-space refinement", "sdgan_logit": "SDGAN, logit objective",
              "sdgan_flow_regression": "SDGAN, flow_regression objective"}
    for key, images in grids.items():
        files[key] = plotting.image_grid(images[:40], os.path.join(out_dir, f"{key}.png"), title=titles[key],
                                         value_range=value_range)
    files["before_after"] = plotting.image_grid(
        np.concatenate([grids["gan"][:10], grids["gan_refined"][:10], grids["gan_latent"][:10]]),
        os.path.join(out_dir, "before_after.png"), value_range=value_range,
        title="rows: GAN sample · refined in data space · refined in latent space (same z)")
    stages = len(sigmas)
    shown = np.unique(np.linspace(0, stages, min(stages, 10) + 1).round().astype(int))
    files["trajectory"] = plotting.trajectory_strip(
        strip_states.numpy()[shown, 0], sigmas[shown[1:] - 1], os.path.join(out_dir, "trajectory.png"),
        value_range=value_range, title="one GAN sample refined in data space (state after the stage's σ)")
    histogram_rows = ("real: held-out images", "GAN (non-saturating)", "GAN + data-space refinement",
                      "GAN + latent-space refinement")
    files["nearest_training"] = _nn_histogram({name: nn_distances[name] for name in histogram_rows},
                                              os.path.join(out_dir, "nearest_training.png"),
                                              title="memorisation check: distance to the nearest training image")
    result = {
        "demo": "digits", "rows": rows, "table": table, "fd_reduction": fd_reduction, "target_met": target_met,
        "classifier": {"held_out_accuracy": classifier_accuracy, "version": image_metrics.CLASSIFIER_VERSION},
        "calibration": flow.diagnostics, "refinement": report, "settings": settings, "stage_seconds": stage_seconds,
        "seconds": time.perf_counter() - started, "keras_backend": keras.backend.backend(),
        "nn_distances": nn_distances, "files": files,
    }
    _io.write_json(files["numbers"], result)
    _io.write_text(files["table"], table + "\n")
    if verbose:
        print(table)
        print(f"data-space refinement lowers FD by {fd_reduction:.1%} (target ≥ 30 % with recall not lower: "
              f"{'met' if target_met else 'not met'}); {result['seconds']:.0f} s in all; wrote {out_dir}")
    return result
