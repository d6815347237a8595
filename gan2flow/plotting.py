"""Figures for 2-D samples and image grids (matplotlib, headless ``Agg`` backend).

Every function writes one PNG and returns its path; none needs a display.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["scatter_panels", "image_grid", "trajectory_strip", "pyplot", "save_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the headless ``Agg`` backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scatter_panels(panels, path, *, reference=None, trajectories=None, limits=None, title=None):
    """Side-by-side scatter plots of 2-D samples.

    Args:
        panels: list of (title, samples [n, 2]).
        path: PNG file to write (its folder is created).
        reference: optional [m, 2] samples drawn faintly under every panel (e.g. the target).
        trajectories: optional [T, k, 2] paths drawn as lines on the last panel.
        limits: optional (low, high) for both axes.
        title: optional figure title.

    Returns:
        ``path``.
    """
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (name, samples) in zip(axes[0], panels, strict=False):
        samples = np.asarray(samples)
        if reference is not None:
            reference = np.asarray(reference)
            axis.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", linewidths=0)
        axis.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:blue", alpha=0.6, linewidths=0)
        axis.set_title(name)
        axis.set_aspect("equal")
        if limits is not None:
            axis.set_xlim(*limits)
            axis.set_ylim(*limits)
    if trajectories is not None:
        paths = np.asarray(trajectories)
        axis = axes[0][-1]
        for k in range(paths.shape[1]):
            axis.plot(paths[:, k, 0], paths[:, k, 1], lw=0.8, c="tab:red", alpha=0.8)
            axis.scatter(paths[0, k, 0], paths[0, k, 1], s=10, c="tab:red", marker="x")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)
    return path


def image_grid(images, path, *, columns=10, title=None, value_range=None, cmap="gray_r"):
    """A grid of images written as one PNG: grey-scale [n, h, w] or [n, h, w, 1] drawn with ``cmap`` (default
    ``"gray_r"``: dark on light, as digits are drawn; ``"gray"`` for photographs), or RGB [n, h, w, 3] (values
    mapped from ``value_range`` to [0, 1], clipped)."""
    plt = pyplot()
    images = np.asarray(images)
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if images.ndim == 4 and not rgb:
        images = images[..., 0]
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + (0.4 if title else 0)),
                                squeeze=False)
    low, high = value_range if value_range is not None else (images.min(), images.max())
    for index, axis in enumerate(axes.ravel()):
        axis.axis("off")
        if index < len(images) and rgb:
            axis.imshow(np.clip((images[index] - low) / max(high - low, 1e-12), 0.0, 1.0))
        elif index < len(images):
            axis.imshow(images[index], cmap=cmap, vmin=low, vmax=high)
    if title:
        figure.suptitle(title)
    save_figure(figure, path)
    plt.close(figure)
    return path


def trajectory_strip(states, sigmas, path, *, title=None, value_range=None):
    """One image's path across σ levels: states [T, h, w(, 1)], labelled with σ."""
    plt = pyplot()
    states = np.asarray(states)
    if states.ndim == 4:
        states = states[..., 0]
    figure, axes = plt.subplots(1, len(states), figsize=(len(states) * 1.0, 1.4), squeeze=False)
    low, high = value_range if value_range is not None else (states.min(), states.max())
    labels = ["start"] + [f"σ={s:.2g}" for s in np.asarray(sigmas)]
    for axis, image, label in zip(axes[0], states, labels, strict=False):
        axis.imshow(image, cmap="gray_r", vmin=low, vmax=high)
        axis.set_title(label, fontsize=7)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=8)
    save_figure(figure, path)
    plt.close(figure)
    return path


def save_figure(figure, path, dpi=110):
    """Write ``figure`` to the PNG file ``path`` atomically (its folder is created); does not close it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=dpi)
    os.replace(temporary, path)  # atomic: never a half-written figure
