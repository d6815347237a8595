"""Conditional GANs: convert a class-conditional Keras GAN, refine each class, weigh, save and load.

    python examples/conditional.py                 # a few minutes on 2 CPU cores (the conversion dominates)
    python examples/conditional.py --quick         # smaller calibration budget, a smoke test

Steps (docs/convert.md, "Conditional GANs"):

1. "Your" GAN: the zoo's ``ring_classes_cgan``, a plain Keras conditional GAN (generator ``[z, label]`` with a
   label embedding, projection discriminator ``[x, label]``, BCE) on a 9-Gaussian ring whose modes are dealt to
   3 classes; each class's generator drops one of its three modes. Trained once (about 25 s) and cached.
2. ``gan2flow.convert(G, D, x, labels=y)``: the calibrated discriminator and the stages take the label too and
   learn log p_σ(x | y)/q_σ(x | y); the diagnostics gain a per-class table.
3. Per class: the same latents raw and refined (``flow.sample(n, labels=k)``), sliced W2 to that class's
   held-out data and the share of samples on the class's own modes; importance weights normalised per class.
4. Save the flow, load it back, check that the same seed and labels give the same samples; a mixed batch
   (``labels=`` an array) equals the per-class batches.
"""
import argparse
import os
import time

import numpy as np

import gan2flow
from gan2flow import metrics
from gan2flow.experiments import zoo


def own_share(x, member, label):
    """Share of samples within 3 stds of one of the class's own modes."""
    centers, classes = np.asarray(member.info["centers"]), np.asarray(member.info["mode_classes"])
    distance = np.linalg.norm(x[:, None] - centers[None], axis=2)
    nearest = distance.argmin(1)
    close = distance.min(1) <= member.info["mode_threshold"] * member.info["stds"][0]
    return float(np.mean(close & (classes[nearest] == label)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gan2flow-out/conditional-example", help="output folder")
    parser.add_argument("--quick", action="store_true", help="smaller calibration budget (smoke test)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    member = zoo.load("ring_classes_cgan", verbose=1)
    options = {"steps": 300, "stage_options": {"train_steps": 30, "n_particles": 1024}} if args.quick else {}
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss,
                            labels=member.train_labels, **options)
    n = 500 if args.quick else 2000
    print(f"\n{'class':>5} {'SW2 raw':>8} {'refined':>8} {'own modes raw':>14} {'refined':>8}")
    for label in range(flow.n_classes):
        raw = flow.sample(n, refine=False, seed=0, labels=label).numpy()
        refined = flow.sample(n, seed=0, labels=label).numpy()
        held = member.heldout[member.heldout_labels == label]
        print(f"{label:>5} {metrics.sliced_wasserstein(raw, held, seed=0):>8.3f} "
              f"{metrics.sliced_wasserstein(refined, held, seed=0):>8.3f} {own_share(raw, member, label):>14.3f} "
              f"{own_share(refined, member, label):>8.3f}")

    labels = np.arange(n) % flow.n_classes  # a mixed batch: each sample refined towards its own class
    mixed = flow.sample(n, seed=1, labels=labels).numpy()
    weights = flow.importance_weights(flow.sample(n, refine=False, seed=2, labels=labels), labels=labels).numpy()
    print("importance weights, mean per class:", [round(float(weights[labels == k].mean()), 3)
                                                 for k in range(flow.n_classes)])

    path = os.path.join(args.out, "conditional_flow.keras")
    flow.save(path)
    loaded = gan2flow.load(path)
    same = np.array_equal(loaded.sample(n, seed=1, labels=labels).numpy(), mixed)
    print(f"saved and loaded {path}: same samples for the same seed and labels: {same}")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
