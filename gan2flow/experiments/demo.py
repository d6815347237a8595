"""The demos behind ``gan2flow demo``: embedded data, no downloads, about a minute on 2 CPU cores.

- :func:`gan_demo`: a plain hinge GAN on ``grid25``, converted into a flow and refined (the main demo).
- :func:`kernel_demo`: the training-free kernel SD flow carries N(0, I) particles to ``grid25``.

Each demo prints a before/after metrics table, writes a PNG figure and a JSON of the numbers into an
output folder, and returns the numbers.
"""
from __future__ import annotations

import os
import time

import numpy as np

from gan2flow import _io, estimators, flows, metrics, plotting, toys
from gan2flow import sigmas as schedules

__all__ = ["gan_demo", "kernel_demo", "format_table", "train_plain_gan"]

_COLUMNS = (("sliced_w2", "sliced W2", "{:.4f}"), ("mmd", "MMD²", "{:.5f}"), ("energy", "energy", "{:.4f}"),
            ("modes", "modes", "{:d}"), ("high_quality", "high-quality %", "{:.1%}"))


def format_table(rows):
    """A Markdown table of metric rows: ``{row name: summarize(...) dict}``."""
    columns = [c for c in _COLUMNS if any(c[0] in row for row in rows.values())]
    header = "| samples | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif key == "modes":
                cells.append(f"{value}/{row.get('n_modes', '?')}")
            else:
                cells.append(fmt.format(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_demo(out_dir="gan2flow-out/kernel-demo", *, n=2000, n_target=4000, levels=60, steps_per_sigma=2,
                step_scale=0.5, sigma_max=4.0, sigma_min=0.03, seed=0, verbose=True):
    """Kernel SD flow from N(0, I) to the 25-Gaussian grid (shared/SD_FLOW.md §3.1).

    The particles themselves are the source sample (``KernelScoreDifference(target, source=None)``);
    the target is ``n_target`` samples of grid25. Metrics compare against a held-out target sample.

    Returns:
        dict with ``before`` and ``after`` metric rows, the settings, the wall time and the file paths.
    """
    started = time.perf_counter()
    target_distribution = toys.grid25()
    target = toys.sample(target_distribution, n_target, seed=seed)
    held_out = toys.sample(target_distribution, n, seed=seed + 1)
    centers, stds, _ = toys.mixture_modes(target_distribution)
    x0 = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    estimator = estimators.KernelScoreDifference(target, block_size=1024)
    sigmas = schedules.geometric(sigma_max, sigma_min, levels)
    plan = flows.make_plan(x0, estimator, sigmas, step_scale=step_scale, steps_per_sigma=steps_per_sigma)
    final, path = flows.run(plan, x0, record=True, progress="kernel SD flow N(0, I) -> grid25" if verbose else None)[:2]
    final, path = final.numpy(), path.numpy()
    rows = {
        "before (N(0, I))": metrics.summarize(x0, held_out, centers=centers, std=stds, seed=seed),
        "after kernel flow": metrics.summarize(final, held_out, centers=centers, std=stds, seed=seed),
    }
    table = format_table(rows)
    os.makedirs(out_dir, exist_ok=True)
    figure = plotting.scatter_panels(
        [("before: N(0, I)", x0), ("after: kernel SD flow", final), ("trajectories", final)],
        os.path.join(out_dir, "kernel_flow.png"), reference=held_out, trajectories=path[:, :12],
        limits=(-5.5, 5.5), title=f"kernel SD flow, {levels} levels σ {sigma_max} → {sigma_min}",
    )
    result = {
        "demo": "kernel", "rows": rows, "table": table,
        "settings": dict(n=n, n_target=n_target, levels=levels, steps_per_sigma=steps_per_sigma,
                         step_scale=step_scale, sigma_max=sigma_max, sigma_min=sigma_min, seed=seed),
        "seconds": time.perf_counter() - started,
        "files": {"figure": figure, "numbers": os.path.join(out_dir, "metrics.json")},
    }
    _io.write_json(result["files"]["numbers"], result)
    if verbose:
        print(table)
        print(f"wrote {figure} and {result['files']['numbers']} ({result['seconds']:.1f} s)")
    return result


def train_plain_gan(real, *, loss="logistic", latent_dim=8, steps=1500, batch_size=256, hidden=(128, 128),
                    learning_rate=2e-4, seed=0, verbose=False):
    """Train an ordinary GAN (clean data, no noise proxies, unconditioned discriminator) the usual way.

    This stands for "a GAN someone else trained": the generator uses the non-saturating objective of
    ``loss`` and the discriminator is a plain ``x -> T`` MLP. A short budget leaves it visibly imperfect
    (missed modes, samples smeared between modes), which is what conversion and refinement then fix.

    Returns:
        (generator, discriminator): Keras models z -> x and x -> [batch, 1].
    """
    import keras
    import tensorflow as tf

    from gan2flow import losses, models

    real = np.asarray(real, np.float32)
    keras.utils.set_random_seed(seed)
    gan_loss = losses.get(loss)
    generator = models.mlp_generator(latent_dim, real.shape[1:], hidden=hidden)
    discriminator = models.mlp_discriminator(real.shape[1:], hidden=hidden, sigma_conditioned=False,
                                             activation="leaky_relu")
    d_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
    g_optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
    d_optimizer.build(discriminator.trainable_variables)
    g_optimizer.build(generator.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices(real).shuffle(len(real), seed=seed).repeat().batch(batch_size)
    objective = "non_saturating"

    @tf.function
    def train_step(batch, step):
        z = tf.random.stateless_normal([batch_size, latent_dim], seed=[seed, 2 * step])
        with tf.GradientTape() as tape:
            real_out = discriminator(batch, training=True)[:, 0]
            fake_out = discriminator(generator(z, training=True), training=True)[:, 0]
            d_loss = gan_loss.discriminator_loss(real_out, fake_out)
            if gan_loss.name == "wasserstein":
                # WGAN-GP at x̂ = real + α (fake − real), α from a stream of its own folded from this step's
                # key (gradient_penalty takes an int seed, not a per-step tensor): given x̂ as both `real`
                # and `fake`, gradient_penalty evaluates exactly at x̂, as SDGAN's penalty does.
                alpha = tf.random.stateless_uniform(
                    [batch_size, 1], seed=tf.random.experimental.stateless_fold_in(tf.stack([seed, 2 * step]), 1))
                fake = generator(z)
                interpolates = batch + alpha * (fake - batch)
                d_loss += 10.0 * losses.gradient_penalty(lambda x: discriminator(x)[:, 0], interpolates,
                                                         interpolates)
        d_optimizer.apply_gradients(zip(tape.gradient(d_loss, discriminator.trainable_variables),
                                        discriminator.trainable_variables, strict=False))
        z = tf.random.stateless_normal([batch_size, latent_dim], seed=[seed, 2 * step + 1])
        with tf.GradientTape() as tape:
            g_loss = tf.reduce_mean(gan_loss.generator_loss(discriminator(generator(z, training=True))[:, 0],
                                                            objective))
        g_optimizer.apply_gradients(zip(tape.gradient(g_loss, generator.trainable_variables),
                                        generator.trainable_variables, strict=False))
        return d_loss, g_loss

    progress = keras.utils.Progbar(steps, stateful_metrics=["d_loss", "g_loss"]) if verbose else None
    for step, batch in enumerate(dataset.take(steps)):
        d_loss, g_loss = train_step(batch, tf.constant(step, tf.int32))
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress.update(step + 1, values=[("d_loss", float(d_loss)), ("g_loss", float(g_loss))])
    return generator, discriminator


def gan_demo(out_dir="gan2flow-out/demo", *, seed=0, quick=False, verbose=True):
    """The main demo: a plain GAN on grid25, converted into a flow, refined in data and latent space.

    1. Train a small GAN the ordinary way (hinge loss, clean data, unconditioned discriminator) on a short
       budget, so it is visibly imperfect: it smears samples between modes and weights them unevenly.
    2. ``gan2flow.convert`` it: calibrate a σ-conditioned logistic discriminator against the frozen
       generator, reusing the hinge critic as a feature, and print the calibration diagnostics.
    3. Refine samples in data space (drift-corrected SD flow) and in latent space (Langevin on
       log p₀(z) + log r(G(z))), and compare raw / data-refined / latent-refined samples.

    Writes ``demo.png`` (the three sample sets over the target) and ``metrics.json`` into ``out_dir``,
    and saves the flow as ``flow.keras`` there (``gan2flow refine --flow .../flow.keras`` uses it).

    Returns:
        dict with the metric rows, the calibration diagnostics, settings, timings and file paths.
    """
    from gan2flow import conversion

    budget = dict(n_real=4000, gan_steps=300, calibration_steps=300, n=1000) if quick else \
        dict(n_real=20000, gan_steps=1500, calibration_steps=2500, n=2500)
    timings = {}
    started = time.perf_counter()
    target_distribution = toys.grid25()
    real = toys.sample(target_distribution, budget["n_real"], seed=seed)
    held_out = toys.sample(target_distribution, budget["n"], seed=seed + 1)
    centers, stds, _ = toys.mixture_modes(target_distribution)

    if verbose:
        print(f"1/4 training a small hinge-loss GAN on grid25 ({budget['gan_steps']} steps)")
    generator, discriminator = train_plain_gan(real, loss="hinge", steps=budget["gan_steps"], seed=seed,
                                               verbose=verbose)
    timings["gan_training"] = time.perf_counter() - started

    if verbose:
        print("2/4 converting it into a flow")
    mark = time.perf_counter()
    flow = conversion.convert(generator, discriminator, real, loss="hinge", steps=budget["calibration_steps"],
                              seed=seed, verbose=1 if verbose else 0)
    timings["conversion"] = time.perf_counter() - mark

    if verbose:
        print("3/4 sampling and refining")
    mark = time.perf_counter()
    z = flow.latents(budget["n"], seed=seed + 2)
    raw = flow.generate(z).numpy()
    data_refined = flow.refine(raw, seed=seed, verbose=verbose).numpy()
    timings["data_refinement"] = time.perf_counter() - mark
    mark = time.perf_counter()
    latent_refined = flow.generate(flow.refine_latent(z, seed=seed, verbose=verbose)).numpy()
    timings["latent_refinement"] = time.perf_counter() - mark

    if verbose:
        print("4/4 measuring against held-out target samples")
    rows = {
        name: metrics.summarize(samples, held_out, centers=centers, std=stds, seed=seed)
        for name, samples in (("raw GAN", raw), ("data-refined", data_refined), ("latent-refined", latent_refined))
    }
    rows["reference (exact samples)"] = metrics.summarize(
        toys.sample(target_distribution, budget["n"], seed=seed + 3), held_out, centers=centers, std=stds,
        seed=seed)
    table = format_table(rows)
    os.makedirs(out_dir, exist_ok=True)
    figure = plotting.scatter_panels(
        [("raw GAN", raw), ("refined in data space", data_refined), ("refined in latent space", latent_refined)],
        os.path.join(out_dir, "demo.png"), reference=held_out, limits=(-5.5, 5.5),
        title="gan2flow: a hinge GAN on grid25, converted and refined")
    flow_path = os.path.join(out_dir, "flow.keras")
    flow.save(flow_path)
    timings["total"] = time.perf_counter() - started
    result = {
        "demo": "gan", "rows": rows, "table": table, "diagnostics": flow.diagnostics,
        "settings": dict(budget, seed=seed, quick=quick), "seconds": timings,
        "files": {"figure": figure, "numbers": os.path.join(out_dir, "metrics.json"), "flow": flow_path},
    }
    _io.write_json(result["files"]["numbers"], result)
    if verbose:
        print(table)
        print(f"wrote {figure}, {result['files']['numbers']} and {flow_path} ({timings['total']:.0f} s)")
    return result
