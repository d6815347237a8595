"""Measure which GAN losses give score-difference estimators, and how well flows along them work.

Behind ``gan2flow compare`` (docs/losses.md, "Measured results"). Two comparisons:

1. :func:`compare_losses`. For every loss in :func:`gan2flow.losses.names`, train a σ-conditioned
   discriminator with :class:`gan2flow.SDGAN` (``generator_objective=None``) against a **frozen**
   generator ``G(z) = A z + b``, ``z ~ N(0, I)``, whose law ``q = N(b, A Aᵀ)`` is known exactly, on a
   Gaussian-mixture target ``p`` (tensorflow-probability), so the smoothed score difference
   ``v_σ = ∇log p_σ − ∇log q_σ`` is exact (:class:`gan2flow.AnalyticScoreDifference`). Then, per σ on
   a grid over the trained range, compare the discriminator's field

       v̂_σ(x) = ∇ₓ link(T(x, σ))      (SD-consistent losses)
       v̂_σ(x) = ∇ₓ T(x, σ)            (hinge, Wasserstein: no link, the raw gradient)

   with ``v_σ`` at points ``x ~ q_σ`` (source samples plus σ-noise: the fake side of the
   discriminator's own training distribution at that σ, i.e. the error "weighted under q"); the
   same numbers at ``x ~ p_σ`` (target samples plus σ-noise: where the flow should end) are kept too
   (``points = "p_sigma"``). Finally flow the clean
   source samples along each field over a geometric σ schedule spanning the trained range and score
   the result (sliced W2, MMD², modes, high-quality %).
2. :func:`compare_objectives`. Full SDGAN training (generator and discriminator) of a small MLP
   generator on the 2-D mixture with each generator objective (``minimax``, ``non_saturating``,
   ``logit``, ``flow_regression``) at an equal budget (same steps, batch, optimizers, seeds), scored on
   the generator's samples.

Field errors, per σ (sums over the evaluation points, ‖·‖ the Euclidean norm):

* ``cosine``: mean over points of ``⟨v̂, v⟩ / (‖v̂‖ ‖v‖)`` (0 where ``v̂ = 0``): direction agreement,
  scale-free.
* ``rel_error``: ``sqrt(Σ‖v̂ − v‖² / Σ‖v‖²)``, the field as it is.
* ``rel_error_fit``: the same after the best single scalar ``c* = Σ⟨v̂, v⟩ / Σ‖v̂‖²`` (``scale_fit``),
  fitted on an independent sample of the same points. It is ≈ ``sqrt(1 − ρ²)`` with ρ the pooled
  cosine ``Σ⟨v̂, v⟩ / sqrt(Σ‖v̂‖² Σ‖v‖²)``, so it is the fair comparison for the raw hinge/Wasserstein
  gradients, whose scale is arbitrary (the fit uses the exact field: an oracle, for measurement only).
* ``rel_error_calibrated`` (no-link losses only): after the **oracle-free** scale ``a(σ)`` of a
  one-feature logistic regression ``log r ≈ a(σ) T + b(σ)`` of held-out noised target samples against
  noised source samples at σ (what a user without the exact field can do).

Flows along fields without a link need a step size: the raw gradient has no natural scale. Rows
``"<loss> (raw ∇T)"`` use it as it is with the same ``step_scale`` as every other row; rows
``"<loss> (calibrated)"`` multiply it by the oracle-free ``a(σ_k)`` above at each level. No flow
uses the oracle's scale. The exact field itself is flowed too (``"exact SD (oracle)"``) with the same
schedule: every field here is the score difference against the *initial* source, so long flows
over-concentrate (shared/SD_FLOW.md §7); the schedule (one Euler step per level, ε = 0.5) is short
enough that the exact field gives a good flow, and the oracle row is the reference each estimator is
measured against (not a strict ceiling: a field weaker than the exact one over-concentrates less).

Example::

    from gan2flow.experiments import compare
    result = compare.run("gan2flow-out/compare", quick=True)    # tables, CSV, JSON and PNGs
    print(result["report"])
"""
from __future__ import annotations

import csv
import io
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from gan2flow import _io, plotting, toys
from gan2flow import losses as _losses
from gan2flow.experiments.compare.fields import field_errors
from gan2flow.experiments.compare.losses import compare_losses
from gan2flow.experiments.compare.objectives import GENERATOR_OBJECTIVES, compare_objectives
from gan2flow.experiments.compare.problems import PROBLEMS, Problem, affine_generator, as_problem, problem

tfd = tfp.distributions

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


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _fmt(value, spec):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _mean(rows, key):
    values = [row[key] for row in rows if isinstance(row.get(key), float) and math.isfinite(row[key])]
    if len(values) < len(rows) or not values:
        return math.nan
    return float(np.mean(values))


def _metric_cells(row):
    if row.get("diverged"):
        return ["diverged", "—", "—", "—"]
    return [_fmt(row["sliced_w2"], ".3f"), _fmt(row["mmd"], ".4f"), f"{row['modes']}/{row['n_modes']}",
            _fmt(100.0 * row["high_quality"], ".1f")]


def format_report(losses_result=None, objectives_result=None):
    """Markdown tables of a :func:`compare_losses` and/or :func:`compare_objectives` result.

    Per problem: a field table (σ-averaged cosine and errors under q_σ, the best scale at the smallest
    and the largest σ, and the p_σ cosine and scale-fitted error), a per-σ table of cosine and
    scale-fitted error under q_σ, and a flow table; then the generator-objective table (mean over seeds).

    Returns:
      A Markdown string.
    """
    lines = []
    if losses_result is not None:
        settings = losses_result["settings"]
        lines += [
            "Field errors (module docstring of gan2flow.experiments.compare): `cosine` is the mean per-point cosine "
            "between the discriminator's field v̂ (∇ link(T); ∇T for losses without a link) and the exact "
            "SD v; `rel. error` is ‖v̂ − v‖/‖v‖ pooled over the points; `best scale` refits one scalar c* "
            "per σ on an independent sample (an oracle: for measurement only); `calibrated` uses the "
            "oracle-free logistic scale a(σ) fitted on held-out samples. Columns marked q_σ evaluate at "
            "source samples plus σ-noise, p_σ at target samples plus σ-noise. c* > 1: the field is too weak.",
            ""]
        for name, info in settings["problems"].items():
            fields = [row for row in losses_result["fields"] if row["problem"] == name]
            lines += [f"### {name}: discriminator fields against the exact SD", "",
                      f"d = {info['dim']}, σ ∈ [{info['sigma_range'][0]:g}, {info['sigma_range'][1]:g}], "
                      f"{settings['steps']} training steps of batch {settings['batch_size']}, discriminator "
                      f"MLP {settings['hidden']}; means over {len(info['eval_sigmas'])} σ levels "
                      f"(geometric), {settings['n_eval']} points per level and weighting.", "",
                      "| loss | SD-consistent | cosine (q_σ) | rel. error (q_σ) | rel. error, best scale (q_σ) "
                      "| c* at σ_min → σ_max (q_σ) | rel. error, calibrated (q_σ) | cosine (p_σ) "
                      "| rel. error, best scale (p_σ) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for loss in settings["losses"]:
                rows = sorted((row for row in fields if row["loss"] == loss and row["points"] == "q_sigma"),
                              key=lambda row: row["sigma"])
                target_rows = [row for row in fields if row["loss"] == loss and row["points"] == "p_sigma"]
                label = rows[0]["field"] if rows else loss
                consistent = "yes" if _losses.get(loss).sd_consistent else "no"
                scales = (f"{_fmt(rows[0]['scale_fit'], '.2g')} → {_fmt(rows[-1]['scale_fit'], '.2g')}"
                          if rows else "—")
                lines.append(
                    f"| {label} | {consistent} | {_fmt(_mean(rows, 'cosine'), '.3f')} | "
                    f"{_fmt(_mean(rows, 'rel_error'), '.3f')} | {_fmt(_mean(rows, 'rel_error_fit'), '.3f')} | "
                    f"{scales} | {_fmt(_mean(rows, 'rel_error_calibrated'), '.3f')} | "
                    f"{_fmt(_mean(target_rows, 'cosine'), '.3f')} | "
                    f"{_fmt(_mean(target_rows, 'rel_error_fit'), '.3f')} |")
            sigmas = info["eval_sigmas"]
            lines += ["", "Per σ (x ~ q_σ): cosine / relative error after the best scale.", "",
                      "| loss | " + " | ".join(f"σ={s:.3g}" for s in sigmas) + " |",
                      "|---|" + "---|" * len(sigmas)]
            for loss in settings["losses"]:
                cells = []
                for sigma in sigmas:
                    match = [row for row in fields if row["loss"] == loss and row["points"] == "q_sigma"
                             and abs(row["sigma"] - sigma) <= 1e-9 * sigma]
                    row = match[0] if match else {}
                    cells.append(f"{_fmt(row.get('cosine'), '.2f')} / {_fmt(row.get('rel_error_fit'), '.2f')}")
                lines.append(f"| {loss} | " + " | ".join(cells) + " |")
            flows = [row for row in losses_result["flows"] if row["problem"] == name]
            lines += ["", f"### {name}: flows of {settings['n_flow']} source samples, {len(info['flow_sigmas'])} "
                          f"levels σ {info['sigma_range'][1]:g} → {info['sigma_range'][0]:g}, one Euler step each, "
                          f"ε = {settings['flow_step_scale']:g}", "",
                      "| field | sliced W2 | MMD² | modes | high-quality % |", "|---|---|---|---|---|"]
            for row in flows:
                lines.append(f"| {row['field']} | " + " | ".join(_metric_cells(row)) + " |")
            lines.append("")
    if objectives_result is not None:
        settings = objectives_result["settings"]
        rows = objectives_result["rows"]
        lines += [f"### Generator objectives: SDGAN on {settings['problem']}, loss {settings['loss']}, "
                  f"{settings['steps']} steps of batch {settings['batch_size']}, mean over {settings['seeds']} "
                  "seed(s)", "",
                  "| objective | sliced W2 | MMD² | modes | high-quality % | seconds |", "|---|---|---|---|---|---|"]
        for objective in settings["objectives"]:
            group = [row for row in rows if row["objective"] == objective]
            modes = np.mean([row["modes"] for row in group])
            lines.append(f"| {objective} | {_fmt(_mean(group, 'sliced_w2'), '.3f')} | "
                         f"{_fmt(_mean(group, 'mmd'), '.4f')} | {modes:g}/{group[0]['n_modes']} | "
                         f"{_fmt(100.0 * _mean(group, 'high_quality'), '.1f')} | "
                         f"{_fmt(_mean(group, 'seconds'), '.0f')} |")
        lines.append("")
    return "\n".join(lines)


def _csv(rows, columns):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    return buffer.getvalue()


_FIELD_COLUMNS = ("problem", "field", "loss", "sd_consistent", "points", "sigma", "cosine", "rel_error",
                  "scale_fit", "rel_error_fit", "calibration_scale", "rel_error_calibrated")
_FLOW_COLUMNS = ("problem", "field", "sliced_w2", "mmd", "energy", "modes", "n_modes", "high_quality", "mode_kl",
                 "diverged", "seconds", "note")
_OBJECTIVE_COLUMNS = ("problem", "objective", "loss", "seed", "seconds", "d_loss", "g_loss", "sliced_w2", "mmd",
                      "energy", "modes", "n_modes", "high_quality", "mode_kl")
_TRAINING_COLUMNS = ("problem", "loss", "penalty", "steps", "seconds", "d_loss", "finite", "seconds_fields",
                     "seconds_flows")


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
_pyplot = plotting.pyplot


def _save(figure, path):
    plotting.save_figure(figure, path, dpi=100)
    _pyplot().close(figure)
    return path


def _plot_errors(losses_result, path):
    plt = _pyplot()
    problems = list(losses_result["settings"]["problems"])
    names = losses_result["settings"]["losses"]
    figure, axes = plt.subplots(2, len(problems), figsize=(6.0 * len(problems), 8.0), squeeze=False)
    colors = plt.get_cmap("tab10")
    for column, name in enumerate(problems):
        for index, loss in enumerate(names):
            rows = sorted((row for row in losses_result["fields"] if row["problem"] == name and row["loss"] == loss
                           and row["points"] == "q_sigma"), key=lambda row: row["sigma"])
            style = "-" if _losses.get(loss).sd_consistent else "--"
            sigmas = [row["sigma"] for row in rows]
            for axis, key in ((axes[0][column], "cosine"), (axes[1][column], "rel_error_fit")):
                axis.plot(sigmas, [row[key] for row in rows], style, marker="o", ms=3, color=colors(index % 10),
                          label=loss)
        axes[0][column].set_title(f"{name}: cosine(v̂, v) under q_σ")
        axes[1][column].set_title(f"{name}: relative error after best scale")
        for axis in axes[:, column]:
            axis.set_xscale("log")
            axis.set_xlabel("σ")
            axis.grid(alpha=0.3)
        axes[0][column].set_ylim(-0.1, 1.02)
        axes[1][column].set_ylim(0.0, 1.05)
    axes[0][0].legend(fontsize=7, loc="lower right")
    figure.suptitle("discriminator fields against the exact score difference (dashed: no link, raw ∇T)")
    # Fixed margins: tight_layout costs seconds of CPU per figure.
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.07, top=0.91, wspace=0.2, hspace=0.3)
    return _save(figure, path)


def _projection(prob):
    """2-D coordinates for plots: the data itself in 2-D, else the top-2 principal axes of the mode centres."""
    centers, _, _ = toys.mixture_modes(prob.target)
    if prob.dim == 2:
        return lambda x: np.asarray(x)
    mean = centers.mean(axis=0)
    _, _, vt = np.linalg.svd(centers - mean, full_matrices=False)
    basis = vt[:2].T
    return lambda x: (np.asarray(x, np.float64) - mean) @ basis


def _plot_panels(panels, reference, path, title, columns=4, limits=None):
    plt = _pyplot()
    rows = int(math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (name, x) in zip(axes.ravel(), panels, strict=False):
        axis.axis("on")
        axis.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", linewidths=0)
        if x is not None:
            axis.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", alpha=0.6, linewidths=0)
        else:
            axis.text(0.5, 0.5, "diverged", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(name, fontsize=9)
        axis.set_aspect("equal")
        if limits is not None:
            axis.set_xlim(*limits)
            axis.set_ylim(*limits)
        axis.set_xticks([])
        axis.set_yticks([])
    height = 3.2 * rows  # inches: leave 0.7 in on top for the title and the first row's panel titles
    figure.suptitle(f"{title}; axes ±{limits[1]:.2g}" if limits is not None else title, y=1.0 - 0.12 / height)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1.0 - 0.7 / height, wspace=0.08, hspace=0.2)
    return _save(figure, path)


def _limits(arrays):
    values = np.concatenate([np.abs(a).ravel() for a in arrays if a is not None])
    bound = float(np.quantile(values, 0.995)) * 1.3 + 0.1
    return (-bound, bound)


# ------------------------------------------------------------------------------------------------
# Everything, to a folder
# ------------------------------------------------------------------------------------------------
def run(out_dir="gan2flow-out/compare", *, quick=False, seed=0, losses=None, targets=PROBLEMS,
        objectives=GENERATOR_OBJECTIVES, verbose=True, **budget):
    """Run :func:`compare_losses` and :func:`compare_objectives`; write tables, CSV, JSON and figures.

    Files in ``out_dir``: ``report.md`` (the Markdown tables), ``fields.csv``, ``flows.csv``,
    ``training.csv``, ``objectives.csv``, ``results.json`` (every row plus settings: seeds, budgets,
    schedules, wall times), ``error_vs_sigma.png``, ``flows_<problem>.png`` (a panel of flowed samples
    per field) and ``objectives.png`` (a panel of generator samples per objective).

    Args:
      out_dir: output folder (created).
      quick: the small budget.
      seed: the base seed of both comparisons.
      losses: loss names (default all).
      targets: problems for the loss comparison.
      objectives: generator objectives to compare (default all four); an empty sequence skips that
        comparison.
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
    losses_result = compare_losses(losses=losses, targets=targets, seed=seed, quick=quick, verbose=verbose, **budget)
    objectives_result = None
    if objectives:
        objectives_result = compare_objectives(objectives=objectives, seed=seed, quick=quick, steps=objective_steps,
                                               seeds=objective_seeds, hidden=budget.get("hidden"),
                                               jit_compile=jit_compile, verbose=verbose)
    report = format_report(losses_result, objectives_result)
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "report": _io.write_text(os.path.join(out_dir, "report.md"), report),
        "fields": _io.write_text(os.path.join(out_dir, "fields.csv"), _csv(losses_result["fields"], _FIELD_COLUMNS)),
        "flows": _io.write_text(os.path.join(out_dir, "flows.csv"), _csv(losses_result["flows"], _FLOW_COLUMNS)),
        "training": _io.write_text(os.path.join(out_dir, "training.csv"),
                                   _csv(losses_result["training"], _TRAINING_COLUMNS)),
        "error_plot": _plot_errors(losses_result, os.path.join(out_dir, "error_vs_sigma.png")),
    }
    for prob_name, panels in losses_result["samples"].items():
        prob = as_problem(next(t for t in targets if (t if isinstance(t, str) else t.name) == prob_name))
        project = _projection(prob)
        reference = project(panels["target p (held-out)"])
        projected = [(name, None if x is None else project(x)) for name, x in panels.items()]
        title = f"{prob_name}: source samples flowed along each field" + (
            "" if prob.dim == 2 else " (top-2 principal axes of the mode centres)")
        # Limits from the target and the source: particles a broken field throws far fall outside (the
        # tables report them).
        files[f"flows_{prob_name}"] = _plot_panels(
            projected, reference, os.path.join(out_dir, f"flows_{prob_name}.png"), title,
            limits=_limits([reference, project(panels["source q (before flow)"])]))
    if objectives_result is not None:
        files["objectives"] = _io.write_text(os.path.join(out_dir, "objectives.csv"),
                                             _csv(objectives_result["rows"], _OBJECTIVE_COLUMNS))
        panels = [(name, x) for name, x in objectives_result["samples"].items() if name != "target p (held-out)"]
        reference = objectives_result["samples"]["target p (held-out)"]
        files["objectives_plot"] = _plot_panels(
            panels, reference, os.path.join(out_dir, "objectives.png"),
            f"generator samples after SDGAN training ({objectives_result['settings']['steps']} steps)",
            limits=_limits([reference]))
    seconds = time.perf_counter() - started
    result = {
        "losses": {key: value for key, value in losses_result.items() if key != "samples"},
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
