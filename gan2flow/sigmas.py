"""Noise schedules: decreasing 1-D float32 tensors of noise levels σ (shared/SD_FLOW.md §2).

Every schedule is a plain function returning a 1-D ``tf.float32`` tensor ``sigmas`` with
``sigmas[0] = sigma_max > ... > sigmas[-1] = sigma_min > 0``. Flows take one or more steps per level.

Example:
    >>> import gan2flow
    >>> gan2flow.sigmas.geometric(10.0, 0.1, 3).numpy()
    array([10. ,  1. ,  0.1], dtype=float32)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from gan2flow import _checks

__all__ = ["geometric", "linear", "karras", "constant", "validate", "diffusion_step_sizes", "range_from_data"]


def _check_range(sigma_max, sigma_min, n):
    sigma_max = _checks.positive_float(sigma_max, "sigma_max")
    sigma_min = _checks.positive_float(sigma_min, "sigma_min")
    n = _checks.positive_int(n, "n")
    if sigma_min > sigma_max:
        raise ValueError(
            f"`sigma_min` must be <= `sigma_max`, got sigma_min={sigma_min} > sigma_max={sigma_max}."
        )
    if not np.float32(sigma_min) > 0 or not np.isfinite(np.float32(sigma_max)):
        raise ValueError(
            "`sigma_min` and `sigma_max` must be positive and finite in float32 (about 1e-45 to 3.4e38), "
            f"got sigma_min={sigma_min}, sigma_max={sigma_max}."
        )
    if n == 1 and sigma_min != sigma_max:
        raise ValueError(
            f"`n` must be >= 2 for a schedule from sigma_max={sigma_max} to sigma_min={sigma_min}, got 1."
        )
    return sigma_max, sigma_min, n


def geometric(sigma_max, sigma_min, n):
    """Geometric schedule σ_k = σ_max (σ_min/σ_max)^{k/(n−1)}, k = 0..n−1.

    Equal ratios between levels: the usual choice for annealed score methods (NCSN, SD flow).

    Args:
        sigma_max: largest noise level (> 0), comparable to the data's spread.
        sigma_min: smallest noise level (0 < sigma_min <= sigma_max).
        n: number of levels (>= 1; 1 only when sigma_min == sigma_max).

    Returns:
        A 1-D float32 tensor of length n, decreasing.

    Raises:
        ValueError: non-positive or non-finite levels, sigma_min > sigma_max, n < 1.
    """
    sigma_max, sigma_min, n = _check_range(sigma_max, sigma_min, n)
    if n == 1:
        return tf.constant([sigma_max], tf.float32)
    values = np.geomspace(sigma_max, sigma_min, n)
    return tf.constant(values, tf.float32)


def linear(sigma_max, sigma_min, n):
    """Linear schedule σ_k = σ_max + (σ_min − σ_max) k/(n−1). Same arguments as :func:`geometric`."""
    sigma_max, sigma_min, n = _check_range(sigma_max, sigma_min, n)
    if n == 1:
        return tf.constant([sigma_max], tf.float32)
    return tf.constant(np.linspace(sigma_max, sigma_min, n), tf.float32)


def karras(sigma_max, sigma_min, n, rho=7.0):
    """Karras et al. (2022) schedule σ_k = (σ_max^{1/ρ} + k/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    Spends more levels at small σ than :func:`geometric` for ρ > 1. Same arguments, plus ``rho`` > 0.
    """
    sigma_max, sigma_min, n = _check_range(sigma_max, sigma_min, n)
    rho = _checks.positive_float(rho, "rho")
    if n == 1:
        return tf.constant([sigma_max], tf.float32)
    ramp = np.linspace(0.0, 1.0, n)
    values = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return tf.constant(values, tf.float32)


def constant(sigma, n):
    """``n`` levels all equal to ``sigma`` (a fixed-σ flow)."""
    sigma = _checks.positive_float(sigma, "sigma")
    n = _checks.positive_int(n, "n")
    return tf.fill([n], tf.constant(sigma, tf.float32))


def validate(sigmas, name="sigmas", *, allow_equal=True):
    """Check a user schedule: 1-D, finite, > 0, non-increasing (strictly decreasing if not allow_equal).

    Returns:
        The schedule as a 1-D float32 tensor.

    Raises:
        ValueError: naming ``name``, with the first offending index.
    """
    if isinstance(sigmas, (int, float)):
        sigmas = [sigmas]
    tensor = _checks.as_float_tensor(sigmas, name, rank=1)
    values = tensor.numpy()
    if values.size == 0:
        return tensor
    if np.any(values <= 0):
        index = int(np.argmax(values <= 0))
        raise ValueError(f"`{name}` must be > 0 everywhere, got {name}[{index}] = {values[index]}.")
    steps = np.diff(values)
    bad = steps > 0 if allow_equal else steps >= 0
    if np.any(bad):
        index = int(np.argmax(bad))
        kind = "non-increasing" if allow_equal else "strictly decreasing"
        raise ValueError(
            f"`{name}` must be {kind} (sigma_max first), got {name}[{index}] = {values[index]} "
            f"then {name}[{index + 1}] = {values[index + 1]}."
        )
    return tensor


def diffusion_step_sizes(sigmas, sigma_final=0.0):
    """Step sizes η_k = σ_k (σ_k − σ_{k+1}) that make an SD-flow step a DDIM/Euler diffusion step.

    With no source term (D_q(x, σ) = x) a flow step x ← x + η_k (D_p(x, σ_k) − x)/σ_k² becomes
    x ← x + (1 − σ_{k+1}/σ_k)(D_p(x, σ_k) − x), the deterministic DDIM step (shared/SD_FLOW.md §3.4).

    Args:
        sigmas: the decreasing schedule σ_0..σ_{K−1}.
        sigma_final: σ_K after the last step (default 0: land on the data).

    Returns:
        1-D float32 tensor of K step sizes, to pass as ``flow(..., step_sizes=...)``.
    """
    sigmas = validate(sigmas)
    sigma_final = _checks.positive_float(sigma_final, "sigma_final", allow_zero=True)
    if sigmas.shape[0] and sigma_final > float(sigmas[-1]):
        raise ValueError(
            f"`sigma_final` must be <= the last level {float(sigmas[-1])}, got {sigma_final}."
        )
    following = tf.concat([sigmas[1:], tf.constant([sigma_final], tf.float32)], axis=0)
    return sigmas * (sigmas - following)


def range_from_data(real):
    """σ_max ≈ the data's RMS spread per coordinate × 1 (moves mass between modes); σ_min = σ_max / 100."""
    real = np.asarray(real, np.float32)
    flat = real.reshape(len(real), -1)
    spread = float(np.sqrt(np.mean(np.var(flat, axis=0))))
    spread = spread if spread > 0 else 1.0
    return (spread / 100.0, spread)
