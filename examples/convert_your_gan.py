"""Convert your GAN: a plain hinge-loss Keras GAN on grid25, turned into a flow, refined, saved and loaded.

    python examples/convert_your_gan.py                 # about 1-2 minutes on 2 CPU cores
    python examples/convert_your_gan.py --quick         # smaller budget, a smoke test

Steps (docs/convert.md explains each one):

1. "Your" GAN: an ordinary Keras GAN (hinge loss, clean data, a discriminator that knows nothing about
   noise levels), trained with ``gan2flow.experiments.demo.train_plain_gan`` on a short budget so that
   it is visibly imperfect. It is saved as ``generator.keras`` / ``discriminator.keras`` in the output folder and loaded
   from there on the next run (swap in your own files to convert your own GAN).
2. ``gan2flow.convert``: calibrate a σ-conditioned logistic discriminator against the frozen generator,
   reusing the hinge critic as a feature, and print the diagnostics table.
3. Refine: the same latents, raw / refined in data space / refined in latent space, plus the raw samples
   resampled by their importance weights, measured against held-out samples of the target.
4. Save the flow, load it back, check that the same seed gives the same samples.
"""
import argparse
import os
import time

import keras
import numpy as np

import gan2flow
from gan2flow import metrics, toys
from gan2flow.experiments import demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gan2flow-out/convert-example", help="output folder")
    parser.add_argument("--quick", action="store_true", help="smaller budget (smoke test)")
    args = parser.parse_args()
    budget = dict(n_real=4000, gan_steps=300, calibration_steps=300, n=500) if args.quick else \
        dict(n_real=20000, gan_steps=1500, calibration_steps=2000, n=2000)
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)

    target = toys.grid25()
    real = toys.sample(target, budget["n_real"], seed=0)          # the training data, [n, 2]
    held_out = toys.sample(target, budget["n"], seed=1)           # for the metrics only
    centers, stds, _ = toys.mixture_modes(target)

    # 1. Your GAN: any Keras generator z -> x and discriminator x -> raw output [batch, 1].
    generator_path = os.path.join(args.out, "generator.keras")
    discriminator_path = os.path.join(args.out, "discriminator.keras")
    if os.path.exists(generator_path) and os.path.exists(discriminator_path):
        print(f"1/4 loading the GAN from {generator_path} and {discriminator_path}")
        generator = keras.saving.load_model(generator_path, compile=False)
        discriminator = keras.saving.load_model(discriminator_path, compile=False)
    else:
        print(f"1/4 training a plain hinge-loss GAN on grid25 ({budget['gan_steps']} steps)")
        generator, discriminator = demo.train_plain_gan(real, loss="hinge", steps=budget["gan_steps"], seed=0,
                                                        verbose=True)
        generator.save(generator_path)
        discriminator.save(discriminator_path)

    # 2. Convert. `loss` names the loss the discriminator was trained with (None if unknown); the result's
    #    diagnostics say whether the calibration is good enough to flow along.
    print("2/4 converting it into a flow")
    flow = gan2flow.convert(generator, discriminator, real, loss="hinge", steps=budget["calibration_steps"],
                            seed=0)
    if not flow.diagnostics["good_enough"]:
        print("(the calibration has warnings: more steps or more data would help)")

    # 3. Sample and refine, from the same latents.
    print("3/4 refining")
    z = flow.latents(budget["n"], seed=2)
    raw = flow.generate(z).numpy()
    data_refined = flow.refine(raw, seed=0, verbose=True).numpy()
    latent_refined = flow.generate(flow.refine_latent(z, seed=0, verbose=True)).numpy()
    # Importance weights r(x) ≈ p(x)/q(x) at a moderate σ, used to resample the raw samples.
    sigma = float(np.sqrt(flow.sigma_range[0] * flow.sigma_range[1]))
    weights = flow.importance_weights(raw, sigma=sigma).numpy()
    effective = weights.sum() ** 2 / (len(weights) * (weights ** 2).sum())
    resampled = raw[np.random.default_rng(0).choice(len(raw), len(raw), p=weights / weights.sum())]

    rows = {name: metrics.summarize(samples, held_out, centers=centers, std=stds)
            for name, samples in (("raw GAN", raw), (f"raw, resampled by r (σ={sigma:.2g})", resampled),
                                  ("refined in data space", data_refined),
                                  ("refined in latent space", latent_refined))}
    print(demo.format_table(rows))
    print(f"importance weights: effective sample fraction {effective:.2f}")

    # 4. Save, load, and check that the loaded flow gives the same samples for the same seed.
    print("4/4 saving and loading the flow")
    path = os.path.join(args.out, "flow.keras")
    flow.save(path)
    loaded = gan2flow.load(path)
    before = flow.sample(256, seed=7).numpy()
    after = loaded.sample(256, seed=7).numpy()
    print(f"saved {path}; loaded flow reproduces the samples exactly: {np.array_equal(before, after)}")
    print(f"same from the command line: gan2flow refine --flow {path} --n 1000 --out refined.npy")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
