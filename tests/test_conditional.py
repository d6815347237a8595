"""Class-conditional GANs (issue 16): labels bound into estimators, conditional GANFlows, convert, CLI.

Most checks use a conditional flow built by hand whose fields are known in closed form: the discriminator's
logit is T(x, σ, y) = −½‖x − μ_y‖² (a label embedding holding the class means μ_y), so the bound field is
v(x) = μ_y − x for each row's own label, an Euler step is x ← x + η(μ_y − x), and the staged flow after steps
η_1 … η_m is μ_y + Π(1 − η_i)(x − μ_y). The generator is G(z, y) = z + μ_y. Float32 arithmetic on numbers of
order 1: tolerances 1e-5.
The end-to-end test on the zoo's conditional GAN is marked ``slow`` (a conversion takes minutes on 2 cores).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow
from gan2flow import adapters, estimators, flows, models
from gan2flow.diagnostics import diagnose
from gan2flow.ganflow import GANFlow

MEANS = np.array([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]], np.float32)
K = len(MEANS)
STAGE_SIGMAS = [1.0, 0.5]
STAGE_STEPS = [0.3, 0.2]  # η per stage
FLOW_STEPS = 2


def _means_discriminator(means=MEANS, name="means_discriminator"):
    """[x, sigma, label] -> −½‖x − μ_label‖² (σ enters with weight 0, so the model uses every input)."""
    x = keras.Input((2,), name="x")
    sigma = keras.Input((1,), name="sigma")
    label = keras.Input((1,), dtype="int32", name="label")
    mu = keras.layers.Flatten()(keras.layers.Embedding(
        len(means), 2, embeddings_initializer=keras.initializers.Constant(means))(label))
    difference = keras.layers.Subtract()([x, mu])
    squared = keras.layers.Multiply()([difference, difference])
    half = keras.layers.Dense(1, use_bias=False, trainable=False, kernel_initializer=keras.initializers.Constant(-0.5))
    zero = keras.layers.Dense(1, use_bias=False, trainable=False, kernel_initializer="zeros")
    return keras.Model([x, sigma, label], keras.layers.Add()([half(squared), zero(sigma)]), name=name)


def _means_generator():
    """[z, label] -> z + μ_label (latent dimension 2)."""
    z = keras.Input((2,), name="z")
    label = keras.Input((1,), dtype="int32", name="label")
    mu = keras.layers.Flatten()(keras.layers.Embedding(
        K, 2, embeddings_initializer=keras.initializers.Constant(MEANS), trainable=False)(label))
    return keras.Model([z, label], keras.layers.Add()([z, mu]), name="means_generator")


def _flow():
    stage_model = _means_discriminator(name="stage_model")
    # Stage 1 pulls towards μ_y, stage 2 towards μ_y + (0.5, 0): the stages really differ.
    stage_weights = [np.stack([MEANS, MEANS + np.array([0.5, 0.0], np.float32)])]
    stages = {"sigmas": STAGE_SIGMAS, "step_sizes": STAGE_STEPS, "flow_steps": FLOW_STEPS,
              "box": [[-50.0, -50.0], [50.0, 50.0]], "max_displacement": 1e3}
    return GANFlow(_means_generator(), _means_discriminator(), sigma_range=(0.1, 1.0), latent_shape=(2,),
                   n_classes=K, stages=stages, stage_discriminator=stage_model, stage_weights=stage_weights)


@pytest.fixture(scope="module")
def flow():
    return _flow()


def _points(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, K, n).astype(np.int32)


def _stages_closed_form(x, labels, stages):
    """μ'_k + (1 − η_k)^2 (x − μ'_k) for the first ``stages`` stages, μ' the stage's means."""
    for k, eta in enumerate(STAGE_STEPS[:stages]):
        target = MEANS[labels] + (np.array([0.5, 0.0], np.float32) if k else 0.0)
        x = target + (1 - eta) ** FLOW_STEPS * (x - target)
    return x


def _staged_closed_form(x, labels):
    return _stages_closed_form(x, labels, len(STAGE_STEPS))


# --------------------------------------------------------------------------------------------------
# Estimators with labels bound


def test_bound_estimator_equals_the_per_class_estimator_and_the_closed_form():
    x, labels = _points()
    bound = estimators.RowLabels(K).assign(labels)
    estimator = estimators.DiscriminatorScoreDifference(estimators.LabelledModel(_means_discriminator(), bound),
                                                        loss="logistic", sigma_conditioned=True)
    v = estimator(x, 0.3).numpy()
    np.testing.assert_allclose(v, MEANS[labels] - x, atol=1e-5)
    for k in range(K):  # one class bound at a time, on that class's rows only
        rows = labels == k
        bound.assign(np.full(rows.sum(), k))
        np.testing.assert_allclose(estimator(x[rows], 0.3).numpy(), v[rows], atol=1e-6)


def test_staged_estimator_with_labels_uses_each_rows_class_and_its_stage():
    x, labels = _points()
    model = _means_discriminator()
    shifted = MEANS + np.array([0.5, 0.0], np.float32)
    bound = estimators.RowLabels(K).assign(labels)
    staged = estimators.StagedScoreDifference(model, [np.stack([MEANS, shifted])], STAGE_SIGMAS, labels=bound)
    np.testing.assert_allclose(staged(x, 1.0).numpy(), MEANS[labels] - x, atol=1e-5)
    np.testing.assert_allclose(staged(x, 0.5).numpy(), shifted[labels] - x, atol=1e-5)
    compiled = tf.function(staged, jit_compile=True)  # labels read from a variable: XLA equals eager
    np.testing.assert_allclose(compiled(x, tf.constant(0.5)).numpy(), shifted[labels] - x, atol=1e-5)
    bound.assign((labels + 1) % K)  # new labels, same compiled program
    np.testing.assert_allclose(compiled(x, tf.constant(0.5)).numpy(), shifted[(labels + 1) % K] - x, atol=1e-5)


def test_row_labels_refuse_bad_labels_and_too_few_rows():
    bound = estimators.RowLabels(3)
    with pytest.raises(ValueError, match="`labels` must lie in 0 … 2"):
        bound.assign([0, 3])
    with pytest.raises(ValueError, match="`labels` must be a 1-D array of integer"):
        bound.assign(np.zeros((2, 2), np.int32))
    bound.assign([0, 1])
    with pytest.raises(ValueError, match="2 labels are bound, but x has 3 rows"):
        bound(tf.zeros((3, 2)))


@pytest.mark.parametrize("declared, expected", [((None,), (5,)), ((None, 1), (5, 1)), ((None, 3), (5, 3))])
def test_label_input_follows_the_models_declared_label_input(declared, expected):
    z = keras.Input((2,))
    label = keras.Input(declared[1:], dtype="int32" if declared[1:] != (3,) else "float32")
    model = keras.Model([z, label], z)
    labels = np.array([0, 2, 1, 1, 0])
    formatted = adapters.label_input(model, labels).numpy()
    assert formatted.shape == expected
    if expected == (5, 3):
        np.testing.assert_array_equal(formatted, np.eye(3)[labels])
    else:
        np.testing.assert_array_equal(formatted.reshape(-1), labels)


# --------------------------------------------------------------------------------------------------
# A conditional GANFlow


def test_staged_refine_with_labels_matches_the_closed_form_chunked_and_per_row(flow):
    x, labels = _points()
    expected = _staged_closed_form(x, labels)
    np.testing.assert_allclose(flow.refine(x, labels=labels).numpy(), expected, atol=1e-5)
    chunked = flow.refine(x, labels=labels, batch_size=5).numpy()  # 5 chunks, the last of 3 rows
    np.testing.assert_allclose(chunked, expected, atol=1e-5)
    for row in (0, 7, 22):
        single = flow.refine(x[row:row + 1], labels=labels[row:row + 1], check=False).numpy()
        np.testing.assert_allclose(single[0], expected[row], atol=1e-5)
    states, sigmas = flow.trajectory(x, labels=labels)
    np.testing.assert_allclose(states[-1].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(states[1].numpy(), _stages_closed_form(x, labels, 1), atol=1e-5)


def test_an_int_label_gives_every_row_that_class(flow):
    x, _ = _points(6)
    np.testing.assert_allclose(flow.refine(x, labels=2).numpy(), _staged_closed_form(x, np.full(6, 2)), atol=1e-5)


def test_calibrated_refine_with_drift_correction_keeps_rows_in_their_class(flow):
    x, labels = _points(30)
    # Without the kernel term: Euler steps x ← x + η(μ_y − x) along the calibrated field, per row.
    sigmas = [0.8, 0.4]
    plain = flow.refine(x, labels=labels, field="calibrated", sigmas=sigmas, steps_per_sigma=1, step_scale=0.5,
                        drift_correction=False).numpy()
    expected = x.copy()
    for sigma in sigmas:
        expected = expected + 0.5 * sigma**2 * (MEANS[labels] - expected)
    np.testing.assert_allclose(plain, expected, atol=1e-5)
    # With it, rows are grouped by class: a batch holding the other classes too equals each class alone.
    corrected = flow.refine(x, labels=labels, field="calibrated", sigmas=sigmas, drift_min_sigma=0.0).numpy()
    for k in range(K):
        rows = labels == k
        alone = flow.refine(x[rows], labels=k, field="calibrated", sigmas=sigmas, drift_min_sigma=0.0).numpy()
        np.testing.assert_allclose(corrected[rows], alone, atol=1e-5)


def test_latent_refinement_keeps_labels_fixed_and_chunks_equal_one_pass(flow):
    z = flow.latents(20, seed=3)
    _, labels = _points(20)
    one = flow.refine_latent(z, labels=labels, levels=4, seed=5).numpy()  # Langevin noise keyed by row
    chunked = flow.refine_latent(z, labels=labels, levels=4, seed=5, batch_size=6).numpy()
    np.testing.assert_allclose(chunked, one, atol=1e-5)
    # G(z, y) = z + μ_y and log r = −½‖G − μ_y‖² = −½‖z‖²: the drift −2z is the same for every label, so the
    # refined latents do not depend on the labels, while the samples sit around each row's own class mean.
    other = flow.refine_latent(z, labels=(labels + 1) % K, levels=4, seed=5).numpy()
    np.testing.assert_allclose(other, one, atol=1e-5)
    samples = flow.generate(one, labels=labels).numpy()
    np.testing.assert_allclose(samples - MEANS[labels], one, atol=1e-5)


def test_sample_draws_the_same_latents_for_any_labels(flow):
    raw0 = flow.sample(8, refine=False, seed=1, labels=0).numpy()
    raw1 = flow.sample(8, refine=False, seed=1, labels=np.full(8, 1)).numpy()
    np.testing.assert_allclose(raw0 - MEANS[0], raw1 - MEANS[1], atol=1e-6)
    refined = flow.sample(8, seed=1, labels=1).numpy()
    np.testing.assert_allclose(refined, _staged_closed_form(raw1, np.full(8, 1)), atol=1e-5)


def test_importance_weights_are_normalised_within_each_class(flow):
    x, labels = _points(40)
    log_r = flow.log_ratio(x, 0.3, labels=labels).numpy()
    np.testing.assert_allclose(log_r, -0.5 * ((x - MEANS[labels]) ** 2).sum(1), atol=1e-5)
    weights = flow.importance_weights(x, 0.3, labels=labels).numpy()
    for k in range(K):
        rows = labels == k
        assert weights[rows].mean() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(weights[rows], np.exp(log_r[rows]) / np.exp(log_r[rows]).mean(), rtol=1e-4)


def test_save_and_load_keep_the_labels_behaviour(flow, tmp_path):
    path = str(tmp_path / "conditional.keras")
    flow.save(path)
    loaded = gan2flow.load(path)
    assert loaded.n_classes == K
    labels = np.arange(10) % K
    np.testing.assert_array_equal(loaded.sample(10, seed=2, labels=labels).numpy(),
                                  flow.sample(10, seed=2, labels=labels).numpy())
    with pytest.raises(ValueError, match="`labels` must be given: this flow is class-conditional"):
        loaded.sample(10, seed=2)


@pytest.mark.parametrize("call", [
    lambda f: f.sample(4, seed=0),
    lambda f: f.refine(np.zeros((4, 2), np.float32)),
    lambda f: f.refine_latent(f.latents(4, seed=0)),
    lambda f: f.generate(f.latents(4, seed=0)),
    lambda f: f.importance_weights(np.zeros((4, 2), np.float32)),
    lambda f: f.trajectory(np.zeros((4, 2), np.float32)),
])
def test_a_conditional_flow_without_labels_says_how_to_pass_them(flow, call):
    with pytest.raises(ValueError, match=r"`labels` must be given: .*Pass labels=K .*--label K or --labels"):
        call(flow)


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 5, 0]), "`labels` must be class indices below n_classes=3"),
    (np.array([0, 1, 2]), r"`labels` must hold one integer label per row, shape \[4\]"),
    (np.array([0.5, 1, 2, 0]), "`labels` must hold integer class labels"),
    (-1, "`labels` must be class indices >= 0"),
])
def test_bad_labels_are_refused_naming_the_argument(flow, labels, message):
    with pytest.raises(ValueError, match=message):
        flow.refine(np.zeros((4, 2), np.float32), labels=labels)


def test_labels_for_an_unconditional_flow_and_refiners_with_labels_are_refused(flow):
    keras.utils.set_random_seed(0)
    plain = GANFlow(models.mlp_generator(2, (2,), hidden=(8,)), models.mlp_discriminator((2,), hidden=(8,)),
                    sigma_range=(0.1, 1.0), latent_shape=(2,))
    with pytest.raises(ValueError, match="`labels` applies to class-conditional flows only"):
        plain.sample(4, seed=0, labels=1)
    with pytest.raises(ValueError, match="`method`: the refiners of gan2flow.refiners take no labels"):
        flow.sample(4, seed=0, labels=1, method="drs")
    with pytest.raises(ValueError, match="`strategy` is not supported with `labels`"):
        flow.refine(np.zeros((4, 2), np.float32), labels=1, strategy=tf.distribute.get_strategy())


def test_diagnostics_per_class_name_the_class_with_too_little_data(flow):
    rng = np.random.default_rng(0)
    counts = {0: 400, 1: 400, 2: 12}  # class 2 has too little data
    labels = np.concatenate([np.full(n, k) for k, n in counts.items()]).astype(np.int32)
    real = (MEANS[labels] + 0.3 * rng.normal(size=(len(labels), 2))).astype(np.float32)
    held = rng.permutation(len(labels))[:200]
    train = np.setdiff1d(np.arange(len(labels)), held)
    report = diagnose(flow, real[train], real[held], train_labels=labels[train], heldout_labels=labels[held],
                      n=500, levels=2)
    rows = {row["label"]: row for row in report["classes"]}
    assert rows[0]["n_train"] + rows[0]["n_heldout"] == 400
    assert rows[0]["trusted"] and rows[1]["trusted"]
    assert not rows[2]["trusted"] and "too little data" in rows[2]["why"]
    assert any(warning.startswith("class 2: too little data") for warning in report["warnings"])
    assert "| 2 |" in gan2flow.diagnostics.format_diagnostics(report)


# --------------------------------------------------------------------------------------------------
# convert


def test_convert_refuses_a_conditional_generator_without_labels_before_any_work():
    real = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`labels` must be given: the generator takes two inputs \(\[z, label\].*"
                                         r"--labels LABELS.npy"):
        gan2flow.convert(_means_generator(), None, real, steps=1, verbose=0)
    with pytest.raises(ValueError, match=r"`labels` must hold one integer label per row, shape \[64\]"):
        gan2flow.convert(_means_generator(), None, real, labels=np.zeros(10, np.int32), steps=1, verbose=0)
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError, match="`labels` applies to class-conditional generators"):
        gan2flow.convert(models.mlp_generator(2, (2,), hidden=(8,)), None, real, labels=np.zeros(64, np.int32),
                         steps=1, verbose=0)


@pytest.mark.slow  # about 50 s on 2 loaded cores (XLA compiles of the calibration and the stages)
def test_convert_a_conditional_pair_end_to_end_small():
    """A few calibration steps and two stages: the machinery runs, the flow is conditional and saveable."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, 300).astype(np.int32)
    real = (MEANS[labels] + 0.2 * rng.normal(size=(300, 2))).astype(np.float32)
    x, label = keras.Input((2,)), keras.Input((1,), dtype="int32")
    given = keras.Model([x, label], keras.layers.Dense(1)(keras.layers.Concatenate()(
        [x, keras.layers.Flatten()(keras.layers.Embedding(K, 2)(label))])))
    flow = gan2flow.convert(_means_generator(), given, real, labels=labels, steps=20, hidden=(16,),
                            fourier_features=8, verbose=0,
                            stage_options={"sigmas": [1.0, 0.5], "train_steps": 5, "n_particles": 256})
    assert flow.n_classes == K
    assert {row["label"] for row in flow.diagnostics["classes"]} == {0, 1, 2}
    # 300 real rows: the stages were calibrated again on all of them (the refit, with the first pass's particles)
    assert flow.diagnostics["stages"] and all(entry.get("refit") for entry in flow.diagnostics["stages"])
    assert flow.sample(5, seed=0, labels=1, check=False).shape == (5, 2)
    calibrated = flow.discriminator
    assert [tuple(t.shape) for t in calibrated.inputs] == [(None, 2), (None, 1), (None, 1)]


# --------------------------------------------------------------------------------------------------
# The zoo's conditional GAN, with the defaults


def test_zoo_lists_the_conditional_member_apart_and_its_labels_follow_the_modes():
    from gan2flow.experiments import zoo

    assert zoo.names(conditional=True) == ["ring_classes_cgan"]
    assert "ring_classes_cgan" not in zoo.names() and "ring_classes_cgan" in zoo.names(conditional=None)
    recipe = zoo.recipe("ring_classes_cgan")
    data = zoo.make_data(recipe, seed=0)
    centers, classes = np.asarray(data["info"]["centers"]), np.asarray(data["info"]["mode_classes"])
    for samples, labels in ((data["train"], data["train_labels"]), (data["heldout"], data["heldout_labels"])):
        nearest = np.linalg.norm(samples[:, None] - centers[None], axis=2).argmin(1)
        # std 0.1 around modes 1.37 apart: every sample is nearest its own mode, whose class is its label
        np.testing.assert_array_equal(classes[nearest], labels)
    assert np.bincount(data["train_labels"]).min() > 1300  # 4 500 samples, 3 classes of 3 equal modes


@pytest.mark.slow
def test_zoo_conditional_gan_refined_beats_raw_per_class_and_stays_in_range():
    from gan2flow import metrics
    from gan2flow.experiments import zoo

    member = zoo.load("ring_classes_cgan")
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss,
                            labels=member.train_labels, verbose=0)
    low, high = member.info["data_range"]
    for k in range(member.info["n_classes"]):
        raw = flow.sample(1000, refine=False, seed=0, labels=k).numpy()
        refined = flow.sample(1000, seed=0, labels=k).numpy()
        held = member.heldout[member.heldout_labels == k][:1000]
        assert metrics.sliced_wasserstein(refined, held, seed=0) < metrics.sliced_wasserstein(raw, held, seed=0)
        margin = 0.1 * (high - low)
        assert np.all((refined >= low - margin) & (refined <= high + margin))


def test_flows_engine_contract_is_unchanged():
    """A bound estimator is an ordinary (x, sigma) -> v for the engine: gan2flow.flow runs it directly."""
    x, labels = _points(12)
    bound = estimators.RowLabels(K).assign(labels)
    estimator = estimators.DiscriminatorScoreDifference(estimators.LabelledModel(_means_discriminator(), bound),
                                                        sigma_conditioned=True)
    moved = flows.flow(x, estimator, [0.5], step_scale=1.0).numpy()  # η = 0.25
    np.testing.assert_allclose(moved, x + 0.25 * (MEANS[labels] - x), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_refine_takes_a_label_or_a_labels_file_and_names_the_flags_without_them(flow, tmp_path, capsys):
    from gan2flow import cli

    path = str(tmp_path / "conditional.keras")
    flow.save(path)
    out = str(tmp_path / "x.npy")
    assert cli.main(["refine", "--flow", path, "--n", "6", "--seed", "4", "--out", out]) == 2
    assert "`--label/--labels` must be given" in capsys.readouterr().err
    assert cli.main(["refine", "--flow", path, "--n", "6", "--seed", "4", "--label", "2", "--out", out]) == 0
    np.testing.assert_array_equal(np.load(out), flow.sample(6, seed=4, labels=2).numpy())
    labels = np.array([0, 1, 2, 2, 1, 0])
    np.save(tmp_path / "y.npy", labels)
    assert cli.main(["refine", "--flow", path, "--n", "6", "--seed", "4", "--labels", str(tmp_path / "y.npy"),
                     "--no-refine", "--out", out]) == 0
    np.testing.assert_array_equal(np.load(out), flow.sample(6, seed=4, labels=labels, refine=False).numpy())
    assert cli.main(["refine", "--flow", path, "--n", "6", "--label", "7", "--out", out]) == 2
    assert "`--label/--labels` must be class indices below n_classes=3" in capsys.readouterr().err


def test_cli_convert_names_the_labels_flag(tmp_path, capsys):
    from gan2flow import cli

    generator = str(tmp_path / "G.keras")
    _means_generator().save(generator)
    data = str(tmp_path / "x.npy")
    np.save(data, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    assert cli.main(["convert", "--generator", generator, "--data", data, "--steps", "1",
                     "--out", str(tmp_path / "out")]) == 2
    assert "`--labels` must be given: the generator takes two inputs" in capsys.readouterr().err
