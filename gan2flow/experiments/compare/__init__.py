"""Measure which GAN losses give score-difference estimators, and how well flows along them work.

Behind ``gan2flow compare`` (docs/losses.md, "Measured results"). Two comparisons:

1. :func:`compare_losses`. For every loss in :func:`gan2flow.losses.names`, train a σ-conditioned
   discriminator against a **frozen** affine generator whose law is known exactly, so the smoothed score
   difference ``v_σ = ∇log p_σ − ∇log q_σ`` is exact; measure the discriminator's field against it per σ,
   then flow source samples along each field and score the result (sliced W2, MMD², modes,
   high-quality %).
2. :func:`compare_objectives`. Full SDGAN training (generator and discriminator) of a small MLP
   generator on the 2-D mixture with each generator objective (``minimax``, ``non_saturating``,
   ``logit``, ``flow_regression``) at an equal budget (same steps, batch, optimizers, seeds), scored on
   the generator's samples.

The field errors are defined in :mod:`~gan2flow.experiments.compare.fields`, the loss comparison's
protocol (evaluation points, flows, the oracle row) in :mod:`~gan2flow.experiments.compare.losses`.

The sub-package, one job per module; each module imports only modules listed before it:

- :mod:`~gan2flow.experiments.compare.problems`: :class:`Problem`, :func:`problem`, :func:`affine_generator`.
- :mod:`~gan2flow.experiments.compare.scores`: sample scores (distances, modes, high-quality fraction).
- :mod:`~gan2flow.experiments.compare.fields`: :func:`field_errors` and the oracle-free calibration scale.
- :mod:`~gan2flow.experiments.compare.budgets`: the full/quick budgets and the shared training set-up.
- :mod:`~gan2flow.experiments.compare.losses`: :func:`compare_losses`.
- :mod:`~gan2flow.experiments.compare.objectives`: :func:`compare_objectives`.
- :mod:`~gan2flow.experiments.compare.report`: :func:`format_report` and the CSV tables.
- :mod:`~gan2flow.experiments.compare.plots`: the figures.
- this ``__init__``: :func:`run`, everything to a folder, and the public names.

Example::

    from gan2flow.experiments import compare
    result = compare.run("gan2flow-out/compare", quick=True)    # tables, CSV, JSON and PNGs
    print(result["report"])
"""
from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from gan2flow import _checks, _io
from gan2flow.experiments.compare.fields import field_errors
from gan2flow.experiments.compare.losses import compare_losses
from gan2flow.experiments.compare.objectives import GENERATOR_OBJECTIVES, compare_objectives
from gan2flow.experiments.compare.plots import axis_limits, plot_errors, plot_panels, projection
from gan2flow.experiments.compare.problems import PROBLEMS, Problem, affine_generator, as_problem, problem
from gan2flow.experiments.compare.report import (
    FIELD_COLUMNS,
    FLOW_COLUMNS,
    OBJECTIVE_COLUMNS,
    SEED_COLUMNS,
    TRAINING_COLUMNS,
    format_report,
    format_seed_summary,
    seed_summary_rows,
    to_csv,
)

__all__ = [
    "Problem",
    "problem",
    "PROBLEMS",
    "GENERATOR_OBJECTIVES",
    "affine_generator",
    "field_errors",
    "compare_losses",
    "compare_objectives",
    "run",
    "format_report",
]


def run(out_dir="gan2flow-out/compare", *, quick=False, seed=0, seeds=None, losses=None, targets=PROBLEMS,
        objectives=GENERATOR_OBJECTIVES, discriminator_options=None, verbose=True, **budget):
    """Run :func:`compare_losses` and :func:`compare_objectives`; write tables, CSV, JSON and figures.

    Files in ``out_dir``: ``report.md`` (the Markdown tables), ``fields.csv``, ``flows.csv``,
    ``training.csv``, ``objectives.csv``, ``seeds.csv`` (the headline numbers per problem, loss and seed),
    ``results.json`` (every row plus settings: seeds, budgets,
    schedules, wall times), ``error_vs_sigma.png``, ``flows_<problem>.png`` (a panel of flowed samples
    per field) and ``objectives.png`` (a panel of generator samples per objective).

    Args:
      out_dir: output folder (created).
      quick: the small budget.
      seed: the base seed of both comparisons (when ``seeds`` is None).
      seeds: several base seeds (e.g. ``(0, 1, 2)``): the loss comparison runs once per seed and the
        report adds a table of the headline numbers as mean ± standard deviation over the seeds
        (:func:`~gan2flow.experiments.compare.report.seed_summary`); the per-σ tables, CSV files and
        figures are those of the first seed; the objective comparison runs ``len(seeds)`` seeds from the
        first. None: ``(seed,)``.
      losses: loss names (default all).
      targets: problems for the loss comparison.
      objectives: generator objectives to compare (default all four); an empty sequence skips that
        comparison.
      discriminator_options: keyword arguments of :func:`gan2flow.models.mlp_discriminator` for both
        comparisons (e.g. ``{"parametrisation": "plain"}``); None: the builder's defaults.
      verbose: print progress lines and the report.
      **budget: passed to :func:`compare_losses` (e.g. ``steps=50``, ``hidden=(16,)``,
        ``jit_compile=False``); ``objective_steps`` / ``objective_seeds`` set those of
        :func:`compare_objectives`.

    Returns:
      dict with ``losses`` and ``objectives`` (the two results, without samples), ``report`` (Markdown),
      ``files`` and ``seconds``.
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    load_before = _load_average()
    objective_steps = budget.pop("objective_steps", None)
    objective_seeds = budget.pop("objective_seeds", None)
    jit_compile = budget.get("jit_compile", False)
    seeds = [seed] if seeds is None else [_checks.positive_int(s, "seeds", allow_zero=True) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct integers >= 0, got {seeds!r}.")
    seed = seeds[0]
    if objective_seeds is None and len(seeds) > 1:
        objective_seeds = len(seeds)
    per_seed = []
    for run_seed in seeds:
        per_seed.append(compare_losses(losses=losses, targets=targets, seed=run_seed, quick=quick, verbose=verbose,
                                       discriminator_options=discriminator_options, **budget))
    losses_result = per_seed[0]
    summary_rows = seed_summary_rows(per_seed)
    objectives_result = None
    if objectives:
        objectives_result = compare_objectives(objectives=objectives, seed=seed, quick=quick, steps=objective_steps,
                                               seeds=objective_seeds, hidden=budget.get("hidden"),
                                               discriminator_options=discriminator_options,
                                               jit_compile=jit_compile, verbose=verbose)
    report = format_report(losses_result, objectives_result)
    if len(seeds) > 1:
        report = format_seed_summary(summary_rows) + "\n" + report
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "report": _io.write_text(os.path.join(out_dir, "report.md"), report),
        "fields": _io.write_text(os.path.join(out_dir, "fields.csv"), to_csv(losses_result["fields"], FIELD_COLUMNS)),
        "flows": _io.write_text(os.path.join(out_dir, "flows.csv"), to_csv(losses_result["flows"], FLOW_COLUMNS)),
        "training": _io.write_text(os.path.join(out_dir, "training.csv"),
                                   to_csv(losses_result["training"], TRAINING_COLUMNS)),
        "seeds": _io.write_text(os.path.join(out_dir, "seeds.csv"), to_csv(summary_rows, SEED_COLUMNS)),
        "error_plot": plot_errors(losses_result, os.path.join(out_dir, "error_vs_sigma.png")),
    }
    for prob_name, panels in losses_result["samples"].items():
        prob = as_problem(next(t for t in targets if (t if isinstance(t, str) else t.name) == prob_name))
        project = projection(prob)
        reference = project(panels["target p (held-out)"])
        projected = [(name, None if x is None else project(x)) for name, x in panels.items()]
        title = f"{prob_name}: source samples flowed along each field" + (
            "" if prob.dim == 2 else " (top-2 principal axes of the mode centres)")
        # Limits from the target and the source: particles a broken field throws far fall outside (the
        # tables report them).
        files[f"flows_{prob_name}"] = plot_panels(
            projected, reference, os.path.join(out_dir, f"flows_{prob_name}.png"), title,
            limits=axis_limits([reference, project(panels["source q (before flow)"])]))
    if objectives_result is not None:
        files["objectives"] = _io.write_text(os.path.join(out_dir, "objectives.csv"),
                                             to_csv(objectives_result["rows"], OBJECTIVE_COLUMNS))
        panels = [(name, x) for name, x in objectives_result["samples"].items() if name != "target p (held-out)"]
        reference = objectives_result["samples"]["target p (held-out)"]
        files["objectives_plot"] = plot_panels(
            panels, reference, os.path.join(out_dir, "objectives.png"),
            f"generator samples after SDGAN training ({objectives_result['settings']['steps']} steps)",
            limits=axis_limits([reference]))
    seconds = time.perf_counter() - started
    result = {
        "losses": {key: value for key, value in losses_result.items() if key != "samples"},
        "seeds": seeds,
        "seed_rows": summary_rows,
        "losses_other_seeds": [{key: value for key, value in r.items() if key != "samples"} for r in per_seed[1:]],
        "objectives": None if objectives_result is None else {
            key: value for key, value in objectives_result.items() if key != "samples"},
        "report": report,
        "seconds": seconds,
        # CPU seconds of this process and the machine's 1-minute load average before and after: on a
        # shared machine the wall time depends on everyone else's jobs.
        "cpu_seconds": time.process_time() - cpu_started,
        "environment": {"tensorflow": tf.__version__, "keras": keras.__version__,
                        "tensorflow_probability": tfp.__version__, "numpy": np.__version__,
                        "cpu_count": os.cpu_count(), "load_average_before": load_before,
                        "load_average_after": _load_average()},
    }
    files["results"] = os.path.join(out_dir, "results.json")
    result["files"] = files
    _io.write_json(files["results"], result)
    if verbose:
        print(report)
        print(f"wrote {out_dir}/ ({seconds:.0f} s wall, {result['cpu_seconds']:.0f} s CPU)")
    return result


def _load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
