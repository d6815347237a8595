"""The demos behind ``gan2flow demo``: embedded data, no downloads, about a minute on 2 CPU cores.

- :func:`kernel_demo`: the training-free kernel SD flow carries N(0, I) particles to ``grid25``.

Each demo prints a before/after metrics table, writes a PNG figure and a JSON of the numbers into an
output folder, and returns the numbers.
"""
from __future__ import annotations

import os
import time

import numpy as np

from gan2flow import _io, _progress, estimators, metrics, plotting, toys
from gan2flow import sigmas as schedules

__all__ = ["kernel_demo", "format_table"]

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
    final, path = _progress.flow_with_progress(
        x0, estimator, sigmas, label="kernel SD flow N(0, I) -> grid25", verbose=verbose, record=True,
        step_scale=step_scale, steps_per_sigma=steps_per_sigma)
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
