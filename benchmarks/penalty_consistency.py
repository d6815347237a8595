"""Is the R1 penalty SD-consistent? The easy case of tests/test_compare.py under each training recipe.

N((1, 0.5), 0.5² I) against q = N(0, I) at the one fixed σ = 0.3: the exact SD is affine and a (64, 64)
MLP gets close to the optimum in 1500 steps, so the penalty's bias is visible as a best scale c* ≠ 1 and a
relative error as it is above the one after the best scale (docs/losses.md, "Training the SD
discriminator"). Logistic loss, the comparison's default parametrisation; mean ± sd over the seeds.

    python benchmarks/penalty_consistency.py [--seeds 0,1,2]

About 20 s per configuration and seed on the shared 2-core machine.
"""
import argparse

import numpy as np

CONFIGURATIONS = {
    "previous (no penalty)": dict(discriminator_training="previous"),
    "previous + R1 1e-3": dict(discriminator_training="previous", training_options={"penalty": "r1",
                                                                                     "penalty_weight": 1e-3}),
    "previous + R1 1e-2": dict(discriminator_training="previous", training_options={"penalty": "r1",
                                                                                     "penalty_weight": 1e-2}),
    "previous + R1 1e-1": dict(discriminator_training="previous", training_options={"penalty": "r1",
                                                                                     "penalty_weight": 1e-1}),
    "sd (batch 1024, Adam 3e-3, R1 1e-3)": dict(discriminator_training="sd"),
    "batch 1024, Adam 3e-3, no penalty": dict(discriminator_training="sd", training_options={}),
}


def main():
    from gan2flow import toys
    from gan2flow.experiments import compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    easy = compare.Problem("easy", toys.gaussian_mixture([[1.0, 0.5]], 0.5), np.zeros(2, np.float32),
                           np.eye(2, dtype=np.float32), (0.3, 0.3))
    print("| training | cosine (q_σ) | c* (p_σ) | rel. error as it is (p_σ) | after c* (p_σ) |")
    print("|---|---|---|---|---|")
    for label, options in CONFIGURATIONS.items():
        cells = {key: [] for key in ("cosine", "scale_fit", "rel_error", "rel_error_fit")}
        for seed in seeds:
            result = compare.compare_losses(losses=["logistic"], targets=[easy], steps=1500, hidden=(64, 64),
                                            n_train=8192, n_eval=1000, n_flow=200, eval_sigmas=2, flow_levels=2,
                                            seed=seed, verbose=False, **options)
            rows = {row["points"]: row for row in result["fields"]}
            cells["cosine"].append(rows["q_sigma"]["cosine"])
            for key in ("scale_fit", "rel_error", "rel_error_fit"):
                cells[key].append(rows["p_sigma"][key])
        print(f"| {label} | " + " | ".join(f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
                                           for v in cells.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
