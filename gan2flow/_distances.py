"""Pairwise squared distances and the Gaussian W2 closed form, in float64, shared by metrics and image_metrics.

A private module made for sharing (public names inside): :mod:`gan2flow.metrics` (MMD, energy
distance, ``gaussian_w2``) and :mod:`gan2flow.image_metrics` (Fréchet distance, k-NN precision/recall,
nearest distances) compute with the same pieces without importing each other. The public home of
:func:`gaussian_w2` is ``gan2flow.metrics.gaussian_w2``.
"""
from __future__ import annotations

import math

import numpy as np

from gan2flow import _checks

__all__ = ["centered", "squared_distances", "gaussian_parameters", "sqrtm_psd", "gaussian_w2"]


def centered(x, y):
    """Subtract the pooled mean (distances are unchanged; round-off of the Gram trick shrinks)."""
    center = (x.sum(axis=0) + y.sum(axis=0)) / (len(x) + len(y))
    return x - center, y - center


_DIRECT_MAX_DIM = 8  # up to this dimension, squared distances are summed per axis (no cancellation)


def squared_distances(a, b, a_norms, b_norms):
    """[len(a), len(b)] squared distances: per-axis sums for small d, else the Gram form."""
    if a.shape[1] <= _DIRECT_MAX_DIM:
        squared = np.square(a[:, 0, None] - b[None, :, 0])
        scratch = np.empty_like(squared)
        for axis in range(1, a.shape[1]):
            np.subtract(a[:, axis, None], b[None, :, axis], out=scratch)
            squared += np.square(scratch, out=scratch)
        return squared
    squared = a_norms[:, None] + b_norms[None, :]
    squared -= 2.0 * (a @ b.T)
    return np.maximum(squared, 0.0, out=squared)


def gaussian_parameters(mean, cov, name_mean, name_cov, dim=None):
    """(mean [d], cov [d, d]) as float64, checked: finite, matching shapes, cov symmetric PSD (symmetrised)."""
    mean = _checks.as_float64(mean, name_mean, rank=1)
    cov = _checks.as_float64(cov, name_cov, rank=2)
    d = mean.shape[0] if dim is None else dim
    if mean.shape != (d,) or d == 0:
        raise ValueError(f"`{name_mean}` must have shape [d]=({d},), got shape {mean.shape}.")
    if cov.shape != (d, d):
        raise ValueError(f"`{name_cov}` must have shape [d, d]=({d}, {d}), got shape {cov.shape}.")
    scale = max(1.0, float(np.max(np.abs(cov))))
    if np.max(np.abs(cov - cov.T)) > 1e-8 * scale:
        asymmetry = float(np.max(np.abs(cov - cov.T)))
        raise ValueError(f"`{name_cov}` must be symmetric, got max |C − Cᵀ| = {asymmetry!r}.")
    cov = 0.5 * (cov + cov.T)
    smallest = float(np.linalg.eigvalsh(cov)[0])
    if smallest < -1e-10 * scale:
        raise ValueError(
            f"`{name_cov}` must be positive semi-definite, got smallest eigenvalue {smallest!r}."
        )
    return mean, cov


def sqrtm_psd(matrix):
    """Symmetric square root of a symmetric PSD matrix via its eigendecomposition."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def gaussian_w2(mean1, cov1, mean2, cov2):
    """2-Wasserstein distance between N(m1, C1) and N(m2, C2) (closed form, float64).

    W2² = ‖m1 − m2‖² + tr(C1) + tr(C2) − 2 tr( (C1^{1/2} C2 C1^{1/2})^{1/2} )

    In 1-D: W2 = sqrt((m1 − m2)² + (s1 − s2)²). Absolute round-off ≈ 1e-8·sqrt(tr C) (the square root
    of a float64 cancellation), so equal Gaussians give ~1e-8, not exactly 0.

    Args:
      mean1, mean2: arrays [d].
      cov1, cov2: symmetric positive semi-definite arrays [d, d].

    Returns:
      Python float W2 (not squared).

    Raises:
      ValueError: wrong shapes or dimensions, non-finite, non-symmetric or non-PSD covariances.

    Example::

        gaussian_w2([0.0], [[1.0]], [3.0], [[4.0]])   # sqrt(9 + 1)
    """
    mean1, cov1 = gaussian_parameters(mean1, cov1, "mean1", "cov1")
    mean2, cov2 = gaussian_parameters(mean2, cov2, "mean2", "cov2", dim=mean1.shape[0])
    root1 = sqrtm_psd(cov1)
    cross = root1 @ cov2 @ root1
    cross_values = np.linalg.eigvalsh(0.5 * (cross + cross.T))
    trace_term = np.trace(cov1) + np.trace(cov2) - 2.0 * np.sum(np.sqrt(np.maximum(cross_values, 0.0)))
    squared = float(np.sum((mean1 - mean2) ** 2) + trace_term)
    return math.sqrt(max(squared, 0.0))
