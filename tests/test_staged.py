"""Stage-wise calibration on the flow's own particles (gan2flow.staged, shared/SD_FLOW.md §9.2, §9.5)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from gan2flow import staged


def _affine_generator(scale, shift):
    """G(z) = scale·z + shift on 2-D latents: q = N(shift, scale² I) exactly."""
    z = keras.Input((2,))
    dense = keras.layers.Dense(2)
    x = dense(z)
    dense.set_weights([np.float32(scale) * np.eye(2, dtype=np.float32), np.asarray(shift, np.float32)])
    return keras.Model(z, x)


def _steep_discriminator(slope):
    """T(x, σ) = slope·x₁ (σ enters with weight 0): ∇ₓT = (slope, 0) everywhere."""
    x = keras.Input((2,), name="x")
    sigma = keras.Input((1,), name="sigma")
    dense = keras.layers.Dense(1)
    out = dense(keras.layers.Concatenate()([x, sigma]))
    dense.set_weights([np.array([[slope], [0.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    return keras.Model([x, sigma], out)


def _entry(trusted, stage=0):
    return {"stage": stage, "sigma": 1.0, "train_loss": 0.6, "heldout_loss": 0.6, "gap": 0.0, "accuracy": 0.6,
            "saturated": 0.0, "trusted": trusted, "why": "ok" if trusted else "hand-made"}


@pytest.fixture(scope="module")
def shifted_gaussian():
    """p = N((1, 0), 0.5² I) vs the generator's q = N((0, 0), 0.5² I): log p_σ/q_σ is linear, ∇ = (1, 0)/(0.25 + σ²)."""
    rng = np.random.default_rng(0)
    real = (np.array([1.0, 0.0]) + 0.5 * rng.normal(size=(3000, 2))).astype(np.float32)
    generator = _affine_generator(0.5, [0.0, 0.0])
    result = staged.calibrate_stages(generator, real[:2400], real[2400:], latent_shape=(2,), sigmas=[1.0, 0.5],
                                     n_particles=1024, train_steps=60, flow_steps=2, step_scale=0.5, hidden=(32, 32),
                                     seed=0)
    return generator, real, result


def test_field_points_from_source_to_target(shifted_gaussian):
    # The exact SD at stage 0 is (1, 0)/(0.25 + 1) = (0.8, 0): its first coordinate must dominate and be positive.
    # A loose check (cosine > 0.8 on average): 180 updates give a noisy but clearly oriented field.
    _, _, result = shifted_gaussian
    x = tf.random.stateless_normal((512, 2), seed=[1, 0]) * 0.5
    v = result.estimator(0)(x, 1.0).numpy()
    mean = v.mean(0)
    assert mean[0] > 0 and mean[0] > 4 * abs(mean[1])
    cosine = v[:, 0] / np.linalg.norm(v, axis=1)
    assert cosine.mean() > 0.8


def test_refinement_moves_samples_towards_the_target(shifted_gaussian):
    # Particles start at mean 0, the target mean is 1: the stages must move the mean to the right (> 0.15 after
    # 2 stages × 2 steps of ε = 0.5; the exact flow would move it by ≈ 0.5, Monte Carlo error of the mean ≈ 0.02).
    generator, _, result = shifted_gaussian
    x0 = generator(tf.random.stateless_normal((1000, 2), seed=[2, 0])).numpy()
    x = staged.refine_stages(x0, result).numpy()
    assert x.shape == x0.shape
    assert x[:, 0].mean() - x0[:, 0].mean() > 0.15
    assert abs(x[:, 1].mean() - x0[:, 1].mean()) < 0.1


def test_report_and_schedule(shifted_gaussian):
    _, _, result = shifted_gaussian
    assert len(result.report) == 2 and result.sigmas.tolist() == [1.0, 0.5]
    assert np.allclose(result.step_sizes, 0.5 * result.sigmas**2)
    for entry in result.report:
        assert set(entry) >= {"sigma", "train_loss", "heldout_loss", "gap", "accuracy", "saturated", "signal", "moves",
                              "trusted", "why"}
        assert 0.0 < entry["gap_error"] < 0.05  # the gap's standard error: 2 400 / 600 real, 1 024 / 512 fake rows
    assert "stage" in staged.format_report(result)


def test_projection_keeps_samples_in_the_data_range():
    # A discriminator with gradient 1000 along x₁ would throw every sample far out; the projection holds it.
    model = _steep_discriminator(1000.0)
    lo, hi = np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32)
    calibration = staged.StagedCalibration(model, [model.get_weights()] * 3, [1.0, 0.5, 0.25], [0.3, 0.075, 0.02],
                                           flow_steps=2, bounds=(lo, hi), report=[_entry(True)] * 3, n_trusted=3)
    x0 = np.random.default_rng(0).uniform(-1, 1, size=(200, 2)).astype(np.float32)
    x = staged.refine_stages(x0, calibration).numpy()
    assert np.all(x >= lo) and np.all(x <= hi)
    assert np.allclose(x[:, 0], 1.0)            # pushed to the upper bound of x₁
    assert np.allclose(x[:, 1], x0[:, 1])       # no gradient along x₂


def test_refinement_uses_only_the_trusted_prefix():
    model = _steep_discriminator(1.0)
    report = [_entry(True, 0), _entry(False, 1), _entry(True, 2)]
    assert staged.trusted_prefix(report) == 1
    assert staged.trusted_prefix([]) == 0
    assert staged.trusted_prefix([_entry(False)]) == 0
    lo, hi = np.full(2, -10.0, np.float32), np.full(2, 10.0, np.float32)
    calibration = staged.StagedCalibration(model, [model.get_weights()] * 3, [1.0, 0.5, 0.25], [0.1, 0.1, 0.1],
                                           flow_steps=1, bounds=(lo, hi), report=report,
                                           n_trusted=staged.trusted_prefix(report))
    x0 = np.zeros((4, 2), np.float32)
    x = staged.refine_stages(x0, calibration).numpy()
    assert np.allclose(x[:, 0], 0.1)  # exactly one step of η = 0.1 along ∇T = (1, 0)
    assert np.allclose(staged.refine_stages(x0, calibration, stages=0).numpy(), x0)  # zero stages: identity


def test_trust_rule():
    judge = staged._judge
    rule = dict(max_gap=0.05, max_accuracy=0.95, max_saturated=0.01)
    assert judge(0.60, 0.62, 0.7, 0.0, **rule) == (True, "ok")
    trusted, why = judge(0.40, 0.50, 0.8, 0.0, **rule)
    assert not trusted and "held-out loss" in why
    trusted, why = judge(0.05, 0.06, 0.99, 0.0, **rule)
    assert not trusted and "accuracy" in why
    trusted, why = judge(0.5, 0.5, 0.7, 0.2, **rule)
    assert not trusted and "saturated" in why


def test_trust_rule_noise_allowance():
    # gap 0.10 > max_gap 0.05: untrusted without an allowance, trusted with 0.06 of it, untrusted again with 0.04.
    judge = staged._judge
    rule = dict(max_gap=0.05, max_accuracy=0.95, max_saturated=0.01)
    assert not judge(0.40, 0.50, 0.8, 0.0, **rule)[0]
    assert judge(0.40, 0.50, 0.8, 0.0, gap_error=0.06, **rule) == (True, "ok")
    trusted, why = judge(0.40, 0.50, 0.8, 0.0, gap_error=0.04, **rule)
    assert not trusted and "0.09" in why and "noise allowance" in why


def test_default_sigmas_respect_quantisation():
    # Values on a grid of step 0.125 (like 8×8 digits in [−1, 1]): σ_min ≥ half the step; geometric, decreasing.
    rng = np.random.default_rng(0)
    real = (rng.integers(0, 17, size=(300, 16)) * 0.125 - 1.0).astype(np.float32)
    sigmas = staged.default_sigmas(real)
    assert len(sigmas) > 2 and np.all(np.diff(sigmas) < 0)
    assert sigmas[-1] >= 0.0625 - 1e-9
    assert np.allclose(sigmas[1:] / sigmas[:-1], sigmas[1] / sigmas[0])


def test_save_and_load_round_trip(tmp_path):
    model = _steep_discriminator(2.0)
    lo, hi = np.full(2, -1.0, np.float32), np.full(2, 1.0, np.float32)
    calibration = staged.StagedCalibration(model, [model.get_weights()] * 2, [1.0, 0.5], [0.1, 0.025], flow_steps=1,
                                           bounds=(lo, hi), report=[_entry(True, 0), _entry(True, 1)], n_trusted=2)
    calibration.save(str(tmp_path / "stages"))
    loaded = staged.load_stages(str(tmp_path / "stages"))
    x0 = np.zeros((3, 2), np.float32)
    assert np.allclose(staged.refine_stages(x0, loaded).numpy(), staged.refine_stages(x0, calibration).numpy())
    assert loaded.n_trusted == 2 and loaded.report == calibration.report


def test_bad_schedule_raises():
    generator = _affine_generator(1.0, [0.0, 0.0])
    real = np.zeros((40, 2), np.float32)
    with pytest.raises(ValueError, match="sigmas"):
        staged.calibrate_stages(generator, real, real, latent_shape=(2,), sigmas=[0.5, 1.0])


def test_sigma_max_grows_until_the_samples_overlap():
    # p = N(0, 0.1² I) vs q = N((3, 3), 0.1² I): at the data's own scale (σ_max = 2·0.1) the two are told apart
    # perfectly, so the probe must double σ_max at least once; the report then starts at the larger σ.
    rng = np.random.default_rng(0)
    real = (0.1 * rng.normal(size=(600, 2))).astype(np.float32)
    generator = _affine_generator(0.1, [3.0, 3.0])
    result = staged.calibrate_stages(generator, real[:500], real[500:], latent_shape=(2,), sigma_ratio=0.5,
                                     n_particles=256, train_steps=20, hidden=(16,), fourier_features=0, seed=0)
    assert len(result.sigma_search) >= 2
    assert result.sigma_search[0]["accuracy"] > 0.6
    assert result.sigmas[0] == pytest.approx(result.sigma_search[-1]["sigma"])
    assert result.sigmas[0] >= 2 * result.sigma_search[0]["sigma"] - 1e-9


def test_smoothed_mmd_hand_computed():
    # Kernel exp(−‖u − v‖²/(4σ²)) with σ = 0.5 is exp(−d²); the V-statistic averages all pairs. x = {0, 0},
    # y = {1, 1}: same-set pairs 1, cross e^{-1} → 2 − 2/e. x = {0, 1}, y = {0, 2}: xx (2 + 2/e)/4, yy (2 + 2e^{-4})/4,
    # xy (1 + e^{-4} + e^{-1} + e^{-1})/4 → (2/e + 2e^{-4} + 4 − 2 − 2e^{-4} − 4/e)/4 = (2 − 2/e)/4. Identical sets: 0.
    zeros, ones = np.zeros((2, 1)), np.ones((2, 1))
    assert staged.smoothed_mmd(zeros, ones, 0.5) == pytest.approx(2 - 2 / np.e)
    assert staged.smoothed_mmd(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]), 0.5) == pytest.approx(
        (2 - 2 / np.e) / 4)
    both = np.array([[0.0], [1.0]])
    assert staged.smoothed_mmd(both, both, 0.5) == pytest.approx(0.0, abs=1e-12)


def _wide_bounds():
    return (np.full(2, -10.0, np.float32), np.full(2, 10.0, np.float32))


@pytest.mark.parametrize("slope, accepted", [(1.0, 0.5), (4.0, 0.25), (-4.0, 0.0)])
def test_checked_move_backtracks_on_overshoot(slope, accepted):
    # Data at (1, 0), particles at (0, 0) (tight clusters); T = slope·x₁, so two moves of ε σ² ∇T at σ = 1 displace
    # the particles by 2ε·slope along x₁. slope 1, ε ½: lands on the data (accepted). slope 4: ε ½ lands at 4
    # (MMD up), ε ¼ at 2, as far as before (accepted). slope −4: ε ½ … 1/16 move 4 … 0.5 away (MMD at least 1.9×:
    # never accepted, None and 0).
    from gan2flow.estimators import DiscriminatorScoreDifference

    rng = np.random.default_rng(0)
    real = (np.array([1.0, 0.0]) + 0.05 * rng.normal(size=(200, 2))).astype(np.float32)
    x = (0.05 * rng.normal(size=(200, 2))).astype(np.float32)
    estimator = DiscriminatorScoreDifference(_steep_discriminator(slope), loss="logistic", sigma_conditioned=True)
    moved, scale, before, after, failed = staged.checked_move(x, estimator, 1.0, 0.5, 2, _wide_bounds(), real,
                                                              max_increase=1.5, max_halvings=3)
    assert scale == accepted and failed is None
    if accepted:
        np.testing.assert_allclose(np.asarray(moved)[:, 0] - x[:, 0], 2 * accepted * slope, atol=1e-5)
        assert after <= 1.5 * before
    else:
        assert moved is None and after > 1.5 * before


def test_adaptive_schedule_follows_the_signal():
    # The default schedule takes the fine ratio after a stage with signal > fine_signal and the coarse one
    # otherwise (clamped at σ_min). A generator far from the data gives a strong signal at the first stage.
    rng = np.random.default_rng(0)
    real = (np.array([1.5, 0.0]) + 0.3 * rng.normal(size=(1500, 2))).astype(np.float32)
    generator = _affine_generator(0.3, [0.0, 0.0])
    result = staged.calibrate_stages(generator, real[:1200], real[1200:], latent_shape=(2,), sigma_ratio=0.5,
                                     fine_ratio=0.8, fine_signal=1.0, max_stages=6, n_particles=512, train_steps=30,
                                     hidden=(16,), fourier_features=0, refit=False, max_doublings=0, seed=0)
    assert result.report[0]["signal"] > 1.0 and result.report[0]["next"] == "fine"
    schedule = [entry for entry in result.report if not entry.get("finishing")]  # the noise-free finishing stages
    sigmas = [entry["sigma"] for entry in schedule]                             # repeat the last trusted σ
    for k in range(len(schedule) - 1):
        expected = 0.8 if schedule[k]["signal"] > 1.0 else 0.5
        assert schedule[k]["next"] == ("fine" if expected == 0.8 else "coarse")
        ratio = sigmas[k + 1] / sigmas[k]
        assert ratio == pytest.approx(expected) or sigmas[k + 1] == pytest.approx(sigmas[-1])


@pytest.mark.parametrize("refit", [True, False])
def test_refit_calibrates_on_training_and_heldout_data(refit):
    # With refit the trusted stages are calibrated again on both sets: the box (the data's range) then covers a
    # held-out point beyond every training point, and the report marks the stages as refit.
    rng = np.random.default_rng(0)
    real = (np.array([1.0, 0.0]) + 0.5 * rng.normal(size=(400, 2))).astype(np.float32)
    real[-1] = [6.0, -6.0]
    generator = _affine_generator(0.5, [0.0, 0.0])
    result = staged.calibrate_stages(generator, real[:300], real[300:], latent_shape=(2,), sigmas=[1.0, 0.5],
                                     n_particles=256, train_steps=20, hidden=(16,), fourier_features=0, refit=refit,
                                     seed=0)
    assert result.n_trusted == len(result.weights) == len(result.sigmas)
    assert all(entry.get("refit", False) == refit for entry in result.report)
    high = result.bounds[1]
    assert (high[0] == pytest.approx(6.0)) == refit


def test_checked_move_without_a_limit_accepts_even_from_a_zero_mmd():
    # max_increase = inf turns the check off: a move is accepted at the full ε even when the MMD before is 0
    # (x equal to the data), where inf · 0 would be NaN and refuse every try.
    from gan2flow.estimators import DiscriminatorScoreDifference

    real = np.zeros((50, 2), np.float32)
    estimator = DiscriminatorScoreDifference(_steep_discriminator(1.0), loss="logistic", sigma_conditioned=True)
    moved, scale, before, _, _ = staged.checked_move(real.copy(), estimator, 1.0, 0.5, 2, _wide_bounds(), real,
                                                     max_increase=np.inf)
    assert before == 0.0 and scale == 0.5
    np.testing.assert_allclose(np.asarray(moved)[:, 0], 1.0, atol=1e-6)


def test_copying_scale_pools_heldout_and_leave_one_out_distances():
    # Training points 0, 1, 3 on a line, one held-out point at 10. Held-out → training: 7. Leave one out:
    # 0 → 1 (1), 1 → 0 (1), 3 → 1 (2). The median of (7, 1, 1, 2) is 1.5; the held-out point alone would say 7.
    train = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], np.float32)
    heldout = np.array([[10.0, 0.0]], np.float32)
    assert staged.copying_scale(train, heldout) == pytest.approx(1.5)
    # Duplicated training points are each other's nearest neighbour (distance 0), not themselves excluded twice.
    doubled = np.concatenate([train, train[:1]])
    assert staged.copying_scale(doubled, heldout) == pytest.approx(1.0)  # (7, 0, 1, 2, 0) → 1


def test_evaluation_takes_unequal_real_and_fake_counts():
    # A constant logit c: loss ½(softplus(−c) + softplus(c)) exactly, no spread (standard error 0), real rows
    # right (c > 0) and fake rows wrong: accuracy ½, whatever the counts of each side.
    model = _steep_discriminator(0.0)
    model.layers[-1].set_weights([np.zeros((3, 1), np.float32), np.array([0.7], np.float32)])
    _, evaluate = staged._step_functions(model, keras.optimizers.Adam())
    real, fake = np.zeros((7, 2), np.float32), np.ones((512, 2), np.float32)
    loss, error, accuracy, saturated = (float(v) for v in evaluate(real, fake, tf.constant(0.5)))
    expected = 0.5 * (np.log1p(np.exp(-0.7)) + np.log1p(np.exp(0.7)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert error == pytest.approx(0.0, abs=1e-6) and accuracy == pytest.approx(0.5) and saturated == 0.0


def test_tiny_data_sets_get_enough_heldout_particles():
    # 40 real points, 8 held out: the checks still see MIN_HELDOUT_PARTICLES held-out particles.
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 2)).astype(np.float32)
    result = staged.calibrate_stages(_affine_generator(1.0, [0.0, 0.0]), real[:32], real[32:], latent_shape=(2,),
                                     sigmas=[1.0], n_particles=256, train_steps=5, hidden=(8,), fourier_features=4,
                                     refit=False, seed=0)
    entry = result.report[0]
    assert entry["heldout_real"] == 8 and entry["heldout_particles"] == staged.MIN_HELDOUT_PARTICLES


def test_checked_move_backtracks_on_a_failed_check():
    # T = x₁: two moves of ε at σ = 1 displace by 2ε. A check refusing displacements beyond 0.3 accepts ε = 1/8
    # (0.25) after refusing ½ (1.0) and ¼ (0.5); a check that always refuses ends with None, ε 0 and its reason.
    from gan2flow.estimators import DiscriminatorScoreDifference

    x = np.zeros((64, 2), np.float32)
    estimator = DiscriminatorScoreDifference(_steep_discriminator(1.0), loss="logistic", sigma_conditioned=True)
    seen = []

    def short(rows):
        seen.append(float(rows[:, 0].mean()))
        return None if seen[-1] <= 0.3 else "too far"

    moved, scale, _, _, failed = staged.checked_move(x, estimator, 1.0, 0.5, 2, _wide_bounds(), x + [0.25, 0.0],
                                                     max_increase=np.inf, check=short)
    assert scale == 0.125 and failed is None
    assert seen == pytest.approx([1.0, 0.5, 0.25])
    np.testing.assert_allclose(np.asarray(moved)[:, 0], 0.25, atol=1e-6)
    moved, scale, _, _, failed = staged.checked_move(x, estimator, 1.0, 0.5, 2, _wide_bounds(), x,
                                                     max_increase=np.inf, max_halvings=2, check=lambda rows: "no")
    assert moved is None and scale == 0.0 and failed == "no"


def _bowl_discriminator(curvature):
    """T(x, σ) = −curvature·‖x‖²/2 (σ unused): ∇ₓT = −curvature·x, a pull to the origin."""
    x = keras.Input((2,), name="x")
    sigma = keras.Input((1,), name="sigma")
    square = keras.layers.Dense(1, use_bias=False)
    out = square(keras.ops.square(x)) + 0.0 * sigma
    square.set_weights([np.full((2, 1), -0.5 * curvature, np.float32)])
    return keras.Model([x, sigma], out)


def test_noise_keeps_a_contracting_stage_from_merging_its_samples():
    """The collapse the noise prevents (module docstring, "Noise"): a field −x/η with a step η maps every sample to
    the origin in one deterministic step (x − η·x/η = 0: distinct samples merged for good); with noise s each step
    leaves x = √(2η)·s·n, so after the stage the samples are N(0, 2η s²) whatever they were."""
    eta = 0.25
    model = _bowl_discriminator(1.0 / eta)
    lo, hi = np.full(2, -10.0, np.float32), np.full(2, 10.0, np.float32)
    calibration = staged.StagedCalibration(model, [model.get_weights()], [1.0], [eta], flow_steps=3,
                                           bounds=(lo, hi), report=[_entry(True)], n_trusted=1)
    x0 = np.random.default_rng(0).uniform(-1, 1, size=(20000, 2)).astype(np.float32)
    np.testing.assert_allclose(staged.refine_stages(x0, calibration).numpy(), 0.0, atol=1e-6)  # merged
    calibration.noise_scale = 0.3
    x = staged.refine_stages(x0, calibration, seed=4).numpy()
    np.testing.assert_allclose(x.var(0), [2 * eta * 0.3**2] * 2, rtol=0.05)   # 0.045; s.e. of a variance ≈ 1 %
    assert len(np.unique(x, axis=0)) == len(x)                               # no two samples merged
    np.testing.assert_array_equal(staged.refine_stages(x0, calibration, seed=4).numpy(), x)  # seeded


def test_the_noise_scale_is_saved_with_the_stages_and_checked(tmp_path, shifted_gaussian):
    _, real, result = shifted_gaussian
    assert result.noise_scale > 0  # noisy by default
    result.save(str(tmp_path / "stages"))
    loaded = staged.load_stages(str(tmp_path / "stages"))
    assert loaded.noise_scale == result.noise_scale and np.array_equal(loaded.noise_levels, result.noise_levels)
    generator = _affine_generator(1.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="noise_scale"):
        staged.calibrate_stages(generator, real[:100], real[100:200], latent_shape=(2,), sigmas=[1.0], noise_scale=-1)


def test_noise_free_finishing_stages_end_the_default_schedule(shifted_gaussian):
    """With noise and the default schedule, ``finish_stages`` noise-free stages at the last trusted σ follow the
    schedule; the flow's noise factors are 1 then 0, and refine_stages draws no noise there."""
    generator, real, _ = shifted_gaussian
    result = staged.calibrate_stages(generator, real[:2400], real[2400:], latent_shape=(2,), max_stages=3,
                                     finish_stages=2, n_particles=512, train_steps=30, hidden=(16, 16),
                                     noise_scale=0.2, seed=0, refit=False)
    main = [entry for entry in result.report if not entry.get("finishing")]
    finishing = [entry for entry in result.report if entry.get("finishing")]
    assert len(main) == 3 and len(finishing) == 2
    last = [entry for entry in main if entry["trusted"] and entry["moves"]][-1]
    assert all(entry["sigma"] == last["sigma"] and entry["noise"] == 0.0 for entry in finishing)
    assert all(entry["noise"] == 0.2 for entry in main)
    finish_rows = [index for index, entry in enumerate(result.report) if entry.get("finishing")]
    assert np.all(result.noise_levels[finish_rows] == 0.0) and result.noise_levels[0] == 1.0
    assert [entry["stage"] for entry in result.report] == list(range(len(result.report)))
