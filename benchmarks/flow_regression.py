"""The ``flow_regression`` measurements of docs/losses.md (issue 15): generator objectives × regression weighting
× discriminator parametrisation on the 2-D ring (``compare_objectives``, full budget), and the digits SDGANs.

    python benchmarks/flow_regression.py toys [--steps 1200] [--seeds 2] [--only TEXT]
    python benchmarks/flow_regression.py digits [--steps 2000]

Each configuration prints one line per seed (sliced W2, MMD², modes, high-quality %, seconds) or, for digits,
the Fréchet distance, precision and recall of 2000 samples against the held-out images.
"""
import argparse
import time

import numpy as np

TOY_RUNS = [
    ("logit, plain", "logit", {}, {"parametrisation": "plain"}),
    ("flow_regression uniform, plain", "flow_regression", {"regression_weighting": "uniform"},
     {"parametrisation": "plain"}),
    ("flow_regression inverse_step, plain", "flow_regression", {"regression_weighting": "inverse_step"},
     {"parametrisation": "plain"}),
    # The energy difference as in issue 15's first passes (no skip gain) ...
    ("logit, energy_difference", "logit", {}, {"parametrisation": "energy_difference", "energy_skip": False}),
    ("flow_regression uniform, energy_difference", "flow_regression", {"regression_weighting": "uniform"},
     {"parametrisation": "energy_difference", "energy_skip": False}),
    ("flow_regression inverse_step, energy_difference", "flow_regression",
     {"regression_weighting": "inverse_step"}, {"parametrisation": "energy_difference", "energy_skip": False}),
    # ... and with it (mlp_discriminator's energy_skip=True, the default since the fifth pass).
    ("logit, energy_difference + skip", "logit", {}, {"parametrisation": "energy_difference"}),
    ("flow_regression uniform, energy_difference + skip", "flow_regression", {"regression_weighting": "uniform"},
     {"parametrisation": "energy_difference"}),
    ("flow_regression inverse_step, energy_difference + skip", "flow_regression",
     {"regression_weighting": "inverse_step"}, {"parametrisation": "energy_difference"}),
]


def toys(steps, seeds, only=None):
    from gan2flow.experiments.compare import compare_objectives

    for label, objective, sdgan_options, discriminator_options in TOY_RUNS:
        if only and only not in label:
            continue
        result = compare_objectives(objectives=[objective], target="2d", quick=False, steps=steps, seeds=seeds,
                                    sdgan_options=sdgan_options, discriminator_options=discriminator_options,
                                    verbose=False)
        for row in result["rows"]:
            print(f"{label:>48} seed {row['seed']}: sliced W2 {row['sliced_w2']:.3f} MMD² {row['mmd']:.4f} "
                  f"modes {row['modes']}/{row['n_modes']} HQ {100 * row['high_quality']:.1f}% "
                  f"{row['seconds']:.0f} s", flush=True)


def digits(steps):
    from gan2flow import image_metrics
    from gan2flow.experiments import digits as experiment

    data = experiment.load()
    train, test = data["train"], data["test"]
    classifier = image_metrics.digit_classifier(None, seed=0, epochs=30)
    for objective in ("logit", "flow_regression"):
        started = time.perf_counter()
        gan = experiment.train_sdgan(train, objective, steps=steps, flow_steps=3, seed=0)
        seconds = time.perf_counter() - started
        samples = np.asarray(gan.generate(2000, seed=1), np.float32)
        summary = image_metrics.image_summary(samples, test, train, classifier=classifier)
        print(f"digits {objective}: FD {summary['fd']:.2f} precision {summary['precision']:.3f} recall "
              f"{summary['recall']:.3f} NN median {summary['nn_median']:.2f} training {seconds:.0f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("toys", "digits"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", default=None, help="toys: run only the rows whose label contains this text")
    args = parser.parse_args()
    if args.what == "toys":
        toys(args.steps or 1200, args.seeds, args.only)
    else:
        digits(args.steps or 2000)


if __name__ == "__main__":
    main()
