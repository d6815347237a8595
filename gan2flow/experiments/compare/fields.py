"""Measures of an estimated vector field against the exact one, and the oracle-free scale of raw gradients.

Field errors, per σ (sums over the evaluation points, ‖·‖ the Euclidean norm), from :func:`field_errors`:

* ``cosine``: mean over points of ``⟨v̂, v⟩ / (‖v̂‖ ‖v‖)`` (0 where ``v̂ = 0``): direction agreement,
  scale-free.
* ``rel_error``: ``sqrt(Σ‖v̂ − v‖² / Σ‖v‖²)``, the field as it is.
* ``rel_error_fit``: the same after the best single scalar ``c* = Σ⟨v̂, v⟩ / Σ‖v̂‖²`` (``scale_fit``),
  fitted on an independent sample of the same points. It is ≈ ``sqrt(1 − ρ²)`` with ρ the pooled
  cosine ``Σ⟨v̂, v⟩ / sqrt(Σ‖v̂‖² Σ‖v‖²)``, so it is the fair comparison for the raw hinge/Wasserstein
  gradients, whose scale is arbitrary (the fit uses the exact field: an oracle, for measurement only).
* ``rel_error_calibrated`` (no-link losses only): after the **oracle-free** scale ``a(σ)`` of a
  one-feature logistic regression ``log r ≈ a(σ) T + b(σ)`` of held-out noised target samples against
  noised source samples at σ (what a user without the exact field can do): :func:`logistic_fit`,
  :func:`calibration_scales`, and :class:`ScaledPerSigma` to flow along the calibrated field.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

# Ridge on the two-parameter logistic calibration: keeps (a, b) finite when the noised target and
# source samples are (nearly) separable by T at small σ; 1e-3 per sample is far below the curvature
# of the log-likelihood when they are not.
_CALIBRATION_RIDGE = 1e-3


def field_errors(estimate, exact, estimate_fit=None, exact_fit=None):
    """Errors of an estimated vector field against the exact one at the same points.

    Args:
      estimate: ``v̂``, array ``[n, d]``.
      exact: ``v``, array ``[n, d]``.
      estimate_fit, exact_fit: an independent pair ``[m, d]`` to fit the scale ``c*`` on (default: the
        evaluation pair itself).

    Returns:
      dict of floats: ``cosine`` (mean per-point cosine, 0 where ``v̂ = 0``), ``rel_error``
      (``sqrt(Σ‖v̂ − v‖²/Σ‖v‖²)``), ``scale_fit`` (``c* = Σ⟨v̂, v⟩/Σ‖v̂‖²`` on the fit pair, 0 if
      ``v̂ ≡ 0``) and ``rel_error_fit`` (``rel_error`` of ``c* v̂``).

    Raises:
      ValueError: shapes that differ or are not ``[n, d]``.
    """
    estimate = np.asarray(estimate, np.float64)
    exact = np.asarray(exact, np.float64)
    if estimate.ndim != 2 or estimate.shape != exact.shape:
        raise ValueError(
            f"`estimate` and `exact` must both have shape [n, d], got {estimate.shape} and {exact.shape}."
        )
    if estimate_fit is None:
        estimate_fit, exact_fit = estimate, exact
    estimate_fit = np.asarray(estimate_fit, np.float64)
    exact_fit = np.asarray(exact_fit, np.float64)
    norms = np.linalg.norm(estimate, axis=1) * np.linalg.norm(exact, axis=1)
    dots = np.sum(estimate * exact, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    exact_energy = np.sum(np.square(exact))
    fit_energy = np.sum(np.square(estimate_fit))
    scale = float(np.sum(estimate_fit * exact_fit) / fit_energy) if fit_energy > 0 else 0.0
    return {
        "cosine": float(np.mean(cosine)),
        "rel_error": float(np.sqrt(np.sum(np.square(estimate - exact)) / exact_energy)),
        "scale_fit": scale,
        "rel_error_fit": float(np.sqrt(np.sum(np.square(scale * estimate - exact)) / exact_energy)),
    }


def logistic_fit(feature_real, feature_fake):
    """(a, b) maximising the likelihood of real-vs-fake under logit a·T + b (ridge-regularised Newton)."""
    t = np.concatenate([feature_real, feature_fake]).astype(np.float64)
    labels = np.concatenate([np.ones(len(feature_real)), np.zeros(len(feature_fake))])
    design = np.stack([t, np.ones_like(t)], axis=1)
    ridge = _CALIBRATION_RIDGE * len(t) * np.eye(2)
    params = np.zeros(2)
    for _ in range(50):
        logits = design @ params
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits))  # a stable sigmoid
        gradient = design.T @ (probs - labels) + ridge @ params
        hessian = design.T @ (design * (probs * (1.0 - probs))[:, None]) + ridge
        step = np.linalg.solve(hessian, gradient)
        params -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(params[0]), float(params[1])


def calibration_scales(estimator, real, fake, sigmas, seed):
    """Oracle-free scales a(σ) for a raw-output estimator (loss=None), one per σ in ``sigmas``."""
    rng = np.random.default_rng(seed)
    scales = []
    for sigma in np.asarray(sigmas, np.float64):
        noisy_real = real + sigma * rng.standard_normal(real.shape).astype(np.float32)
        noisy_fake = fake + sigma * rng.standard_normal(fake.shape).astype(np.float32)
        feature_real = np.asarray(estimator.raw_output(noisy_real, float(sigma)))
        feature_fake = np.asarray(estimator.raw_output(noisy_fake, float(sigma)))
        scales.append(logistic_fit(feature_real, feature_fake)[0])
    return np.asarray(scales, np.float32)


class ScaledPerSigma:
    """``(x, σ) -> a(σ_k) · base(x, σ)`` with σ_k the nearest (in log σ) of the calibrated levels."""

    def __init__(self, base, sigmas, scales):
        self.base = base
        self._log_sigmas = tf.constant(np.log(np.asarray(sigmas, np.float32)))
        self._scales = tf.constant(np.asarray(scales, np.float32))

    def __call__(self, x, sigma):
        log_sigma = tf.math.log(tf.convert_to_tensor(sigma, tf.float32))
        index = tf.argmin(tf.abs(self._log_sigmas - log_sigma))
        return tf.gather(self._scales, index) * self.base(x, sigma)
