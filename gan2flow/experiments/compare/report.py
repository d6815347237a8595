"""The comparisons' results as text: Markdown tables (:func:`format_report`, :func:`format_seed_summary`)
and CSV (:func:`to_csv`).

The ``*_COLUMNS`` tuples name the columns of ``fields.csv``, ``flows.csv``, ``objectives.csv`` and
``training.csv``.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from gan2flow import losses as _losses


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


def _training_label(settings):
    """```sd_dsm` (r1 0.001, DSM 10 on the SD-consistent losses)``: the discriminator training that ran."""
    name = settings.get("discriminator_training")
    if name is None:  # results written before the trainings had names
        return "as recorded in results.json"
    options = settings.get("training_options") or {}
    parts = []
    if options.get("penalty"):
        weight = options.get("penalty_weight")
        parts.append(f"{options['penalty']} {'default weight' if weight is None else format(weight, 'g')}")
    if options.get("denoising_weight"):
        parts.append(f"DSM {options['denoising_weight']:g} on the SD-consistent losses")
    return f"`{name}`" + (f" ({', '.join(parts)})" if parts else "")


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
                      f"MLP {settings['hidden']}, training {_training_label(settings)}; means over "
                      f"{len(info['eval_sigmas'])} σ levels (geometric), {settings['n_eval']} points per level "
                      "and weighting.", "",
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
                  "seed(s) (± standard deviation)", "",
                  "| objective | sliced W2 | MMD² | modes | high-quality % | seconds |", "|---|---|---|---|---|---|"]
        for objective in settings["objectives"]:
            group = [row for row in rows if row["objective"] == objective]
            modes = np.mean([row["modes"] for row in group])
            lines.append(f"| {objective} | {_spread([row['sliced_w2'] for row in group], '.3f')} | "
                         f"{_fmt(_mean(group, 'mmd'), '.4f')} | {modes:g}/{group[0]['n_modes']} | "
                         f"{_spread([100.0 * row['high_quality'] for row in group], '.1f')} | "
                         f"{_fmt(_mean(group, 'seconds'), '.0f')} |")
        lines.append("")
    return "\n".join(lines)


def seed_summary_rows(results):
    """The headline numbers of each :func:`compare_losses` result, one row per (problem, loss, seed).

    Per row: ``cosine`` (mean over the σ levels, x ~ q_σ), ``rel_error_fit`` (likewise),
    ``scale_sigma_min`` / ``scale_sigma_max`` (the best scale c* at the smallest and the largest σ),
    ``worst_scale`` (the c* of the level farthest from 1 in ratio, ``max |log c*|``; NaN when some c* ≤ 0)
    and ``sliced_w2`` (the flow along the field; NaN if it diverged).
    """
    rows = []
    for result in results:
        seed = result["settings"]["seed"]
        for problem in result["settings"]["problems"]:
            for loss in result["settings"]["losses"]:
                fields = sorted((row for row in result["fields"] if row["problem"] == problem and row["loss"] == loss
                                 and row["points"] == "q_sigma"), key=lambda row: row["sigma"])
                label = fields[0]["field"] if fields else loss
                flows = [row for row in result["flows"] if row["problem"] == problem and row["field"] == label]
                scales = np.array([row["scale_fit"] for row in fields], np.float64)
                worst = math.nan
                if len(scales) and np.all(scales > 0):
                    worst = float(scales[np.argmax(np.abs(np.log(scales)))])
                rows.append(dict(problem=problem, loss=loss, seed=seed, cosine=_mean(fields, "cosine"),
                                 rel_error_fit=_mean(fields, "rel_error_fit"),
                                 scale_sigma_min=float(scales[0]) if len(scales) else math.nan,
                                 scale_sigma_max=float(scales[-1]) if len(scales) else math.nan,
                                 worst_scale=worst,
                                 sliced_w2=(math.nan if not flows or flows[0].get("diverged")
                                            else float(flows[0]["sliced_w2"]))))
    return rows


def _spread(values, spec):
    values = np.asarray(values, np.float64)
    if not len(values) or not np.all(np.isfinite(values)):
        return "—"
    if len(values) == 1:
        return format(float(values[0]), spec)
    return f"{format(float(np.mean(values)), spec)} ± {format(float(np.std(values, ddof=1)), spec)}"


def format_seed_summary(rows):
    """A Markdown table of :func:`seed_summary_rows`: mean ± sample standard deviation over the seeds."""
    seeds = sorted({row["seed"] for row in rows})
    lines = [f"### Headline numbers over {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean ± standard "
             "deviation", "",
             "| problem | loss | cosine (q_σ) | rel. error, best scale (q_σ) | c* at σ_min | c* at σ_max "
             "| worst c* | flow sliced W2 |", "|---|---|---|---|---|---|---|---|"]
    keys = []
    for row in rows:
        if (row["problem"], row["loss"]) not in keys:
            keys.append((row["problem"], row["loss"]))
    for problem, loss in keys:
        group = [row for row in rows if row["problem"] == problem and row["loss"] == loss]
        cells = [_spread([row[key] for row in group], spec) for key, spec in (
            ("cosine", ".3f"), ("rel_error_fit", ".3f"), ("scale_sigma_min", ".2f"), ("scale_sigma_max", ".2f"),
            ("worst_scale", ".2f"), ("sliced_w2", ".3f"))]
        lines.append(f"| {problem} | {loss} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def to_csv(rows, columns):
    """CSV text of ``rows`` (dicts) with a header of ``columns``; missing keys give empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    return buffer.getvalue()


FIELD_COLUMNS = ("problem", "field", "loss", "sd_consistent", "points", "sigma", "cosine", "rel_error",
                  "scale_fit", "rel_error_fit", "calibration_scale", "rel_error_calibrated")
FLOW_COLUMNS = ("problem", "field", "sliced_w2", "mmd", "energy", "modes", "n_modes", "high_quality", "mode_kl",
                 "diverged", "seconds", "note")
OBJECTIVE_COLUMNS = ("problem", "objective", "loss", "seed", "seconds", "d_loss", "g_loss", "sliced_w2", "mmd",
                      "energy", "modes", "n_modes", "high_quality", "mode_kl")
SEED_COLUMNS = ("problem", "loss", "seed", "cosine", "rel_error_fit", "scale_sigma_min", "scale_sigma_max",
                "worst_scale", "sliced_w2")
TRAINING_COLUMNS = ("problem", "loss", "penalty", "denoising_weight", "steps", "seconds", "d_loss", "finite",
                    "seconds_fields",
                     "seconds_flows")
