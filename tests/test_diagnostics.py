"""The calibration report (gan2flow.diagnostics) against hand-computed values.

``diagnose`` only needs an object with ``sigma_range``, ``latents(n, seed)``, ``generate(z)`` and
``log_ratio(x, sigma)``; a stub whose log-ratio is a known function (here the exact one between two 1-D
Gaussians) makes every entry of the report computable by independent float64 NumPy formulas.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from gan2flow import diagnostics

# Real data p = N(1, 1), generator q = N(−1, 1) (G(z) = z − 1); under noise σ both widen to variance 1 + σ²
# and log p_σ(x)/q_σ(x) = ((x + 1)² − (x − 1)²)/(2(1 + σ²)) = 2x/(1 + σ²).


class _GaussianStub:
    """The interface diagnose() uses, with the exact log-ratio (plus ``offset``, a mis-calibration)."""

    sigma_range = (0.1, 1.0)

    def __init__(self, offset=0.0):
        self.offset = offset

    def latents(self, n, seed):
        return tf.constant(np.random.default_rng(seed).normal(size=(n, 1)), tf.float32)

    def generate(self, z):
        return z - 1.0

    def log_ratio(self, x, sigma):
        return tf.constant(2.0 * x[:, 0] / (1.0 + sigma**2) + self.offset, tf.float32)


def _softplus(v):
    return np.logaddexp(0.0, v)


def _expected_report(stub, train, heldout, *, n, seed, levels):
    """diagnose()'s rows by hand, with its draws reproduced as its code makes them: σ's geometric from σ_max
    to σ_min; min(n, len) held-out then training rows chosen without replacement by default_rng(seed); fakes
    G(latents(len, seed + 7919)) for held-out and G(latents(len, seed + 7920)) for training; noise σ·N(0, 1)
    from default_rng([seed, k]) with k = 1 held-out real, 2 its fakes, 3 training real, 4 its fakes."""
    rng = np.random.default_rng(seed)
    heldout = heldout[rng.choice(len(heldout), min(n, len(heldout)), replace=False)].astype(np.float64)
    train = train[rng.choice(len(train), min(n, len(train)), replace=False)].astype(np.float64)
    fake = stub.generate(stub.latents(len(heldout), seed + 7919)).numpy().astype(np.float64)
    fake_train = stub.generate(stub.latents(len(train), seed + 7920)).numpy().astype(np.float64)
    rows = []
    for sigma in np.geomspace(1.0, 0.1, levels):
        def logit(a, k, sigma=sigma):
            noised = (a + sigma * np.random.default_rng([seed, k]).normal(size=a.shape)).astype(np.float32)
            return 2.0 * noised[:, 0].astype(np.float64) / (1.0 + sigma**2) + stub.offset

        real, fake_l, real_t, fake_t = logit(heldout, 1), logit(fake, 2), logit(train, 3), logit(fake_train, 4)
        heldout_loss = _softplus(-real).mean() + _softplus(fake_l).mean()  # −log D(real) − log(1 − D(fake))
        train_loss = _softplus(-real_t).mean() + _softplus(fake_t).mean()
        w = np.exp(fake_l)
        rows.append({
            "sigma": sigma, "heldout_loss": heldout_loss, "train_loss": train_loss,
            "overfit_gap": heldout_loss - train_loss,
            "accuracy": 0.5 * ((real > 0).mean() + (fake_l < 0).mean()),
            "kl_q_p": -fake_l.mean(), "kl_p_q": real.mean(),
            "log_mean_ratio_q": np.log(w.mean()), "log_mean_inverse_ratio_p": np.log(np.exp(-real).mean()),
            "ratio_ess_q": w.sum() ** 2 / (len(w) * (w**2).sum()),
        })
    return rows


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1)) + 1.0).astype(np.float32)


TRAIN, HELDOUT = _data(1500, 1), _data(1000, 2)


def test_diagnose_reproduces_hand_computed_losses_accuracy_and_kls():
    stub = _GaussianStub()
    report = diagnostics.diagnose(stub, TRAIN, HELDOUT, n=1200, levels=3, seed=4)  # all held-out, part of training
    expected = _expected_report(stub, TRAIN, HELDOUT, n=1200, seed=4, levels=3)
    assert [row["sigma"] for row in report["levels"]] == pytest.approx([1.0, math.sqrt(0.1), 0.1], rel=1e-12)
    for got, want in zip(report["levels"], expected, strict=True):
        # The report's logits are float32 (as here) and its softplus/means run in float32: a few ulps of O(1)
        # values, relative 1e-5. Accuracy counts signs of the same float32 logits: exact.
        assert got["accuracy"] == want["accuracy"]
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["sigma"], key)
    assert report["chance_loss"] == pytest.approx(2 * math.log(2.0))


def test_diagnose_of_an_exact_log_ratio_estimates_the_gaussian_kls():
    # With the exact log-ratio the plug-in KLs estimate KL(q_σ‖p_σ) = KL(p_σ‖q_σ) = (Δμ)²/(2(1 + σ²)) = 2/(1 + σ²).
    # Each is a mean of 1000 values of l = 2x/(1 + σ²) with variance 4/(1 + σ²) ≤ 4: standard error ≤ 0.064,
    # bound 0.26 (4 SE). The exact log-ratio is calibrated and not overfitted: no warnings (measured at this
    # seed: log E_q[r] = 0.06 where checked (ESS ≥ 0.1, only σ = 1), overfit gaps −0.03 to −0.05).
    report = diagnostics.diagnose(_GaussianStub(), TRAIN, HELDOUT, n=1000, levels=3, seed=0)
    for row in report["levels"]:
        exact = 2.0 / (1.0 + row["sigma"] ** 2)
        assert row["kl_q_p"] == pytest.approx(exact, abs=0.26) and row["kl_p_q"] == pytest.approx(exact, abs=0.26)
        assert row["heldout_loss"] < 2 * math.log(2.0)  # separable classes: better than chance
    assert report["warnings"] == [] and report["good_enough"] is True


def test_diagnose_warns_about_a_mis_calibrated_ratio():
    # An offset of 1 makes log E_q[r] = 1 exactly in expectation (> 0.25) wherever the ESS allows the check.
    report = diagnostics.diagnose(_GaussianStub(offset=1.0), TRAIN, HELDOUT, n=1000, levels=3, seed=0)
    checked = [row for row in report["levels"] if row["ratio_ess_q"] >= 0.1]
    assert checked, "at σ = 1 the ESS is ≈ exp(−2) ≈ 0.14, enough for the check"
    assert report["good_enough"] is False
    assert sum("mis-calibrated" in warning for warning in report["warnings"]) == len(checked)
    text = diagnostics.format_diagnostics(report)
    assert "warnings:" in text and "mis-calibrated" in text


def test_diagnose_warns_about_overfitting():
    # Training reals drawn farther from the fakes (N(3, 1)) give a lower training loss than held-out reals
    # (N(1, 1)): measured gaps 0.31 and 0.38, far above the 0.05 threshold.
    report = diagnostics.diagnose(_GaussianStub(), TRAIN + 2.0, HELDOUT, n=1000, levels=2, seed=0)
    assert all(row["overfit_gap"] > 0.05 for row in report["levels"])
    assert sum("overfitting" in warning for warning in report["warnings"]) == 2


def test_diagnose_is_reproducible_for_a_seed():
    first, again, other = (diagnostics.diagnose(_GaussianStub(), TRAIN, HELDOUT, n=300, levels=2, seed=seed)
                           for seed in (5, 5, 6))
    assert first == again and first != other


# --------------------------------------------------------------------------------------------------
# effective_sample_fraction: (Σw)²/(n Σw²) for w = exp(log_weights)


def test_effective_sample_fraction_of_equal_weights_is_one():
    for n in (1, 5, 1000):
        assert diagnostics.effective_sample_fraction(np.full(n, -3.7)) == pytest.approx(1.0, rel=1e-12)


def test_effective_sample_fraction_of_one_dominant_weight_is_one_over_n():
    # The others are e^−800 relative to it: their contribution underflows in float64, exactly 1/n.
    for n in (2, 10, 500):
        log_weights = np.full(n, -800.0)
        log_weights[n // 2] = 0.0
        assert diagnostics.effective_sample_fraction(log_weights) == pytest.approx(1.0 / n, rel=1e-12)


def test_effective_sample_fraction_hand_computed():
    # w = (1, 2, 3): (1 + 2 + 3)² / (3 · (1 + 4 + 9)) = 36/42 = 6/7, whatever common factor scales w
    # (log-weights shifted by ±700 would overflow or underflow exp without the max-shift).
    for shift in (0.0, 700.0, -700.0):
        value = diagnostics.effective_sample_fraction(np.log([1.0, 2.0, 3.0]) + shift)
        assert value == pytest.approx(6.0 / 7.0, rel=1e-12)
