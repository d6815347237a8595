"""Every refiner on every zoo GAN: the table behind ``gan2flow compare --refiners`` (docs/refiners.md).

    from gan2flow.experiments import refiners
    result = refiners.run("gan2flow-out/refiners", quick=True)    # CSV, Markdown, JSON and PNGs

For each member of :mod:`gan2flow.experiments.zoo` (trained once and cached):

1. convert it **once** with gan2flow's defaults (``gan2flow.convert(G, D, member.train, loss=member.loss)``,
   Keras's global seed set to 0 first), cached as ``<out>/flows/<member>.keras`` so that reruns skip it.
   One conversion for all seeds: the comparison is between refiners *given one calibrated discriminator*;
   conversion's own seed-to-seed spread is issue 13's subject (docs/zoo.md), and converting per seed would
   triple the cost and mix the two sources of spread.
2. for each seed and each refiner of :func:`gan2flow.refiners.names` (plus the raw generator), draw n
   samples with ``refiner(flow, n, seed=seed)`` at the refiner's defaults, timing it (wall-clock; the first
   call of a refiner on a member also pays its compilation, so seeds after the first are the fair timing:
   the table reports the median over seeds), and measure them against the member's held-out data with
   :class:`gan2flow.experiments.measures.Reference` (the zoo benchmark's metrics).

The same budget rules for every refiner: the same n output samples, the same seeds, the same calibrated
log-ratio (``gan2flow.refiners``' module docstring), each method at its paper's defaults; cost is what
each needs for that (seconds, discriminator evaluations, gradient evaluations, acceptance rates).

Outputs in ``out``: ``refiners.csv`` (one row per member × refiner × seed), ``refiners.md`` (mean ± standard
deviation over seeds per member and refiner, and "best" marks), ``refiners.json`` (everything, with the
machine) and ``samples_<member>.png`` (2-D: samples side by side; digits: an image grid per refiner).
"""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np

__all__ = ["QUALITY", "converted", "run", "summarize", "markdown"]

#: The headline quality per kind of member (lower is better unless listed in _HIGHER_BETTER).
QUALITY = {"mixture": ("sw", "modes", "hq", "min_share", "nn_ratio"), "moons": ("sw", "hq", "nn_ratio"),
           "digits": ("fd", "precision", "recall", "sw", "nn_ratio")}
_HIGHER_BETTER = {"modes", "hq", "min_share", "precision", "recall"}
_COLUMNS = ("member", "method", "seed", "n", "seconds", "sw", "fd", "precision", "recall", "modes", "n_modes", "hq",
            "min_share", "nn_ratio", "out", "discriminator_evaluations", "gradient_evaluations",
            "generator_evaluations", "acceptance_rate", "sigma", "error")


def _kind(member):
    if member.train.ndim > 2:
        return "digits"
    return "mixture" if "centers" in member.info else "moons"


def converted(member, folder, *, verbose=True):
    """(The member's GANFlow, convert seconds): converted with the defaults once and cached as
    ``<folder>/<name>.keras`` (its convert time in ``<name>.json``)."""
    import keras

    import gan2flow

    path = os.path.join(folder, f"{member.name}.keras")
    timing = os.path.join(folder, f"{member.name}.json")
    if os.path.isfile(path):
        seconds = None
        if os.path.isfile(timing):
            with open(timing, encoding="utf-8") as handle:
                seconds = json.load(handle).get("convert_seconds")
        return gan2flow.load(path), seconds
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss, verbose=0)
    seconds = time.perf_counter() - start
    os.makedirs(folder, exist_ok=True)
    flow.save(path)
    with open(timing, "w", encoding="utf-8") as handle:
        json.dump({"convert_seconds": seconds}, handle)
    if verbose:
        print(f"  converted {member.name} in {seconds:.0f} s -> {path}", flush=True)
    return flow, seconds


def _measure(refiner, flow, n, seed, reference):
    """One (refiner, seed) row: samples, seconds, report and metrics."""
    report = {}
    start = time.perf_counter()
    try:
        samples = refiner(flow, n, seed=seed, report=report)
    except Exception as error:  # noqa: BLE001 (a failing refiner is a row of the table)
        return None, {"seconds": time.perf_counter() - start, "error": f"{type(error).__name__}: {error}"}
    seconds = time.perf_counter() - start
    row = {"seconds": seconds}
    row.update({key: report.get(key) for key in ("discriminator_evaluations", "gradient_evaluations",
                                                 "generator_evaluations", "acceptance_rate", "sigma")})
    row.update(reference.evaluate(samples))
    return samples, row


def _raw(flow, n, *, seed=None, report=None):
    """The generator's own samples (the row every refiner is measured against)."""
    if report is not None:
        report.update(discriminator_evaluations=0, gradient_evaluations=0, generator_evaluations=n)
    return np.asarray(flow.sample(n, refine=False, seed=seed))


def run(out, *, quick=False, members=None, seeds=None, n=None, methods=None, verbose=True):
    """Run the comparison and write its files into ``out``; returns ``{"rows", "summary", "report"}``.

    Args:
        out: output folder (converted flows are cached in ``<out>/flows``).
        quick: the fast zoo members, 2 seeds, 500 samples (minutes); a smoke test, not the measured table.
        members: zoo member names (default: all; the fast ones with ``quick``).
        seeds: sampling seeds (default 0, 1, 2; 0, 1 with ``quick``).
        n: samples per refiner and seed (default 1 000; 500 with ``quick``).
        methods: refiner names (default: all of :func:`gan2flow.refiners.names`).
        verbose: print progress.
    """
    from gan2flow import refiners
    from gan2flow.experiments import measures, zoo

    members = list(members or zoo.names(fast=True if quick else None))
    seeds = list(seeds if seeds is not None else ((0, 1) if quick else (0, 1, 2)))
    n = int(n or (500 if quick else 1000))
    methods = list(methods or refiners.names())
    for name in members:
        zoo.recipe(name)
    for method in methods:
        refiners.get(method)
    os.makedirs(out, exist_ok=True)
    machine = measures.machine()
    rows, figures, conversions = [], {}, {}
    for name in members:
        member = zoo.load(name, verbose=int(verbose))
        if verbose:
            print(f"== {name}", flush=True)
        flow, convert_seconds = converted(member, os.path.join(out, "flows"), verbose=verbose)
        conversions[name] = convert_seconds
        reference = measures.Reference(member, n)
        panels = []
        for method in ["raw"] + methods:
            refiner = _raw if method == "raw" else refiners.get(method)
            for seed in seeds:
                samples, row = _measure(refiner, flow, n, seed, reference)
                row.update(member=name, method=method, seed=seed, n=n)
                rows.append(row)
                if verbose:
                    print("  " + _line(row), flush=True)
                if seed == seeds[0] and samples is not None:
                    panels.append((method, samples))
        figures[name] = _figure(member, panels, os.path.join(out, f"samples_{name}.png"))
        partial = markdown(summarize(rows), machine, seeds=seeds, n=n, conversions=conversions)
        _write(out, rows, machine, conversions, members, seeds, n, methods, report=partial)  # readable if interrupted
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    summary = summarize(rows)
    report = markdown(summary, machine, seeds=seeds, n=n, conversions=conversions)
    _write(out, rows, machine, conversions, members, seeds, n, methods, report=report)
    if verbose:
        print(report)
    return {"rows": rows, "summary": summary, "report": report, "figures": figures}


def _line(row):
    keys = ("sw", "fd", "modes", "hq", "recall", "nn_ratio", "seconds", "acceptance_rate")
    parts = [f"{key}={row[key]:.3g}" for key in keys if isinstance(row.get(key), (int, float))]
    return f"{row['method']:>15} seed {row['seed']}: " + " ".join(parts) + (f" ERROR {row['error']}" if "error" in row
                                                                            else "")


def summarize(rows):
    """Mean and standard deviation over seeds per (member, method): ``{(member, method): {key: (mean, std)}}``
    (seconds: the median, which leaves out the first call's compilation)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["member"], row["method"]), []).append(row)
    summary = {}
    for key, group in groups.items():
        stats = {"errors": sum("error" in row for row in group), "seeds": len(group)}
        for column in _COLUMNS[4:-1]:
            values = [row[column] for row in group if isinstance(row.get(column), (int, float))
                      and not isinstance(row.get(column), bool)]
            if values:
                values = np.asarray(values, np.float64)
                center = float(np.median(values)) if column == "seconds" else float(values.mean())
                stats[column] = (center, float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        summary[key] = stats
    return summary


def _best(summary, member, column):
    """The refiners (not raw) with the best mean of ``column`` on ``member``: a set, empty when every refiner
    ties or for the guard columns (``nn_ratio``, ``out``: lower is not better there, below 0.75 is copying)."""
    if column in ("nn_ratio", "out"):
        return set()
    means = {method: stats[column][0] for (name, method), stats in summary.items()
             if name == member and method != "raw" and column in stats}
    if not means:
        return set()
    target = max(means.values()) if column in _HIGHER_BETTER else min(means.values())
    winners = {method for method, mean in means.items() if mean == target}
    return set() if len(winners) == len(means) else winners


def _cell(stats, column, digits=3):
    if column not in stats:
        return "–"
    mean, std = stats[column]
    return f"{mean:.{digits}g} ± {std:.2g}" if std else f"{mean:.{digits}g}"


def markdown(summary, machine, *, seeds, n, conversions):
    """The per-member tables (mean ± standard deviation over seeds; **bold**: the best refiner(s) on that quality
    column; seconds: the median over seeds)."""
    members = list(dict.fromkeys(member for member, _ in summary))
    lines = [f"Measured {machine['date']} on {machine['cores']} × {machine['cpu']} (load average "
             f"{', '.join(map(str, machine['load_average']))}), TensorFlow {machine['tensorflow']}; "
             f"n = {n} samples per refiner, seeds {', '.join(map(str, seeds))}; mean ± standard deviation over "
             "seeds (seconds: median); **bold**: the best refiner on a quality column. d-evals: discriminator "
             "forward passes; grads: input-gradient "
             "evaluations (through G in latent space); acc.: acceptance rate.", ""]
    for member in members:
        methods = [method for name, method in summary if name == member]
        columns = [c for c in ("fd", "precision", "recall", "sw", "modes", "hq", "min_share", "nn_ratio", "out")
                   if any(c in summary[(member, m)] for m in methods)]
        convert = conversions.get(member)
        lines += [f"### {member}" + (f" (convert {convert:.0f} s)" if convert else ""), "",
                  "| method | " + " | ".join(columns) + " | seconds | d-evals | grads | acc. |",
                  "|---|" + "---|" * (len(columns) + 4)]
        best = {column: _best(summary, member, column) for column in columns}
        for method in methods:
            stats = summary[(member, method)]
            cells = []
            for column in columns:
                text = _cell(stats, column)
                cells.append(f"**{text}**" if method in best[column] else text)
            seconds = f"{stats['seconds'][0]:.2g}" if "seconds" in stats else "–"
            cost = [seconds, _cell(stats, "discriminator_evaluations", 2), _cell(stats, "gradient_evaluations", 2),
                    _cell(stats, "acceptance_rate", 2)]
            error = f" ({stats['errors']} errors)" if stats["errors"] else ""
            lines.append(f"| {method}{error} | " + " | ".join(cells + cost) + " |")
        lines.append("")
    return "\n".join(lines)


def _figure(member, panels, path):
    from gan2flow import plotting

    if not panels:
        return None
    if member.train.ndim > 2:
        images = np.concatenate([np.asarray(samples[:10]) for _, samples in panels])
        title = "rows: " + ", ".join(method for method, _ in panels)
        return plotting.image_grid(images, path, columns=10, title=title, value_range=(-1.0, 1.0))
    heldout = np.asarray(member.heldout)
    view = [(method, np.asarray(samples).reshape(len(samples), -1)[:, :2]) for method, samples in panels]
    low, high = float(heldout[:, :2].min()), float(heldout[:, :2].max())
    margin = 0.25 * (high - low)
    return plotting.scatter_panels(view, path, reference=heldout[:, :2], limits=(low - margin, high + margin),
                                   title=member.name + ("" if heldout.shape[1] == 2 else " (first two coordinates)"))


def _write(out, rows, machine, conversions, members, seeds, n, methods, report=None):
    from gan2flow import _io

    def write_csv(path):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: row.get(key) for key in _COLUMNS})

    _io.atomic_write(os.path.join(out, "refiners.csv"), write_csv, ".csv")
    payload = {"machine": machine, "members": members, "seeds": seeds, "n": n, "methods": methods,
               "convert_seconds": conversions, "rows": rows}

    def write_json(path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))

    _io.atomic_write(os.path.join(out, "refiners.json"), write_json, ".json")
    if report is not None:
        def write_text(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(report)

        _io.atomic_write(os.path.join(out, "refiners.md"), write_text, ".md")
