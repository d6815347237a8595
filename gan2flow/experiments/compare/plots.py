"""The comparisons' figures: field errors against σ and panels of samples.

:func:`plot_errors` draws cosine and scale-fitted error against σ per loss; :func:`plot_panels` a grid of
sample scatters over a reference, in 2-D coordinates from :func:`projection`, within :func:`axis_limits`.
"""
from __future__ import annotations

import math

import numpy as np

from gan2flow import losses as _losses
from gan2flow import plotting, toys

_pyplot = plotting.pyplot


def _save(figure, path):
    plotting.save_figure(figure, path, dpi=100)
    _pyplot().close(figure)
    return path


def plot_errors(losses_result, path):
    """Cosine and scale-fitted relative error against σ (under q_σ) per loss and problem; returns ``path``."""
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


def projection(prob):
    """2-D coordinates for plots: the data itself in 2-D, else the top-2 principal axes of the mode centres."""
    centers, _, _ = toys.mixture_modes(prob.target)
    if prob.dim == 2:
        return lambda x: np.asarray(x)
    mean = centers.mean(axis=0)
    _, _, vt = np.linalg.svd(centers - mean, full_matrices=False)
    basis = vt[:2].T
    return lambda x: (np.asarray(x, np.float64) - mean) @ basis


def plot_panels(panels, reference, path, title, columns=4, limits=None):
    """One scatter per ``(name, [n, 2] array or None)`` over ``reference``; returns ``path``."""
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


def axis_limits(arrays):
    """Symmetric axis limits covering 99.5% of the coordinates of ``arrays`` (None entries skipped), with margin."""
    values = np.concatenate([np.abs(a).ravel() for a in arrays if a is not None])
    bound = float(np.quantile(values, 0.995)) * 1.3 + 0.1
    return (-bound, bound)
