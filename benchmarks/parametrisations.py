"""Ablation of the σ-conditioned discriminator's parametrisation (docs/losses.md, "Parametrisations").

For each variant of ``gan2flow.models.mlp_discriminator`` and each seed, the loss comparison of
``gan2flow compare`` (logistic loss only, ``compare_losses``) on both problems: mean cosine and best scale
c* per σ under q_σ against the exact SD, and the sliced W2 of the flow along the field. Writes
``OUT/parametrisations.md`` (mean ± standard deviation over the seeds) and ``OUT/parametrisations.json``.

    python benchmarks/parametrisations.py [--quick] [--seeds 0,1,2] [--steps N] [--out DIR] [--variants "a;b"]

Variants are measured with the training of the runs before issue 15 (``discriminator_training="previous"``)
unless they say otherwise; "recipe sd" was the comparison's default at the quick budget and "sd + DSM 10"
(= "sd_dsm") at the full budget after issue 15's third pass. Every energy-difference variant but the last
two has ``energy_skip=False`` (the residuals of the passes before the skip gain); "sd + skip gain + DSM 10"
is the comparison's discriminator and training since the fifth pass (docs/losses.md, "The skip gain of the bowls").

On the shared 2-core machine one variant costs about 1 minute per seed with --quick (300 steps).
"""
import argparse
import json
import os
import time

import numpy as np

VARIANTS = {
    "plain": {"parametrisation": "plain"},
    "plain + Fourier(x)": {"parametrisation": "plain", "fourier_features": 64},
    "preconditioned": {"parametrisation": "preconditioned"},
    "energy difference, K=1": {"parametrisation": "energy_difference", "energy_components": 1, "energy_skip": False},
    "energy difference, K=4": {"parametrisation": "energy_difference", "energy_components": 4, "energy_skip": False},
    "energy difference, K=8": {"parametrisation": "energy_difference", "energy_skip": False},
    "energy difference, K=8 + Fourier(x)": {"parametrisation": "energy_difference", "fourier_features": 64,
                                            "energy_skip": False},
}
# Every variant trains with compare_losses(discriminator_training="previous") (batch 256, Adam 1e-3, no
# penalty) unless it names another "discriminator_training". Training variants of the default discriminator
# (docs/losses.md, "Training the SD discriminator"): "training" adds to its training_options, "budget" scales
# the batch (× n; with the steps ÷ n unless "steps" is given too) or sets the learning rate.
_ED = {"parametrisation": "energy_difference", "energy_skip": False}
VARIANTS.update({
    "EMA 0.9": dict(_ED, training={"ema_momentum": 0.9}),
    "EMA 0.95": dict(_ED, training={"ema_momentum": 0.95}),
    "EMA 0.98": dict(_ED, training={"ema_momentum": 0.98}),
    "EMA 0.99": dict(_ED, training={"ema_momentum": 0.99}),
    "EMA 0.995": dict(_ED, training={"ema_momentum": 0.995}),
    "EMA 0.999": dict(_ED, training={"ema_momentum": 0.999}),
    "lr decay to 1/100": dict(_ED, training={"final_fraction": 0.01}),
    "batch ×4, steps ÷4": dict(_ED, budget={"batch_size": 4}),
    "batch ×4": dict(_ED, budget={"batch_size": 4, "steps": 1}),
    "R1 1e-3": dict(_ED, training={"penalty": "r1", "penalty_weight": 1e-3}),
    "R1 1e-2": dict(_ED, training={"penalty": "r1", "penalty_weight": 1e-2}),
    "R1 1e-4": dict(_ED, training={"penalty": "r1", "penalty_weight": 1e-4}),
    "σ log_ends": dict(_ED, training={"sigma_sampling": "log_ends"}),
    "σ log_small": dict(_ED, training={"sigma_sampling": "log_small"}),
    "batch ×2": dict(_ED, budget={"batch_size": 2, "steps": 1}),
    "batch ×4 + R1 1e-3": dict(_ED, budget={"batch_size": 4, "steps": 1},
                               training={"penalty": "r1", "penalty_weight": 1e-3}),
    "lr 3e-3": dict(_ED, budget={"learning_rate": 3e-3}),
    "lr 3e-3 + R1 1e-3": dict(_ED, budget={"learning_rate": 3e-3}, training={"penalty": "r1", "penalty_weight": 1e-3}),
    "lr 3e-3 + EMA 0.99": dict(_ED, budget={"learning_rate": 3e-3}, training={"ema_momentum": 0.99}),
    "lr 3e-3 + batch ×4 + R1 1e-3": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1},
                                         training={"penalty": "r1", "penalty_weight": 1e-3}),
    "recipe sd (the comparison's default)": dict(_ED, discriminator_training="sd"),  # its quick default
    "lr 3e-3 + batch ×8 + R1 1e-3": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 8, "steps": 1},
                                         training={"penalty": "r1", "penalty_weight": 1e-3}),
    "lr 3e-3 + batch ×4": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1}),
    "lr 3e-3 + batch ×4 + R1σ⁴ 1e-2": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1},
                                           training={"penalty": "r1_scaled", "penalty_weight": 1e-2}),
    "lr 3e-3 + batch ×4 + R1σ⁴ 1e-1": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1},
                                           training={"penalty": "r1_scaled", "penalty_weight": 1e-1}),
    "lr 5e-3 + batch ×4 + R1 1e-3": dict(_ED, budget={"learning_rate": 5e-3, "batch_size": 4, "steps": 1},
                                         training={"penalty": "r1", "penalty_weight": 1e-3}),
    "lr 3e-3 + batch ×4 + R1 3e-3": dict(_ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1},
                                         training={"penalty": "r1", "penalty_weight": 3e-3}),
    "lr 3e-3 + batch ×4 + R1 1e-3 + EMA 0.99": dict(
        _ED, budget={"learning_rate": 3e-3, "batch_size": 4, "steps": 1},
        training={"penalty": "r1", "penalty_weight": 1e-3, "ema_momentum": 0.99}),
})
# Denoising score matching on the two bowls of the energy difference (SDGAN(denoising_weight=λ)), with and
# without the σ-dependent offset of T (mlp_discriminator(energy_bias=True)); all on the "sd" training.
_SD = dict(_ED, discriminator_training="sd")
VARIANTS.update({
    "sd + offset c(σ)": dict(_SD, energy_bias=True),
    "sd + DSM 0.1": dict(_SD, training={"denoising_weight": 0.1}),
    "sd + DSM 1": dict(_SD, training={"denoising_weight": 1.0}),
    "sd + DSM 3": dict(_SD, training={"denoising_weight": 3.0}),
    "sd + DSM 10": dict(_SD, training={"denoising_weight": 10.0}),  # "sd_dsm", the comparison's full default
    "sd + DSM 30": dict(_SD, training={"denoising_weight": 30.0}),
    "sd + DSM 100": dict(_SD, training={"denoising_weight": 100.0}),
    "sd + offset + DSM 0.1": dict(_SD, energy_bias=True, training={"denoising_weight": 0.1}),
    "sd + offset + DSM 1": dict(_SD, energy_bias=True, training={"denoising_weight": 1.0}),
    "sd + offset + DSM 10": dict(_SD, energy_bias=True, training={"denoising_weight": 10.0}),
})
# The skip gain (issue 15, fifth pass): residuals c_s(σ)·u − r (mlp_discriminator(energy_skip=True), the
# builder's default since then), with and without DSM.
VARIANTS.update({
    "sd + skip gain": dict(_SD, energy_skip=True),
    "sd + skip gain + DSM 10 (default)": dict(_SD, energy_skip=True, training={"denoising_weight": 10.0}),
})


def _spread(values, spec):
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(values.mean(), spec)} ± {format(values.std(ddof=1), spec)}"


def main():
    from gan2flow.experiments.compare import compare_losses
    from gan2flow.experiments.compare.budgets import DISCRIMINATOR_TRAININGS, LOSS_BUDGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default="gan2flow-out/parametrisations")
    parser.add_argument("--variants", default=None, help="semicolon-separated labels (default: all)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = list(VARIANTS) if args.variants is None else [v.strip() for v in args.variants.split(";")]
    rows = []
    for label in labels:
        for seed in seeds:
            started = time.perf_counter()
            options = dict(VARIANTS[label])
            training, scale = options.pop("training", {}), options.pop("budget", {})
            recipe = options.pop("discriminator_training", "previous")
            base = DISCRIMINATOR_TRAININGS[recipe]
            steps = args.steps or LOSS_BUDGETS["quick" if args.quick else "full"]["steps"]
            batch_size = base["batch_size"] * scale.get("batch_size", 1)
            # "batch_size": 4 alone keeps the number of samples (steps ÷ 4); "steps": 1 keeps the steps.
            if "batch_size" in scale and "steps" not in scale:
                steps //= scale["batch_size"]
            result = compare_losses(losses=["logistic"], targets=("2d", "16d"), seed=seed, quick=args.quick,
                                    steps=steps, batch_size=batch_size, discriminator_options=options,
                                    learning_rate=scale.get("learning_rate", base["learning_rate"]),
                                    discriminator_training=recipe, training_options={**base["options"], **training},
                                    verbose=False)
            for problem in ("2d", "16d"):
                fields = sorted((f for f in result["fields"] if f["problem"] == problem and f["points"] == "q_sigma"),
                                key=lambda f: f["sigma"])
                flows = {f["field"]: f for f in result["flows"] if f["problem"] == problem}
                flow, oracle = flows["logistic"], flows["exact SD (oracle)"]
                rows.append(dict(variant=label, seed=seed, problem=problem, sigmas=[f["sigma"] for f in fields],
                                 cosine=[f["cosine"] for f in fields], scale=[f["scale_fit"] for f in fields],
                                 sliced_w2=flow["sliced_w2"], oracle_sliced_w2=oracle["sliced_w2"],
                                 steps=result["settings"]["steps"], seconds=time.perf_counter() - started))
                print(f"{label} seed {seed} {problem}: cosine {np.mean(rows[-1]['cosine']):.3f} ("
                      + " ".join(f"{c:.2f}" for c in rows[-1]["cosine"]) + ") scale "
                      + " ".join(f"{c:.2f}" for c in rows[-1]["scale"]) + f" W2 {flow['sliced_w2']:.3f}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "parametrisations.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    lines = []
    for problem in ("2d", "16d"):
        group = [r for r in rows if r["problem"] == problem]
        sigmas = group[0]["sigmas"]
        lines += [f"*{problem}* ({group[0]['steps']} steps, seeds {args.seeds}; mean ± sd over seeds)", "",
                  "| variant | mean cosine (q_σ) | " + " | ".join(f"c* σ={s:.3g}" for s in sigmas)
                  + " | flow sliced W2 (oracle) |", "|---|---|" + "---|" * len(sigmas) + "---|"]
        for label in labels:
            mine = [r for r in group if r["variant"] == label]
            cells = [_spread([np.mean(r["cosine"]) for r in mine], ".3f")]
            cells += [_spread([r["scale"][i] for r in mine], ".2f") for i in range(len(sigmas))]
            cells.append(f"{_spread([r['sliced_w2'] for r in mine], '.3f')} "
                         f"({np.mean([r['oracle_sliced_w2'] for r in mine]):.3f})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    with open(os.path.join(args.out, "parametrisations.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
