"""GANFlow's staged field (shared/SD_FLOW.md §9.2) on hand-built stages whose flow is known in closed form."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow


def _linear_discriminator(direction):
    """T(x, σ) = direction · x: its input gradient is `direction` everywhere, at every σ."""
    x = keras.Input((2,), name="x")
    sigma = keras.Input((1,), name="sigma")
    dense = keras.layers.Dense(1, use_bias=False, name="logit")
    model = keras.Model([x, sigma], dense(x) + 0.0 * sigma)
    dense.set_weights([np.asarray(direction, np.float32).reshape(2, 1)])
    return model


def _identity_generator():
    z = keras.Input((2,))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(z, dense(z))
    dense.set_weights([np.eye(2, dtype=np.float32)])
    return model


def _staged_flow(main_direction=(1.0, 0.0), box=((-1.0, -1.0), (1.0, 1.0))):
    """Two stages (σ 1.0, then 0.5) whose fields are the constants (1, 0) and (0, 2); two steps of η = σ²/2 each."""
    directions = [(1.0, 0.0), (0.0, 2.0)]
    stage_model = _linear_discriminator(directions[0])
    weights = gan2flow.estimators.StagedScoreDifference.stack([_linear_discriminator(d) for d in directions])
    stages = {"sigmas": [1.0, 0.5], "step_sizes": [0.5, 0.125], "flow_steps": 2, "box": [list(box[0]), list(box[1])],
              "max_displacement": 100.0, "report": []}
    return gan2flow.GANFlow(_identity_generator(), _linear_discriminator(main_direction), sigma_range=(0.5, 1.0),
                            latent_shape=(2,), stages=stages, stage_discriminator=stage_model, stage_weights=weights)


def test_staged_refinement_is_the_projected_euler_flow_through_the_stages():
    """x ← Π_box(x + η_k v_k) twice per stage: stage 1 adds 2·0.5·(1, 0) = (1, 0), stage 2 adds 2·0.125·(0, 2) =
    (0, 0.5), each step clipped to [−1, 1]² (hand-computed; float32 round-off only)."""
    flow = _staged_flow()
    x = np.array([[-0.8, -0.9], [0.0, 0.0], [0.9, 0.8]], np.float32)
    expected = x.copy()
    for step in ((0.5, 0.0), (0.5, 0.0), (0.0, 0.25), (0.0, 0.25)):
        expected = np.clip(expected + np.array(step, np.float32), -1.0, 1.0)
    report = {}
    refined = flow.refine(x, report=report).numpy()
    np.testing.assert_allclose(refined, expected, atol=1e-6)
    assert report["field"] == "staged" and not report["fell_back"]
    # projected, by hand: only the third sample leaves the box, once per step (x: 1.4 and 1.5, y: 1.05 and 1.3)
    assert report["projected"] == 4
    states, sigmas = flow.trajectory(x)
    np.testing.assert_allclose(states[-1], refined, atol=1e-6)
    np.testing.assert_allclose(sigmas, [1.0, 0.5])


def test_the_tweedie_bound_scales_each_samples_step():
    """With max_displacement D, σ²‖v‖ ≤ D: stage 1 (σ = 1, ‖v‖ = 1) with D = 0.2 moves 0.5·0.2 = 0.1 per step."""
    flow = _staged_flow(box=((-10.0, -10.0), (10.0, 10.0)))
    flow.stages["max_displacement"] = 0.2
    report = {}
    refined = flow.refine(np.zeros((4, 2), np.float32), check=False, report=report).numpy()
    # stage 1: 2 steps of 0.5·(0.2/1)·(1, 0) = (0.2, 0); stage 2 (σ² ‖v‖ = 0.25·2 = 0.5 > 0.2): 2 steps of
    # 0.125·(0.2/0.5)·(0, 2) = (0, 0.1)
    np.testing.assert_allclose(refined, np.tile([0.2, 0.2], (4, 1)), atol=1e-6)
    assert report["clipped"] == 4 * 4


def test_staged_field_refuses_schedule_options_and_calibrated_field_still_takes_them():
    flow = _staged_flow()
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"`levels` applies to field='calibrated'"):
        flow.refine(x, levels=5)
    with pytest.raises(ValueError, match="`field` must be one of"):
        flow.refine(x, field="other")
    assert flow.refine(x, field="calibrated", levels=3, drift_correction=False, check=False).shape == (3, 2)


def test_a_refinement_the_calibration_says_made_things_worse_falls_back_with_a_warning():
    """The generator-calibrated log-ratio here is −x₀ (its gradient points left), the stages move right: the
    mean log-ratio falls, so refine returns the unrefined samples and says so."""
    flow = _staged_flow(main_direction=(-1.0, 0.0))
    x = np.zeros((5, 2), np.float32)
    report = {}
    with pytest.warns(UserWarning, match="made the samples worse"):
        out = flow.refine(x, report=report)
    np.testing.assert_array_equal(out, x)
    assert report["fell_back"] and report["log_ratio_after"] < report["log_ratio_before"]
    assert not np.array_equal(flow.refine(x, check=False), x)


def test_a_staged_flow_saves_and_loads_with_its_stages(tmp_path):
    flow = _staged_flow()
    path = str(tmp_path / "staged.keras")
    flow.save(path)
    loaded = gan2flow.load(path)
    x = tf.random.stateless_uniform((16, 2), seed=[1, 2], minval=-1, maxval=1)
    np.testing.assert_array_equal(loaded.refine(x), flow.refine(x))
    assert loaded.stages["sigmas"] == [1.0, 0.5]


def test_a_flow_with_no_trusted_stage_leaves_samples_unchanged_and_says_so():
    """A staged calibration whose first stage was not trusted keeps no stage: the staged field is then the
    identity (refine returns x), and the diagnostics' stage table says why."""
    flow = gan2flow.GANFlow(_identity_generator(), _linear_discriminator((1.0, 0.0)), sigma_range=(0.5, 1.0),
                            latent_shape=(2,), stages={"sigmas": [], "step_sizes": [], "flow_steps": 2,
                                                       "box": [[-1, -1], [1, 1]], "max_displacement": 1.0},
                            stage_discriminator=_linear_discriminator((1.0, 0.0)))
    x = np.array([[0.1, 0.2], [0.3, -0.4]], np.float32)
    report = {}
    np.testing.assert_array_equal(flow.refine(x, report=report), x)
    assert report["field"] == "staged" and report["projected"] == 0
    text = gan2flow.diagnostics.format_diagnostics({
        "levels": [], "warnings": [], "good_enough": True, "chance_loss": 1.386,
        "stages": [{"stage": 0, "sigma": 2.0, "heldout_loss": 0.9, "train_loss": 0.5, "accuracy": 0.7,
                    "trusted": False, "why": "held-out loss exceeds training loss by 0.400 > 0.15"}]})
    assert "not trusted: held-out loss exceeds training loss by 0.400" in text
    assert "no trusted stage: staged refinement leaves samples unchanged" in text


def test_the_stages_noise_is_the_langevin_term_of_the_recorded_scale_and_repeats_with_its_seed():
    """With ``stages["noise_scale"]`` s, each step adds √(2η_k)·s·n: with constant fields and no clipping, refined −
    the deterministic flow is N(0, 2s²·Σ_k steps·η_k) per coordinate = N(0, 2·0.3²·(2·0.5 + 2·0.125)) = N(0, 0.225)."""
    flow = _staged_flow(box=((-50.0, -50.0), (50.0, 50.0)))
    flow.stages["noise_scale"] = 0.3
    x = np.zeros((20000, 2), np.float32)
    deterministic = flow.refine(x, noise_scale=0.0, check=False).numpy()
    np.testing.assert_allclose(deterministic, np.tile([1.0, 0.5], (20000, 1)), atol=1e-6)  # (1, 0) + (0, 0.5)
    noisy = flow.refine(x, seed=7, check=False).numpy()
    residual = noisy - deterministic
    assert np.all(np.abs(residual.mean(0)) < 0.02)                       # s.e. of the mean: √(0.225/20000) ≈ 0.0034
    np.testing.assert_allclose(residual.var(0), [0.225, 0.225], rtol=0.05)  # s.e. of the variance: ≈ 1 %
    np.testing.assert_array_equal(flow.refine(x[:64], seed=7, check=False), noisy[:64])   # the seed repeats it
    assert not np.array_equal(flow.refine(x[:64], seed=8, check=False), noisy[:64])
    states, _ = flow.trajectory(x[:64], seed=7)
    np.testing.assert_allclose(states[-1], noisy[:64], atol=1e-6)


def test_a_staged_flow_keeps_its_noise_through_save_and_load(tmp_path):
    flow = _staged_flow(box=((-50.0, -50.0), (50.0, 50.0)))
    flow.stages["noise_scale"] = 0.3
    path = str(tmp_path / "noisy.keras")
    flow.save(path)
    loaded = gan2flow.load(path)
    assert loaded.stages["noise_scale"] == 0.3
    x = np.zeros((32, 2), np.float32)
    np.testing.assert_array_equal(loaded.refine(x, seed=1, check=False), flow.refine(x, seed=1, check=False))
