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
