"""The refiner contract (gan2flow.refiners): every registered refiner returns [n, *shape] finite samples, is
seed-reproducible and moves samples towards p where the exact log-ratio is known; DRS and MH-GAN accept
at the hand-computed rates on a two-point case; GANFlow.sample(method=...) reaches every refiner."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow
from gan2flow import refiners

MEAN = np.array([1.0, -0.5], np.float32)
N = 200


def _gaussian_flow():
    """q = N(0, I) (G(z) = z), p = N(MEAN, I); the discriminator outputs the exact smoothed log-ratio
    log p_σ/q_σ (x) = (x·m − ‖m‖²/2) / (1 + σ²). No diagnostics: check_sigma() is σ_max = 1."""
    z = keras.Input((2,))
    generator = keras.Model(z, keras.layers.Identity()(z))
    x, sigma = keras.Input((2,)), keras.Input((1,))
    logit = keras.layers.Lambda(lambda t: (tf.reduce_sum(t[0] * MEAN, axis=1, keepdims=True)
                                           - 0.5 * float(MEAN @ MEAN)) / (1.0 + tf.square(t[1])))([x, sigma])
    return gan2flow.GANFlow(generator, keras.Model([x, sigma], logit), sigma_range=(0.1, 1.0), latent_shape=(2,))


def _two_point_flow():
    """G(z) = sign(z) ∈ {−1, +1} with probability ½ each; log r(x) = x·log 2, so r(+1) = 2, r(−1) = ½ and the
    target p = q·r puts 0.8 on +1 (q(+1)·r(+1) = 1 against q(−1)·r(−1) = ¼)."""
    z = keras.Input((1,))
    generator = keras.Model(z, keras.layers.Lambda(lambda t: tf.sign(t))(z))
    x, sigma = keras.Input((1,)), keras.Input((1,))
    logit = keras.layers.Lambda(lambda t: t[0] * float(np.log(2.0)) + 0.0 * t[1])([x, sigma])
    return gan2flow.GANFlow(generator, keras.Model([x, sigma], logit), sigma_range=(0.1, 1.0), latent_shape=(1,))


@pytest.fixture(scope="module")
def gaussian_flow():
    return _gaussian_flow()


@pytest.fixture(scope="module")
def two_point_flow():
    return _two_point_flow()


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert refiners.names() == ["drs", "mh_gan", "dot", "ddls", "dgflow", "gan2flow", "gan2flow_latent"]
    with pytest.raises(ValueError, match="drs"):
        refiners.get("nope")


@pytest.mark.parametrize("name", refiners.names())
def test_contract_shape_finite_reproducible_and_moves_towards_p(gaussian_flow, name):
    refiner = refiners.get(name)
    report = {}
    first = refiner(gaussian_flow, N, seed=3, report=report)
    second = refiner(gaussian_flow, N, seed=3)
    assert isinstance(first, np.ndarray) and first.shape == (N, 2) and first.dtype == np.float32
    assert np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, second)
    assert report["gradient_evaluations"] >= 0 and report["discriminator_evaluations"] >= 0
    raw = gaussian_flow.sample(N, refine=False, seed=3).numpy()
    # The tilt q·r_σ at σ = 1 has mean MEAN/2: every method should move the mean towards MEAN. Compared on
    # the mean's projection onto MEAN (the direction the ratio changes): the exact tilt is 0.5·‖MEAN‖ = 0.56
    # and the samplers' (unpaired) raw mean is 0 ± 0.07 (1/√N), far from it; the flows start from the raw
    # samples' own latents (the same seed), so their difference is their displacement, free of sampling
    # noise. DOT moves least (≈ 0.015 here): on a linear log-ratio, k_eff makes the gain ∇d/k almost exactly
    # balance the unit-norm transport cost.
    direction = MEAN / np.linalg.norm(MEAN)
    assert float(first.mean(0) @ direction) > float(raw.mean(0) @ direction) + 0.01


@pytest.mark.parametrize("name", ["drs", "mh_gan", "dot", "ddls", "dgflow"])
def test_sample_method_reaches_every_refiner(gaussian_flow, name):
    samples = gaussian_flow.sample(16, seed=1, method=name)
    assert samples.shape == (16, 2)
    np.testing.assert_array_equal(samples.numpy(), refiners.get(name)(gaussian_flow, 16, seed=1))


def test_drs_acceptance_matches_the_hand_computed_ratio():
    # γ = 0: σ(F) = r/r_M up to ε (1e-6, relative); γ shifts the logit.
    probabilities = refiners.drs_acceptance(np.log([1.0, 0.5, 0.25]), 0.0, epsilon=1e-9)
    np.testing.assert_allclose(probabilities, [1.0, 0.5, 0.25], rtol=1e-6)
    shifted = refiners.drs_acceptance(np.log([0.5]), 0.0, gamma=np.log(3.0), epsilon=1e-9)
    np.testing.assert_allclose(shifted, [0.25], rtol=1e-6)  # logit 0 − log 3 → 1/(1 + 3)


def test_drs_on_the_two_point_case(two_point_flow):
    # γ = 0 and d_M = log 2 (seen in burn-in): accept +1 with probability 1, −1 with ¼: rate 0.625, and the
    # accepted samples are +1 with probability 0.8. Monte Carlo over ≥ 4 096 proposals: s.e. of the rate
    # ≤ 0.008, of the share (N accepted) ≤ 0.03; bounds 4 s.e.
    report = {}
    samples = refiners.drs(two_point_flow, N, seed=0, gamma=0.0, burn_in=1000, report=report)
    assert report["log_max"] == pytest.approx(np.log(2.0), rel=1e-6)
    assert report["acceptance_rate"] == pytest.approx(0.625, abs=0.03)
    assert np.mean(samples == 1.0) == pytest.approx(0.8, abs=0.12)
    # The paper's γ: the 95th percentile of F = {13.8 (at +1), log ⅓ (at −1)} is 13.8, so +1 is accepted with
    # probability ½ and −1 almost never: rate 0.25 (s.e. ≤ 0.007).
    samples = refiners.drs(two_point_flow, N, seed=0, burn_in=1000, report=report)
    assert report["acceptance_rate"] == pytest.approx(0.25, abs=0.03)
    assert np.all(samples == 1.0)


def test_mh_gan_on_the_two_point_case(two_point_flow):
    # α(−1 → +1) = 1, α(+1 → −1) = r(−1)/r(+1) = ¼, α = 1 between equal points. At stationarity (π(+1) = 0.8)
    # the share of accepted proposals is 0.8·(½ + ½·¼) + 0.2·1 = 0.7; the chain forgets its start within a
    # few steps (second eigenvalue 0.375), so over N·640 proposals the rate's s.e. is < 0.002; bound 0.01.
    report = {}
    samples = refiners.mh_gan(two_point_flow, N, seed=0, report=report)
    assert report["acceptance_rate"] == pytest.approx(0.7, abs=0.01)
    assert report["proposals"] == N * 640
    assert np.mean(samples == 1.0) == pytest.approx(0.8, abs=0.12)  # binomial s.e. 0.028, 4 s.e.
    np.testing.assert_allclose(refiners.mh_acceptance([0.0, 1.0], [1.0, 0.0]), [1.0, np.exp(-1.0)])


@pytest.mark.parametrize("divergence, weight", [("kl", lambda d: 1.0), ("js", lambda d: 1 / (1 + np.exp(-d))),
                                                ("logd", lambda d: 1 / (1 + np.exp(d)))])
def test_dgflow_velocity_is_the_f_weighted_log_ratio_gradient(gaussian_flow, divergence, weight):
    x = tf.constant([[0.0, 0.0], [2.0, 1.0], [-1.0, 3.0]])
    sigma = 0.5
    d = gaussian_flow.log_ratio(x, sigma).numpy()
    gradient = MEAN / (1.0 + sigma**2)  # ∇d for the linear log-ratio
    velocity = refiners.FDivergenceDrift(gaussian_flow.estimator, divergence)(x, sigma).numpy()
    expected = np.stack([weight(value) * gradient for value in d])
    np.testing.assert_allclose(velocity, expected, rtol=1e-5, atol=1e-6)  # float32 algebra


def test_comparison_summary_and_table_from_rows():
    from gan2flow.experiments import refiners as experiment

    rows = [{"member": "m", "method": method, "seed": seed, "sw": value + seed * 0.1, "seconds": 1.0 + seed,
             "gradient_evaluations": 10}
            for method, value in (("raw", 1.0), ("drs", 0.5), ("gan2flow", 0.2)) for seed in (0, 1, 2)]
    rows.append({"member": "m", "method": "dot", "seed": 0, "error": "ValueError: x", "seconds": 0.1})
    summary = experiment.summarize(rows)
    mean, std = summary[("m", "gan2flow")]["sw"]
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1)  # values 0.2, 0.3, 0.4
    assert summary[("m", "drs")]["seconds"][0] == 2.0  # the median, which leaves out a first call's compilation
    assert summary[("m", "dot")]["errors"] == 1
    machine = {"date": "today", "cores": 2, "cpu": "cpu", "load_average": [1.0], "tensorflow": "2"}
    table = experiment.markdown(summary, machine, seeds=[0, 1, 2], n=10, conversions={"m": 5.0})
    assert "| gan2flow | **0.3 ± 0.1** |" in table and "| dot (1 errors) |" in table


@pytest.mark.slow
def test_compare_refiners_end_to_end_on_one_member(tmp_path):
    """``gan2flow compare --refiners`` on the quickest zoo member (trains it if not cached, converts it):
    every refiner gives a row, the files are written, and a rerun reuses the cached flow."""
    import os

    from gan2flow import cli

    argv = ["compare", "--refiners", "--members", "ring_overfit_bce", "--seeds", "0", "--n", "200",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    for name in ("refiners.csv", "refiners.md", "refiners.json", "samples_ring_overfit_bce.png",
                 "flows/ring_overfit_bce.keras"):
        assert os.path.exists(tmp_path / name), name
    table = (tmp_path / "refiners.md").read_text()
    assert all(f"| {method}" in table for method in ["raw"] + refiners.names())
    assert cli.main(argv + ["--methods", "drs"]) == 0  # from the cached flow
