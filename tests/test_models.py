"""Tests for gan2flow.models: builder shapes, σ-conditioning, the σ embedding and .keras round trips.

Round trips must give bit-identical outputs (same weights, same float32 graph); other float32
comparisons use atol=1e-6 (a few float32 operations on O(1) values).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from gan2flow import estimators, models

from _helpers import gaussian_energy_difference

RNG = np.random.default_rng(0)

# (builder, positional args, keyword args, expected x shape, expected output shape)
BUILDERS = {
    "mlp_discriminator": (models.mlp_discriminator, ((2,),), {"hidden": (8, 8)}, (2,), (1,)),
    "mlp_discriminator_image": (models.mlp_discriminator, ((8, 8, 1),), {"hidden": (8,)}, (8, 8, 1), (1,)),
    "mlp_discriminator_sn": (
        models.mlp_discriminator, ((3,),), {"hidden": (8,), "spectral_norm": True}, (3,), (1,)),
    "conv_discriminator": (models.conv_discriminator, ((8, 8, 1),), {"filters": (4, 8), "hidden": 8},
                           (8, 8, 1), (1,)),
    "conv_discriminator_odd_sn": (
        models.conv_discriminator, ((7, 5, 3),), {"filters": (4,), "hidden": 0, "spectral_norm": True},
        (7, 5, 3), (1,)),
    "mlp_generator": (models.mlp_generator, (4, (2,)), {"hidden": (8,)}, (4,), (2,)),
    "mlp_generator_image": (models.mlp_generator, (4, (8, 8, 1)), {"hidden": (8,)}, (4,), (8, 8, 1)),
    "conv_generator": (models.conv_generator, (6, (8, 8, 1)), {"filters": (8, 4)}, (6,), (8, 8, 1)),
    "conv_generator_odd": (models.conv_generator, (6, (7, 5, 3)), {"filters": (4,)}, (6,), (7, 5, 3)),
}
DISCRIMINATORS = [name for name in BUILDERS if "discriminator" in name]


def _build(name, **overrides):
    builder, args, kwargs, _, _ = BUILDERS[name]
    return builder(*args, **{**kwargs, **overrides})


def _inputs(model, batch=5):
    arrays = [RNG.normal(size=(batch,) + tuple(t.shape[1:])).astype(np.float32) for t in model.inputs]
    if len(arrays) == 2:  # [x, sigma]: positive noise levels
        arrays[1] = np.exp(RNG.uniform(np.log(0.05), np.log(2.0), size=(batch, 1))).astype(np.float32)
    return arrays[0] if len(arrays) == 1 else arrays


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_shapes(name):
    model = _build(name)
    _, _, _, x_shape, out_shape = BUILDERS[name]
    assert tuple(model.inputs[0].shape[1:]) == x_shape
    if "discriminator" in name:
        assert len(model.inputs) == 2 and tuple(model.inputs[1].shape[1:]) == (1,)
    else:
        assert len(model.inputs) == 1
    output = model(_inputs(model))
    assert tuple(output.shape) == (5,) + out_shape
    assert output.dtype == tf.float32
    assert np.all(np.isfinite(output.numpy()))


@pytest.mark.parametrize("name", DISCRIMINATORS)
def test_unconditioned_discriminator_takes_x_only(name):
    model = _build(name, sigma_conditioned=False)
    assert len(model.inputs) == 1
    assert tuple(model(_inputs(model)).shape) == (5, 1)


@pytest.mark.parametrize("name", ["mlp_discriminator", "conv_discriminator"])
def test_conditioned_output_depends_on_sigma(name):
    model = _build(name)
    x, _ = _inputs(model, batch=3)
    low = model([x, np.full((3, 1), 0.1, np.float32)]).numpy()
    high = model([x, np.full((3, 1), 1.0, np.float32)]).numpy()
    assert not np.allclose(low, high)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_keras_file_round_trip_is_identical(name, tmp_path):
    model = _build(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode: no lambdas, only registered layers
    inputs = _inputs(model)
    np.testing.assert_array_equal(model(inputs).numpy(), loaded(inputs).numpy())
    assert [tuple(t.shape) for t in loaded.inputs] == [tuple(t.shape) for t in model.inputs]


@pytest.mark.parametrize("name", ["mlp_discriminator", "conv_discriminator", "mlp_discriminator_image"])
def test_discriminator_is_a_score_difference_estimator(name):
    # The builders plug into the estimator contract: v = ∇ₓT(x, σ) shaped like x, finite and non-zero.
    model = _build(name)
    estimator = estimators.DiscriminatorScoreDifference(model, loss="logistic")
    assert estimator.sigma_conditioned
    x = _inputs(model)[0]
    v = estimator(x, 0.3).numpy()
    assert v.shape == x.shape
    assert np.all(np.isfinite(v)) and np.abs(v).max() > 0


def test_default_activation_is_smooth():
    # The SD estimate is an input gradient: the defaults must not be ReLU (piecewise-constant gradient).
    model = models.mlp_discriminator((2,), hidden=(8,))
    x = np.array([[0.3, -0.2]], np.float32)
    sigma = tf.constant([[0.5]], tf.float32)

    def gradient(point):
        point = tf.constant(point)
        with tf.GradientTape() as tape:
            tape.watch(point)
            value = tf.reduce_sum(model([point, sigma]))
        return tape.gradient(value, point).numpy()

    # A smooth gradient field changes continuously: over a 1e-3 step it moves by O(1e-3 · curvature).
    step = np.array([[1e-3, 0.0]], np.float32)
    assert np.abs(gradient(x + step) - gradient(x)).max() < 1e-2
    assert model.get_layer("dense_0").get_config()["activation"] in ("swish", "silu")


def test_sigma_embedding_values_and_config():
    layer = models.SigmaEmbedding(n_frequencies=3)
    sigma = np.array([[math.e], [1.0], [0.0]], np.float32)
    out = layer(sigma).numpy()
    assert out.shape == (3, 7)
    omegas = np.array([math.pi / 8, math.pi / 4, math.pi / 2])
    expected_e = np.concatenate([[1.0], np.sin(omegas), np.cos(omegas)])
    np.testing.assert_allclose(out[0], expected_e, atol=1e-6)
    np.testing.assert_allclose(out[1], np.concatenate([[0.0], np.zeros(3), np.ones(3)]), atol=1e-6)
    # σ = 0 is clamped to min_sigma = 1e-6: finite, log σ = log 1e-6.
    np.testing.assert_allclose(out[2, 0], math.log(1e-6), rtol=1e-6)
    clone = models.SigmaEmbedding.from_config(layer.get_config())
    np.testing.assert_array_equal(clone(sigma).numpy(), out)
    assert models.SigmaEmbedding(n_frequencies=0)(sigma).shape == (3, 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.mlp_discriminator((0,)), "input_shape"),
        (lambda: models.mlp_discriminator((2,), hidden=(8, -1)), "hidden"),
        (lambda: models.mlp_generator(0, (2,)), "latent_dim"),
        (lambda: models.mlp_generator(2, "abc"), "output_shape"),
        (lambda: models.conv_discriminator((8, 8)), "image_shape"),
        (lambda: models.conv_generator(4, (8, 8, 1), filters=()), "filters"),
        (lambda: models.SigmaEmbedding(min_sigma=0.0), "min_sigma"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# Parametrisations of the σ-conditioned discriminator (shared/SD_FLOW.md §9.1; docs/losses.md)
# ------------------------------------------------------------------------------------------------
def test_input_scale_closed_form():
    # c_in(σ) = 1/sqrt(σ² + σ_data²): 1/σ_data at σ = 0, 1/sqrt(0.25 + 1.44) = 1/1.3 at σ = 1.2 (float32, 1e-6).
    sigma = np.array([[0.0], [1.2], [3.0]], np.float32)
    np.testing.assert_allclose(models.input_scale(sigma, 0.5).numpy(),
                               [[2.0], [1.0 / 1.3], [1.0 / math.sqrt(9.25)]], rtol=1e-6)
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    scaled = models.InputScaling(0.5)([x, sigma]).numpy()
    np.testing.assert_allclose(scaled, x / np.sqrt(sigma**2 + 0.25), rtol=1e-6)


def _set_dense(model, name, kernel, bias):
    layer = model.get_layer(name)
    layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])


@pytest.mark.parametrize("via_skip", [False, True])
@pytest.mark.parametrize("sigma", [0.05, 0.4, 2.0])
def test_energy_difference_gives_the_gaussian_score_difference(sigma, via_skip):
    # p = N(m, τ² I), q = N(0, ρ² I): v_σ(x) = −(x − m)/(σ² + τ²) + x/(σ² + ρ²) and
    # log p_σ/q_σ = −‖x − m‖²/(2(σ² + τ²)) + ‖x‖²/(2(σ² + ρ²)) + const. With no hidden layer and
    # σ_data = τ, u = x/sqrt(σ² + τ²); residuals Δ_p = u − m/sqrt(σ² + τ²) and Δ_q = β u,
    # β = sqrt((σ² + τ²)/(σ² + ρ²)), give exactly T = ½‖Δ_q‖² − ½‖Δ_p‖² = log p_σ/q_σ − const, in
    # every mixture component (all K set alike, the log-sum-exp adds log K, a constant). Both ways of
    # writing the residuals (computed from u, or skip gains c_p = 1, c_q = β and constant centres) agree.
    dim, tau, rho = 3, 0.3, 1.5
    m = np.array([1.0, -0.5, 0.25], np.float32)
    model = gaussian_energy_difference(sigma, m, tau, rho, via_skip=via_skip)
    x = RNG.normal(size=(64, dim)).astype(np.float32) * 2.0
    v = estimators.DiscriminatorScoreDifference(model, loss="logistic")(x, sigma).numpy()
    expected = -(x - m) / (sigma**2 + tau**2) + x / (sigma**2 + rho**2)
    # float32 algebra on values up to ~1e3 (σ = 0.05: 1/(σ² + τ²) ≈ 11, |x| ≲ 8): relative 1e-5.
    np.testing.assert_allclose(v, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    logit = model([x, np.full((64, 1), sigma, np.float32)]).numpy()[:, 0]
    exact = -np.sum((x - m) ** 2, 1) / (2 * (sigma**2 + tau**2)) + np.sum(x**2, 1) / (2 * (sigma**2 + rho**2))
    offsets = logit - exact
    np.testing.assert_allclose(offsets, offsets[0], atol=1e-4 * np.abs(exact).max())


@pytest.mark.parametrize("sigma", [0.05, 2.0])
def test_energy_bowls_are_the_two_scores_and_the_offset_moves_no_gradient(sigma):
    # The hand-set Gaussian model (as above): ∇ₓA = −(x − m)/(σ² + τ²) = ∇log p_σ, ∇ₓB = −x/(σ² + ρ²) =
    # ∇log q_σ, A − B = T. The offset c(σ) (energy_bias) adds a constant to A and T and changes neither
    # gradient. Tolerances as in the test above (float32 on values up to ~1e3).
    dim, tau, rho = 3, 0.3, 1.5
    m = np.array([1.0, -0.5, 0.25], np.float32)
    model = gaussian_energy_difference(sigma, m, tau, rho, energy_bias=True, via_skip=True)
    bowls = models.energy_bowls(model)
    assert {id(w) for w in bowls.trainable_weights} == {id(w) for w in model.trainable_weights}
    x = tf.constant(RNG.normal(size=(32, dim)).astype(np.float32) * 2.0)
    sigmas = tf.fill([32, 1], sigma)

    def values_and_gradients():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ab = bowls([x, sigmas])
            a, b = tf.reduce_sum(ab[:, 0]), tf.reduce_sum(ab[:, 1])
        return ab.numpy(), tape.gradient(a, x).numpy(), tape.gradient(b, x).numpy()

    ab, grad_a, grad_b = values_and_gradients()
    score_p = -(x.numpy() - m) / (sigma**2 + tau**2)
    score_q = -x.numpy() / (sigma**2 + rho**2)
    np.testing.assert_allclose(grad_a, score_p, rtol=1e-4, atol=1e-4 * np.abs(score_p).max())
    np.testing.assert_allclose(grad_b, score_q, rtol=1e-4, atol=1e-4 * np.abs(score_q).max())
    np.testing.assert_allclose(ab[:, 0] - ab[:, 1], model([x, sigmas]).numpy()[:, 0], rtol=1e-6, atol=1e-5)
    offset = model.get_layer("energy_bias")
    offset.set_weights([np.zeros_like(offset.get_weights()[0]), np.array([0.7], np.float32)])
    shifted, shifted_a, shifted_b = values_and_gradients()
    np.testing.assert_allclose(shifted[:, 0] - ab[:, 0], 0.7, rtol=1e-5, atol=1e-4 * np.abs(ab).max())
    np.testing.assert_array_equal(shifted[:, 1], ab[:, 1])
    np.testing.assert_allclose(shifted_a, grad_a, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(shifted_b, grad_b)


def test_energy_bowls_and_bias_checks(tmp_path):
    with pytest.raises(ValueError, match="EnergyDifference"):
        models.energy_bowls(models.mlp_discriminator((2,), hidden=(8,)))
    with pytest.raises(ValueError, match="energy_bias"):
        models.mlp_discriminator((2,), hidden=(8,), parametrisation="preconditioned", energy_bias=True)
    # The offset is off by default; a model with it round-trips through a .keras file.
    assert "energy_bias" not in {layer.name for layer in models.mlp_discriminator(
        (2,), hidden=(8,), parametrisation="energy_difference").layers}
    model = models.mlp_discriminator((2,), hidden=(8,), parametrisation="energy_difference", energy_bias=True)
    offset = model.get_layer("energy_bias")
    offset.set_weights([w + 0.3 for w in offset.get_weights()])
    path = str(tmp_path / "d.keras")
    model.save(path)
    inputs = _inputs(model)
    np.testing.assert_array_equal(keras.saving.load_model(path)(inputs).numpy(), model(inputs).numpy())
    layer = models.EnergyDifference(components=3, bowls=True)
    assert models.EnergyDifference.from_config(layer.get_config()).bowls


def test_residual_skip_layer_against_numpy_and_the_builder_switch(tmp_path):
    # Δ_{p,k} = c_p·u − r_{p,k}, Δ_{q,k} = c_q·u − r_{q,k}, by hand.
    batch, dim, components = 4, 3, 2
    u = RNG.normal(size=(batch, dim)).astype(np.float32)
    r = RNG.normal(size=(batch, 2 * components * dim)).astype(np.float32)
    gains = RNG.normal(size=(batch, 2)).astype(np.float32)
    out = models.ResidualSkip(components=components)([u, r, gains]).numpy().reshape(batch, 2, components, dim)
    expected = gains[:, :, None, None] * u[:, None, None, :] - r.reshape(batch, 2, components, dim)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert models.ResidualSkip.from_config(models.ResidualSkip(components=3).get_config()).components == 3
    # On by default (gains start at ½ for both sides), off with energy_skip=False; it round-trips.
    model = models.mlp_discriminator((2,), hidden=(8,), parametrisation="energy_difference")
    kernel, bias = model.get_layer("skip_gain").get_weights()
    np.testing.assert_array_equal(kernel, 0.0)
    np.testing.assert_array_equal(bias, [0.5, 0.5])
    names = {layer.name for layer in models.mlp_discriminator(
        (2,), hidden=(8,), parametrisation="energy_difference", energy_skip=False).layers}
    assert "skip_gain" not in names and "residual_skip" not in names
    path = str(tmp_path / "skip.keras")
    model.save(path)
    inputs = _inputs(model)
    np.testing.assert_array_equal(keras.saving.load_model(path)(inputs).numpy(), model(inputs).numpy())


def test_preconditioned_gradient_carries_c_in():
    # T = w·(c_in(σ) x) + b with no hidden layer (σ-embedding weights zero): ∇ₓT = c_in(σ)·w exactly.
    model = models.mlp_discriminator((2,), hidden=(), parametrisation="preconditioned", sigma_data=0.5)
    kernel = np.zeros(model.get_layer("output").get_weights()[0].shape, np.float32)
    kernel[:2, 0] = [0.7, -1.2]
    _set_dense(model, "output", kernel, [0.3])
    x = RNG.normal(size=(8, 2)).astype(np.float32)
    for sigma in (0.05, 1.0):
        v = estimators.DiscriminatorScoreDifference(model, loss="logistic")(x, sigma).numpy()
        np.testing.assert_allclose(v, np.tile([0.7, -1.2], (8, 1)) / math.sqrt(sigma**2 + 0.25), rtol=1e-6)


@pytest.mark.parametrize("parametrisation", models.PARAMETRISATIONS)
def test_parametrisations_round_trip_and_follow_the_contract(parametrisation, tmp_path):
    model = models.mlp_discriminator((2,), hidden=(8,), parametrisation=parametrisation, fourier_features=4)
    inputs = _inputs(model)
    path = str(tmp_path / "d.keras")
    model.save(path)
    clone = keras.saving.load_model(path)
    np.testing.assert_array_equal(clone(inputs).numpy(), model(inputs).numpy())
    v = estimators.DiscriminatorScoreDifference(model, loss="logistic")(inputs[0], 0.3).numpy()
    assert v.shape == inputs[0].shape and np.all(np.isfinite(v))


def test_parametrisation_defaults_and_checks():
    # The builder's default stays the plain MLP (better generators in SDGAN training, docs/losses.md).
    plain = {layer.name for layer in models.mlp_discriminator((2,), hidden=(8,)).layers}
    assert "input_scaling" not in plain and "residuals" not in plain
    layers = {layer.name: layer for layer in models.mlp_discriminator(
        (2,), hidden=(8,), parametrisation=models.SD_PARAMETRISATION).layers}
    assert isinstance(layers["output"], models.EnergyDifference)
    assert isinstance(layers["input_scaling"], models.InputScaling)
    assert layers["output"].components == 8
    # Unconditioned discriminators keep the plain form.
    unconditioned = models.mlp_discriminator((2,), hidden=(8,), sigma_conditioned=False)
    assert len(unconditioned.inputs) == 1
    with pytest.raises(ValueError, match="parametrisation"):
        models.mlp_discriminator((2,), parametrisation="edm")
    with pytest.raises(ValueError, match="sigma_data"):
        models.mlp_discriminator((2,), sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma_conditioned"):
        models.mlp_discriminator((2,), sigma_conditioned=False, parametrisation="preconditioned")


def test_energy_difference_layer_against_numpy():
    # T = LSE_k(−½‖e^g Δ_{p,k}‖²) − LSE_k(−½‖e^g Δ_{q,k}‖²), against a NumPy log-sum-exp (float32, 1e-5).
    batch, dim, components = 5, 3, 4
    u = RNG.normal(size=(batch, dim)).astype(np.float32)
    residuals = RNG.normal(size=(batch, 2 * components * dim)).astype(np.float32)
    gain = RNG.normal(size=(batch, 1)).astype(np.float32) * 0.3
    layer = models.EnergyDifference(components=components)
    scaled = (residuals * np.exp(gain)).reshape(batch, 2, components, dim).astype(np.float64)
    energies = -0.5 * np.sum(scaled**2, axis=-1)                             # [batch, 2, K]
    top = energies.max(axis=-1, keepdims=True)
    log_densities = (top + np.log(np.sum(np.exp(energies - top), axis=-1, keepdims=True)))[..., 0]
    expected = log_densities[:, 0] - log_densities[:, 1]
    np.testing.assert_allclose(layer([u, residuals, gain]).numpy()[:, 0], expected, rtol=1e-5, atol=1e-5)
    # Without a gain input g = 0; one component is the plain energy difference.
    single = models.EnergyDifference(components=1)([u, residuals[:, :2 * dim]]).numpy()[:, 0]
    np.testing.assert_allclose(single, 0.5 * np.sum(residuals[:, dim:2 * dim] ** 2, 1)
                               - 0.5 * np.sum(residuals[:, :dim] ** 2, 1), rtol=1e-5, atol=1e-5)
    assert models.EnergyDifference.from_config(layer.get_config()).components == components
