"""Tests for gan2flow.training.SDGAN.

Analytic where possible: a linear discriminator T(x, σ) = w·x + aσ has ∇ₓT = w everywhere, so the
SD flow, the generator updates and the penalties have closed forms; a generator with a zero kernel
outputs a known constant, so a noise-free (σ = 0) discriminator loss can be computed by hand. float32
comparisons use rtol=1e-5 / atol=1e-6 (a handful of float32 operations on O(1) values, unit roundoff
6e-8) unless a test states otherwise.

Reliability at the end: bad input to SDGAN and its ``fit``, and resuming interrupted training.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import gan2flow
from gan2flow import estimators, models, training

from _helpers import Interrupted, Recorder, bad_call_tests, gaussian_energy_difference, one_nan

tfd = tfp.distributions
RTOL, ATOL = 1e-5, 1e-6


def _real(n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal([1.5, -1.0], [0.5, 1.2], size=(n, 2)).astype(np.float32)


def _small_gan(objective="logit", *, loss="logistic", seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    generator = models.mlp_generator(4, (2,), hidden=(16,))
    discriminator = models.mlp_discriminator((2,), hidden=(16, 16))
    gan = training.SDGAN(generator, discriminator, loss=loss, generator_objective=objective, seed=seed,
                         **kwargs)
    gan.compile(keras.optimizers.Adam(1e-3), None if objective is None else keras.optimizers.Adam(1e-3))
    return gan


def _linear_discriminator(w, a=0.0, bias=0.0):
    """T([x, σ]) = w·x + aσ + bias (σ-conditioned, linear)."""
    x = keras.Input((len(w),), name="x")
    sigma = keras.Input((1,), name="sigma")
    dense = keras.layers.Dense(1, name="linear")
    output = dense(keras.layers.Concatenate()([x, sigma]))
    model = keras.Model([x, sigma], output)
    dense.set_weights([np.array(list(w) + [a], np.float32)[:, None], np.array([bias], np.float32)])
    return model


class _Shift(keras.layers.Layer):
    """z -> z + offset: its offset gradient is the batch mean of the output gradient, whatever z is."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="offset")

    def call(self, z):
        return z + self.offset


def _shift_generator(dim=2):
    z = keras.Input((dim,))
    return keras.Model(z, _Shift()(z))


def _constant_generator(value, latent_dim=3):
    """G(z) = value for every z (zero kernel): fakes are known exactly."""
    z = keras.Input((latent_dim,))
    dense = keras.layers.Dense(len(value))
    model = keras.Model(z, dense(z))
    dense.set_weights([np.zeros((latent_dim, len(value)), np.float32), np.asarray(value, np.float32)])
    return model


def _softplus(v):
    return np.logaddexp(0.0, v)


# ------------------------------------------------------------------------------------------------
# Every objective trains
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["minimax", "non_saturating", "logit", "flow_regression", None])
def test_objectives_train_and_report_metrics(objective):
    # Two discriminator steps per train step only where the graph is cheapest (keeps the test fast).
    d_steps = 2 if objective is None else 1
    gan = _small_gan(objective, discriminator_steps=d_steps, flow_steps=2)
    history = gan.fit(_real(), batch_size=64, epochs=1, verbose=0).history
    expected = {"d_loss", "d_accuracy"} | ({"g_loss"} if objective else set())
    assert set(history) == expected  # in particular no "loss" key
    for key in expected:
        assert np.isfinite(history[key][0]), key
    assert 0.0 <= history["d_accuracy"][0] <= 1.0
    assert int(gan.d_optimizer.iterations) == 2 * d_steps  # 2 batches x d_steps discriminator steps
    if objective is not None:
        assert int(gan.g_optimizer.iterations) == 2


def test_discriminator_only_freezes_generator_and_trains_discriminator():
    gan = _small_gan(None)
    generator_before = [w.numpy().copy() for w in gan.generator.weights]
    discriminator_before = [w.numpy().copy() for w in gan.discriminator.weights]
    gan.fit(_real(), batch_size=32, epochs=1, verbose=0)
    for before, after in zip(generator_before, gan.generator.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    after = [w.numpy() for w in gan.discriminator.weights]
    assert any(not np.array_equal(b, a) for b, a in zip(discriminator_before, after, strict=True))
    assert gan.g_optimizer is None


def test_train_step_accepts_batch_or_tuple():
    gan = _small_gan(None, seed=1)
    batch = tf.constant(_real(16))
    for data in (batch, (batch,)):
        logs = gan.train_step(data)
        assert set(logs) == {"d_loss", "d_accuracy"}
        assert np.isfinite(float(logs["d_loss"]))


def test_image_gan_with_flow_regression_and_gradient_penalty():
    # Rank-4 samples: σ [batch, 1] must broadcast over (H, W, C) for noise, η and interpolates.
    keras.utils.set_random_seed(0)
    generator = models.conv_generator(4, (8, 8, 1), filters=(4, 4))
    discriminator = models.conv_discriminator((8, 8, 1), filters=(4,), hidden=8)
    gan = training.SDGAN(generator, discriminator, generator_objective="flow_regression", flow_steps=1,
                         penalty="gradient_penalty", seed=0)
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3))
    images = np.random.default_rng(0).uniform(-1, 1, size=(32, 8, 8, 1)).astype(np.float32)
    history = gan.fit(images, batch_size=16, epochs=1, verbose=0).history
    assert set(history) == {"d_loss", "d_accuracy", "penalty", "g_loss"}
    assert all(np.isfinite(v[0]) for v in history.values())
    assert tuple(gan.generate(3, seed=0).shape) == (3, 8, 8, 1)


# ------------------------------------------------------------------------------------------------
# Hand-computed updates with a linear discriminator (∇ₓT = w everywhere)
# ------------------------------------------------------------------------------------------------
W = np.array([0.7, -1.2], np.float32)


@pytest.mark.parametrize("objective, weighting", [("logit", "inverse_step"), ("flow_regression", "uniform"),
                                                  ("flow_regression", "inverse_step")])
def test_generator_step_matches_hand_update(objective, weighting):
    sigma, lr, steps, scale = 0.4, 0.1, 3, 0.5
    gan = training.SDGAN(_shift_generator(), _linear_discriminator(W, a=0.3), generator_objective=objective,
                         sigma_range=(sigma, sigma), flow_steps=steps, flow_step_scale=scale,
                         regression_weighting=weighting, seed=0)
    # The discriminator learning rate is 0: it stays the fixed linear T.
    gan.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(lr))
    history = gan.fit(_real(32), batch_size=32, epochs=1, verbose=0).history
    eta = scale * sigma**2
    if objective == "logit":
        # g_loss = mean −T(G(z)); ∂/∂offset = −w, so SGD adds lr·w.
        expected_offset = lr * W
    elif weighting == "uniform":
        # Targets x' = x + k·η·w; loss = mean ½‖G(z) − x'‖²; ∂/∂offset = −k·η·w.
        expected_offset = lr * steps * eta * W
        np.testing.assert_allclose(history["g_loss"][0], 0.5 * np.sum((steps * eta * W) ** 2), rtol=RTOL)
    else:
        # The same loss divided by k·η: ∂/∂offset = −w, the logit objective's step (the mean SD along the path).
        expected_offset = lr * W
        np.testing.assert_allclose(history["g_loss"][0], 0.5 * steps * eta * np.sum(W**2), rtol=RTOL)
    offset = gan.generator.layers[-1].offset.numpy()
    np.testing.assert_allclose(offset, expected_offset, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gan.discriminator.get_layer("linear").kernel.numpy()[:2, 0], W, atol=0)


def test_flow_targets_follow_linear_field():
    gan = training.SDGAN(_shift_generator(), _linear_discriminator(W), generator_objective="flow_regression",
                         flow_steps=4, flow_step_scale=0.25, seed=0)
    x = _real(6)
    sigma = np.linspace(0.1, 1.0, 6).astype(np.float32)[:, None]
    targets = gan.flow_targets(x, sigma).numpy()
    np.testing.assert_allclose(targets, x + 4 * 0.25 * sigma**2 * W, rtol=RTOL, atol=ATOL)
    # A scalar σ is used for every sample.
    np.testing.assert_allclose(gan.flow_targets(x, 0.5).numpy(), x + 0.25 * W, rtol=RTOL, atol=ATOL)


def test_scaled_r1_penalty_is_sigma_to_the_fourth_times_r1():
    # ‖σ²∇ₓT‖² = σ⁴‖w‖² for the linear discriminator at the fixed σ = 0.5.
    gan = training.SDGAN(_constant_generator([0.0, 0.0]), _linear_discriminator(W), generator_objective=None,
                         penalty="r1_scaled", sigma_range=(0.5, 0.5), seed=0)
    assert gan.penalty_weight == 1.0
    gan.compile(keras.optimizers.SGD(0.0))
    history = gan.fit(_real(64), batch_size=32, epochs=1, verbose=0).history
    np.testing.assert_allclose(history["penalty"][0], 0.5**4 * np.sum(np.square(W)), rtol=RTOL)


@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_denoising_term_of_the_exact_bowls_is_its_closed_form_minimum(sigma):
    # Real N(m, τ² I), fakes G(z) = ρz ~ N(0, ρ² I), σ fixed; the energy difference set by hand to the exact
    # bowls (∇A = ∇log p_σ, ∇B = ∇log q_σ; tests/_helpers.py). Each side's DSM term is then at its minimum
    # τ²/(σ² + τ²) and ρ²/(σ² + ρ²) (losses.denoising_score_matching; the real side up to the finite real
    # sample, itself drawn from N(m, τ² I)). Monte Carlo: each term is a mean of N·d = 4096·3 values v·χ²₁,
    # standard error v·sqrt(2/(N·d)) (1.3 %); 5 SE of the sum. SGD(0) leaves the weights as set.
    tau, rho, dim = 0.3, 1.5, 3
    m = np.array([1.0, -0.5, 0.25], np.float32)
    generator = _constant_generator(np.zeros(dim), latent_dim=dim)
    generator.layers[-1].set_weights([rho * np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32)])
    real = (m + tau * np.random.default_rng(0).normal(size=(4096, dim))).astype(np.float32)
    gan = training.SDGAN(generator, gaussian_energy_difference(sigma, m, tau, rho), generator_objective=None,
                         sigma_range=(sigma, sigma), denoising_weight=1.0, seed=0)
    gan.compile(keras.optimizers.SGD(0.0))
    history = gan.fit(real, batch_size=1024, epochs=1, verbose=0).history
    terms = np.array([tau**2 / (sigma**2 + tau**2), rho**2 / (sigma**2 + rho**2)])
    assert abs(history["denoising"][0] - terms.sum()) < 5 * np.sqrt(np.sum(terms**2)) * np.sqrt(2 / (4096 * dim))
    # Mis-scaled bowls (residuals × 1.5: ∇A and ∇B 2.25× too steep) are far above it.
    residuals = gan.discriminator.get_layer("residuals")
    residuals.set_weights([1.5 * w for w in residuals.get_weights()])
    worse = gan.fit(real, batch_size=1024, epochs=1, verbose=0).history["denoising"][0]
    assert worse > terms.sum() + 0.1


def test_denoising_weight_checks_and_logs():
    # Off by default (no metric, the same draws as before the option existed); needs bowls and noise.
    assert "denoising" not in _small_gan(None).fit(_real(64), batch_size=32, epochs=1, verbose=0).history
    with pytest.raises(ValueError, match="EnergyDifference"):
        _small_gan(None, denoising_weight=1.0)
    energy = models.mlp_discriminator((2,), hidden=(8,), parametrisation="energy_difference")
    with pytest.raises(ValueError, match="denoising_weight"):
        training.SDGAN(_shift_generator(), energy, generator_objective=None, sigma_range=(0.0, 0.0),
                       denoising_weight=1.0)
    with pytest.raises(ValueError, match="denoising_weight"):
        training.SDGAN(_shift_generator(), energy, generator_objective=None, denoising_weight=-1.0)
    # Training with it lowers the term (and keeps the discriminator loss finite).
    keras.utils.set_random_seed(0)
    gan = training.SDGAN(_shift_generator(), energy, generator_objective=None, denoising_weight=1.0, seed=0)
    gan.compile(keras.optimizers.Adam(1e-2))
    history = gan.fit(_real(512), batch_size=128, epochs=8, verbose=0).history
    assert history["denoising"][-1] < history["denoising"][0] and np.isfinite(history["d_loss"][-1])


@pytest.mark.parametrize("penalty", ["r1", "gradient_penalty"])
def test_penalty_values_for_linear_discriminator(penalty):
    # ‖∇ₓT‖ = ‖w‖ everywhere: R1 = ‖w‖², WGAN-GP = (‖w‖ − 1)², whatever the inputs and noise.
    gan = training.SDGAN(_constant_generator([0.0, 0.0]), _linear_discriminator(W), generator_objective=None,
                         penalty=penalty, seed=0)
    gan.compile(keras.optimizers.SGD(0.0))
    history = gan.fit(_real(64), batch_size=32, epochs=1, verbose=0).history
    norm = np.linalg.norm(W)
    expected = norm**2 if penalty == "r1" else (norm - 1.0) ** 2
    np.testing.assert_allclose(history["penalty"][0], expected, rtol=RTOL)


def test_score_difference_and_generate():
    gan = training.SDGAN(_shift_generator(), _linear_discriminator(W), generator_objective=None, seed=0)
    estimator = gan.score_difference()
    assert isinstance(estimator, estimators.DiscriminatorScoreDifference)
    assert estimator.sigma_conditioned
    x = _real(5)
    np.testing.assert_allclose(estimator(x, 0.5).numpy(), np.tile(W, (5, 1)), rtol=RTOL)
    samples = gan.generate(7, seed=3)
    assert tuple(samples.shape) == (7, 2)
    np.testing.assert_array_equal(samples.numpy(), gan.generate(7, seed=3).numpy())
    np.testing.assert_array_equal(samples.numpy(), gan.generate(7, seed=3, batch_size=3).numpy())
    assert tuple(gan(tf.zeros([4, 2])).shape) == (4, 2)
    hinge = training.SDGAN(_shift_generator(), _linear_discriminator(W), loss="hinge",
                           generator_objective=None)
    with pytest.raises(ValueError, match="link"):
        hinge.score_difference()


# ------------------------------------------------------------------------------------------------
# Reported d_loss equals the loss computed by hand
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["logistic", "least_squares", "hinge"])
def test_reported_d_loss_matches_hand_computation_without_noise(loss):
    # sigma_range=(0, 0): no noise and σ = 0 fed to the discriminator; a constant generator: the
    # loss on the batch is fully determined, before the (single) update.
    keras.utils.set_random_seed(0)
    fake_value = np.array([0.5, -0.25], np.float32)
    discriminator = models.mlp_discriminator((2,), hidden=(8,))
    gan = training.SDGAN(_constant_generator(fake_value), discriminator, loss=loss, generator_objective=None,
                         sigma_range=(0.0, 0.0), seed=0)
    gan.compile(keras.optimizers.SGD(0.05))
    real = _real(16)
    zeros = np.zeros((16, 1), np.float32)
    real_out = discriminator([real, zeros]).numpy()[:, 0].astype(np.float64)
    fake_out = discriminator([np.tile(fake_value, (16, 1)), zeros]).numpy()[:, 0].astype(np.float64)
    history = gan.fit(real, batch_size=16, epochs=1, verbose=0).history
    if loss == "logistic":
        expected = np.mean(_softplus(-real_out)) + np.mean(_softplus(fake_out))
        expected_accuracy = (np.sum(real_out > 0) + np.sum(fake_out < 0)) / 32
        np.testing.assert_allclose(history["d_accuracy"][0], expected_accuracy, rtol=RTOL)
    elif loss == "least_squares":
        expected = np.mean((real_out - 1) ** 2) + np.mean(fake_out**2)
    else:
        expected = np.mean(np.maximum(0, 1 - real_out)) + np.mean(np.maximum(0, 1 + fake_out))
    np.testing.assert_allclose(history["d_loss"][0], expected, rtol=RTOL, atol=ATOL)
    if loss == "logistic":
        # evaluate() (test_step) reports the same loss with the updated weights, without updating them.
        weights = [w.numpy().copy() for w in discriminator.weights]
        real_out = discriminator([real, zeros]).numpy()[:, 0].astype(np.float64)
        fake_out = discriminator([np.tile(fake_value, (16, 1)), zeros]).numpy()[:, 0].astype(np.float64)
        logs = gan.evaluate(real, batch_size=16, verbose=0, return_dict=True)
        assert set(logs) == {"d_loss", "d_accuracy"}
        expected = np.mean(_softplus(-real_out)) + np.mean(_softplus(fake_out))
        np.testing.assert_allclose(logs["d_loss"], expected, rtol=RTOL, atol=ATOL)
        for before, after in zip(weights, discriminator.weights, strict=True):
            np.testing.assert_array_equal(before, after.numpy())


def test_reported_d_loss_at_fixed_sigma():
    # sigma_range=(s, s) fixes σ; a discriminator that depends on σ only (zero weight on x) sees
    # T = a·s + c for every noised sample, so d_loss = softplus(−T) + softplus(T) exactly.
    s, a, c = 0.7, 1.3, -0.2
    gan = training.SDGAN(_constant_generator([1.0, 1.0]), _linear_discriminator([0.0, 0.0], a=a, bias=c),
                         generator_objective=None, sigma_range=(s, s), seed=0)
    gan.compile(keras.optimizers.SGD(0.0))
    history = gan.fit(_real(32), batch_size=32, epochs=1, verbose=0).history
    t = a * s + c
    np.testing.assert_allclose(history["d_loss"][0], _softplus(-t) + _softplus(t), rtol=RTOL)


def test_sigmas_are_log_uniform_and_shared_by_pairs():
    gan = training.SDGAN(_shift_generator(), _linear_discriminator(W), generator_objective=None,
                         sigma_range=(0.05, 2.0), seed=0)
    sigma = gan._sigmas(20000).numpy()[:, 0]
    assert sigma.min() >= 0.05 * (1 - 1e-6) and sigma.max() <= 2.0 * (1 + 1e-6)
    # log σ ~ U[log 0.05, log 2]: mean at the midpoint; standard error (range/√12)/√n ≈ 0.008, so
    # 0.04 is 5 SE.
    assert abs(np.log(sigma).mean() - 0.5 * (np.log(0.05) + np.log(2.0))) < 0.04


# ------------------------------------------------------------------------------------------------
# Reproducibility, callbacks, saving
# ------------------------------------------------------------------------------------------------
def test_same_seed_same_training():
    first = _small_gan(None, seed=5)  # z, σ and both noises are all drawn in the discriminator step
    second = _small_gan(None, seed=5)
    for model in ("generator", "discriminator"):
        getattr(second, model).set_weights(getattr(first, model).get_weights())
    for gan in (first, second):
        gan.fit(_real(64), batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    initial = [w.numpy() for w in _small_gan(None, seed=5).discriminator.weights]
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(initial, first.discriminator.weights, strict=True))


def test_callbacks_and_weights_round_trip(tmp_path):
    gan = _small_gan("logit")
    checkpoint = tmp_path / "gan.weights.h5"
    # min_delta larger than any change: d_loss never "improves" after epoch 0, so patience=1 stops
    # after epoch 1 -- which shows that EarlyStopping found the d_loss key.
    # Keras cannot infer the direction of a custom metric: mode="min" is required.
    stopper = keras.callbacks.EarlyStopping(monitor="d_loss", mode="min", min_delta=100.0, patience=1)
    callbacks = [keras.callbacks.ModelCheckpoint(str(checkpoint), save_weights_only=True), stopper]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = gan.fit(_real(64), batch_size=32, epochs=5, verbose=0, callbacks=callbacks,
                          validation_data=_real(32, seed=1))
    # e.g. "Early stopping conditioned on metric `d_loss` which is not available".
    assert not [w for w in caught if "d_loss" in str(w.message)]
    assert len(history.history["d_loss"]) == 2 and stopper.stopped_epoch == 1
    assert set(history.history) == {"d_loss", "d_accuracy", "g_loss", "val_d_loss", "val_d_accuracy"}
    assert all(np.isfinite(history.history["val_d_loss"]))
    assert checkpoint.exists()
    restored = _small_gan("logit", seed=9)
    restored.load_weights(str(checkpoint))
    for model in ("generator", "discriminator"):
        for a, b in zip(getattr(gan, model).weights, getattr(restored, model).weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(NotImplementedError, match="weights"):
        gan.get_config()


def test_tensorboard_callback(tmp_path):
    pytest.importorskip("tensorboard")  # an optional package: the callback needs it to write summaries
    gan = _small_gan(None)
    gan.fit(_real(64), batch_size=32, epochs=2, verbose=0,
            callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))])
    assert any(files for _, _, files in os.walk(tmp_path / "logs"))


@pytest.mark.slow
def test_runs_under_xla():
    # ~12 s on 2 CPU cores, nearly all of it XLA compiling the nested input gradients.
    gan = training.SDGAN(models.mlp_generator(2, (2,), hidden=(8,)),
                         models.mlp_discriminator((2,), hidden=(8,)),
                         generator_objective="flow_regression", flow_steps=1, penalty="r1", seed=0)
    gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), jit_compile=True)
    history = gan.fit(_real(32), batch_size=32, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in history.values())


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def _gan_kwargs(**kwargs):
    return dict(generator=_shift_generator(), discriminator=_linear_discriminator(W), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss="hinge", generator_objective="logit"), "generator_objective"),
        (dict(loss="wasserstein", generator_objective="flow_regression", penalty="gradient_penalty"),
         "generator_objective"),
        (dict(loss="hinge", generator_objective="minimax"), "generator_objective"),
        (dict(generator_objective="bogus"), "generator_objective"),
        (dict(loss="bogus"), "`loss` must be one of"),
        (dict(sigma_range=(0.5, 0.1)), "sigma_range"),
        (dict(sigma_range=(0.0, 1.0)), "sigma_range"),
        (dict(sigma_range=(-1.0, 1.0)), "sigma_range"),
        (dict(sigma_range="wide"), "sigma_range"),
        (dict(generator_objective="flow_regression", sigma_range=(0.0, 0.0)), "generator_objective"),
        (dict(penalty="l2"), "penalty"),
        (dict(penalty="r1", penalty_weight=-1.0), "penalty_weight"),
        (dict(discriminator_steps=0), "discriminator_steps"),
        (dict(flow_steps=0), "flow_steps"),
        (dict(flow_step_scale=0.0), "flow_step_scale"),
        (dict(regression_weighting="sigma"), "regression_weighting"),
        (dict(seed=-3), "seed"),
        (dict(latent_dim=0), "latent_dim"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        training.SDGAN(**_gan_kwargs(**kwargs))


def test_allowed_pairs_for_losses_without_link():
    training.SDGAN(**_gan_kwargs(loss="hinge", generator_objective="non_saturating"))
    training.SDGAN(**_gan_kwargs(loss="wasserstein", generator_objective="minimax",
                                 penalty="gradient_penalty"))
    with pytest.warns(UserWarning, match="penalty"):
        training.SDGAN(**_gan_kwargs(loss="wasserstein", generator_objective="non_saturating"))


def test_compile_checks():
    gan = training.SDGAN(**_gan_kwargs(generator_objective="logit"))
    with pytest.raises(ValueError, match="g_optimizer"):
        gan.compile(keras.optimizers.SGD(0.1))
    optimizer = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="g_optimizer"):
        gan.compile(optimizer, optimizer)
    with pytest.raises(ValueError, match="loss"):
        gan.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1), loss="mse")
    frozen = training.SDGAN(**_gan_kwargs(generator_objective=None))
    with pytest.warns(UserWarning, match="ignored"):
        frozen.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.1))
    assert frozen.g_optimizer is None


def test_undeterminable_conditioning_and_latent_raise():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="sigma_conditioned"):
        training.SDGAN(_shift_generator(), Subclassed(), generator_objective=None)
    gan = training.SDGAN(_shift_generator(), Subclassed(), generator_objective=None, sigma_conditioned=False)
    assert gan.discriminator.built
    with pytest.raises(ValueError, match="latent_dim"):
        training.SDGAN(Subclassed(), _linear_discriminator(W), generator_objective=None)


# ------------------------------------------------------------------------------------------------
# At the optimum: the discriminator's gradient is the score difference
# ------------------------------------------------------------------------------------------------
# q: a frozen affine generator G(z) = A z + b of z ~ N(0, I), i.e. N(b, A Aᵀ); p: N(μ, diag(s²)).
_A = np.array([[0.8, 0.0], [0.3, 0.6]], np.float32)
_B = np.zeros(2, np.float32)
_MU = np.array([1.0, -0.5], np.float32)
_S = np.array([0.6, 0.9], np.float32)


def _sd_agreement(steps, hidden, learning_rate, sigmas, seed=0):
    """(cosine, relative L2 error) in L2(q) of ∇ₓT(x, σ) against the exact v_σ, per σ.

    The discriminator is trained discriminator-only against the frozen affine generator (q) on
    samples of p, with σ log-uniform on [0.2, 1.0].
    """
    keras.utils.set_random_seed(seed)
    z = keras.Input((2,))
    affine = keras.layers.Dense(2)
    generator = keras.Model(z, affine(z))
    affine.set_weights([_A.T, _B])
    p = tfd.MultivariateNormalDiag(_MU, _S)
    q = tfd.MultivariateNormalTriL(_B, _A)
    batch = 256
    real = p.sample(steps * batch, seed=seed + 1).numpy()
    gan = training.SDGAN(generator, models.mlp_discriminator((2,), hidden=hidden), generator_objective=None,
                         sigma_range=(0.2, 1.0), seed=seed)
    gan.compile(keras.optimizers.Adam(learning_rate))
    gan.fit(real, batch_size=batch, epochs=1, verbose=0)
    exact = gan2flow.AnalyticScoreDifference(p, q)
    estimate = gan.score_difference()
    x = gan.generate(2000, seed=seed + 2)  # x ~ q
    results = []
    for sigma in sigmas:
        v, w = estimate(x, sigma).numpy(), exact(x, sigma).numpy()
        cosine = np.sum(v * w) / np.sqrt(np.sum(v * v) * np.sum(w * w))
        relative_error = np.sqrt(np.sum((v - w) ** 2) / np.sum(w * w))
        results.append((float(cosine), float(relative_error)))
    return results


# Why both measures: here the SD is dominated by the constant mean-shift part, so the cosine mostly
# checks direction and sign (a flipped sign gives −1, the target score alone ∇log p_σ gives 0.82);
# the relative error also checks the σ-dependence: the exact fields at σ = 0.3 and 0.6 differ by 40%
# (0.3 vs 1.0: 70%), so a discriminator fed the wrong σ, or mixing the levels, fails it.
# Measured over seeds 0-5 (bounds set with margin for other platforms and seeds):
#   fast (300 steps, 32x32, ~2 s):   cosine 0.990-0.999, relative error 0.08-0.18 at σ = 0.3, 0.6;
#   slow (1500 steps, 64x64, ~7 s):  cosine 0.994-0.999, relative error 0.05-0.15 at σ = 0.3, 0.6, 1.0.
# The remaining error is the estimator's: finite training, and 2000 Monte Carlo points of q.
def test_discriminator_gradient_is_score_difference_fast():
    for cosine, relative_error in _sd_agreement(300, (32, 32), 3e-3, sigmas=(0.3, 0.6)):
        assert cosine > 0.95
        assert relative_error < 0.3


@pytest.mark.slow
def test_discriminator_gradient_is_score_difference():
    for cosine, relative_error in _sd_agreement(1500, (64, 64), 2e-3, sigmas=(0.3, 0.6, 1.0)):
        assert cosine > 0.98
        assert relative_error < 0.2


# ------------------------------------------------------------------------------------------------
# Distribution strategy (a separate process: logical devices must be set before TF starts)
# ------------------------------------------------------------------------------------------------
_STRATEGY_SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from gan2flow import models, training

    real = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            z = keras.Input((3,))
            dense = keras.layers.Dense(2)
            generator = keras.Model(z, dense(z))
            dense.set_weights([np.zeros((3, 2), "float32"), np.array([0.3, -0.2], "float32")])
            gan = training.SDGAN(generator, models.mlp_discriminator((2,), hidden=(16,)),
                                 generator_objective=None, sigma_range=(0.0, 0.0), penalty="r1", seed=0)
            gan.compile(keras.optimizers.SGD(0.1))
        history = gan.fit(real, batch_size=32, epochs=2, verbose=0, shuffle=False).history
        return history, [w.numpy().tolist() for w in gan.discriminator.weights]

    one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print("RESULT" + json.dumps([one, two]))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device():
    # Noise-free (σ = 0) with a constant generator: training is deterministic, so two replicas with a
    # global batch of 32 must report the same means and reach the same weights as one device
    # (up to float32 summation order, ~1e-6).
    result = subprocess.run([sys.executable, "-c", _STRATEGY_SCRIPT], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("RESULT")][-1]
    (history_one, weights_one), (history_two, weights_two) = json.loads(line[len("RESULT"):])
    for key in ("d_loss", "d_accuracy", "penalty"):
        np.testing.assert_allclose(history_two[key], history_one[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(weights_one, weights_two, strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad input to SDGAN.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("sdgan-generator-kind", lambda k: gan2flow.SDGAN("G.keras", k["plain"]), ValueError,
     r"`generator` must be a keras.Model, got str"),
    ("sdgan-shapes-differ", lambda k: gan2flow.SDGAN(models.mlp_generator(4, (3,), hidden=(8,)), k["conditioned"]),
     ValueError, r"`discriminator` takes samples of shape \(2,\), but `generator` makes samples of shape \(3,\)"),
    ("sdgan-said-unconditioned", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], sigma_conditioned=False),
     ValueError, r"`sigma_conditioned`=False contradicts the discriminator"),
    ("sdgan-sigma-range-order", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], sigma_range=(1.0, 0.1)),
     ValueError, r"`sigma_range` must be \(sigma_min, sigma_max\) with 0 < sigma_min <= sigma_max"),
    ("sdgan-sigma-range-nan", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], sigma_range=(np.nan, 1)),
     ValueError, r"`sigma_range` must be"),
    ("sdgan-sigma-range-scalar", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], sigma_range=0.5),
     ValueError, r"`sigma_range` must be a pair \(sigma_min, sigma_max\), got 0.5"),
    ("sdgan-objective", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], generator_objective="wgan"),
     ValueError, r"`generator_objective` must be one of"),
    ("sdgan-latent-dim", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"], latent_dim=0), ValueError,
     r"`latent_dim` must be an integer >= 1, got 0"),
    ("sdgan-fit-nan", lambda k: k["gan"].fit(one_nan(k["real"]), epochs=1, verbose=0), ValueError,
     r"`x` must be finite, found 1 NaN/Inf value\(s\) in shape \(64, 2\)"),
    ("sdgan-fit-shape", lambda k: k["gan"].fit(np.zeros((64, 3), np.float32), epochs=1, verbose=0), ValueError,
     r"`x` must be real samples \[n, 2\] with n >= 1 \(the generator's sample shape\), got shape \(64, 3\)"),
    ("sdgan-fit-empty", lambda k: k["gan"].fit(np.zeros((0, 2), np.float32), epochs=1, verbose=0), ValueError,
     r"`x` must be real samples \[n, 2\] with n >= 1.*got shape \(0, 2\)"),
    ("sdgan-fit-rank-1", lambda k: k["gan"].fit(np.zeros(64, np.float32), epochs=1, verbose=0), ValueError,
     r"`x` must be real samples \[n, 2\].*got shape \(64,\)"),
    ("sdgan-fit-strings", lambda k: k["gan"].fit(np.array([["a", "b"]]), epochs=1, verbose=0), ValueError,
     r"`x` must be an array of numbers, got dtype <U1"),
    ("sdgan-fit-dataset-shape", lambda k: k["gan"].fit(
        tf.data.Dataset.from_tensor_slices(np.zeros((8, 3), np.float32)).batch(4), epochs=1, verbose=0), ValueError,
     r"`x` must yield batches \[batch, 2\].*got elements of shape \(None, 3\)"),
    ("sdgan-fit-dataset-unbatched", lambda k: k["gan"].fit(
        tf.data.Dataset.from_tensor_slices(np.zeros((8, 2), np.float32)), epochs=1, verbose=0), ValueError,
     r"`x` must yield batches \[batch, 2\].*got elements of shape \(2,\)"),
    ("sdgan-generate-n", lambda k: k["gan"].generate(-1), ValueError, r"`n` must be an integer >= 0, got -1"),
    ("sdgan-compile-shared-optimizer", lambda k: gan2flow.SDGAN(k["generator"], k["conditioned"]).compile(
        *(2 * [keras.optimizers.Adam()])), ValueError, r"`g_optimizer` must be a different optimizer object"),
]


test_bad_input_is_rejected_with_a_message_naming_it, test_bad_calls_table_has_unique_ids = bad_call_tests(BAD_CALLS)


# --------------------------------------------------------------------------------------------------
# Resuming interrupted training: an SDGAN ``fit`` interrupted after an epoch's backup resumes from it
# (in-process, fast), and survives a corrupt latest backup; a ``kill -9``-ed training process resumes
# (subprocess, slow).


def _resumable_gan(seed):
    keras.utils.set_random_seed(seed)  # a different seed: different initial weights, unless restored
    gan = gan2flow.SDGAN(models.mlp_generator(4, (2,), hidden=(8,)), models.mlp_discriminator((2,), hidden=(8,)),
                         seed=seed)
    # run_eagerly: the same fit loop and callbacks, without a compile that would dominate this test
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    return gan


def test_interrupted_training_resumes_from_its_last_backup(kit, tmp_path):
    backup_dir, corrupted_dir = str(tmp_path / "backup"), str(tmp_path / "corrupted")
    real = kit["real"][:32]  # 2 steps per epoch of 16

    def fit(gan, recorder, folder):
        backup = keras.callbacks.BackupAndRestore(folder, double_checkpoint=True)
        return gan.fit(real, batch_size=16, epochs=4, verbose=0, shuffle=False, callbacks=[backup, recorder])

    first = Recorder(stop_at=2)
    with pytest.raises(Interrupted):
        fit(_resumable_gan(0), first, backup_dir)
    assert first.epochs == [0, 1]
    with open(os.path.join(backup_dir, "training_metadata.json")) as handle:
        assert json.load(handle)["epoch"] == 2

    # A copy whose latest backup was cut short (a kill while writing it): the previous one is used.
    shutil.copytree(backup_dir, corrupted_dir)
    with open(os.path.join(corrupted_dir, "latest.weights.h5"), "r+b") as handle:
        handle.truncate(100)

    # Resume with another initial seed: the weights must come from the backup.
    resumed_gan, resumed = _resumable_gan(1), Recorder()
    history = fit(resumed_gan, resumed, backup_dir)
    assert resumed.epochs == [2, 3], "the resumed run must continue at the first unfinished epoch"
    assert len(history.history["d_loss"]) == 2
    for restored, saved in zip(resumed.at_start, first.after_epoch[1], strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert resumed.iterations_at_start == 2 * 2  # the optimizer state came back too
    assert int(resumed_gan.d_optimizer.iterations.numpy()) == 4 * 2
    assert not os.path.exists(backup_dir), "a finished run removes its backup"

    fallback = Recorder()
    fit(_resumable_gan(2), fallback, corrupted_dir)
    assert fallback.epochs == [1, 2, 3], "one epoch lost, not the run"
    for restored, saved in zip(fallback.at_start, first.after_epoch[0], strict=True):
        np.testing.assert_array_equal(restored, saved)


_TRAINING_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras, numpy as np
    import gan2flow
    from gan2flow import models

    folder, epochs, init_seed, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    log = open(os.path.join(folder, "log.jsonl"), "a")

    class Log(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.write(event="start", checksum=self.checksum())

        def on_epoch_end(self, epoch, logs=None):  # runs after BackupAndRestore saved this epoch
            self.write(event="epoch", epoch=epoch, checksum=self.checksum(),
                       iterations=int(self.model.d_optimizer.iterations.numpy()))
            time.sleep(pause)  # a window for the parent's kill -9, between two backups

        def checksum(self):
            return float(sum(np.float64(w).sum() for w in self.model.get_weights()))

        def write(self, **entry):
            log.write(json.dumps(dict(entry, pid=os.getpid())) + "\\n")
            log.flush()

    keras.utils.set_random_seed(init_seed)
    gan = gan2flow.SDGAN(models.mlp_generator(4, (2,), hidden=(8,)), models.mlp_discriminator((2,), hidden=(8,)),
                         seed=0)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    real = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    backup = keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"), double_checkpoint=True)
    gan.fit(real, batch_size=16, epochs=epochs, verbose=0, shuffle=False, callbacks=[backup, Log()])
    print("finished")
""")


def _log_entries(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_from_its_last_backup(tmp_path):
    # Two interpreter start-ups with TensorFlow (about 20-40 s each on 2 busy cores): slow.
    script, log = tmp_path / "train.py", tmp_path / "log.jsonl"
    script.write_text(_TRAINING_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    epochs, metadata = 5, tmp_path / "backup" / "training_metadata.json"
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(epochs), "0", "5"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if any(entry.get("epoch", -1) >= 1 for entry in _log_entries(log)):
            break  # epoch 1 is backed up and logged; the run now pauses 5 s before epoch 2
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = json.loads(metadata.read_text())["epoch"]  # epochs completed and backed up

    # The same command again, with another initial seed: the weights must come from the backup.
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path), str(epochs), "1", "0"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0 and "finished" in resumed.stdout, resumed.stderr[-2000:]
    entries = _log_entries(log)
    first, second = ([e for e in entries if e["pid"] == pid] for pid in dict.fromkeys(e["pid"] for e in entries))
    done = [e["epoch"] for e in first if e["event"] == "epoch"]
    again = [e["epoch"] for e in second if e["event"] == "epoch"]
    assert killed_at == max(done) + 1 == 2, (killed_at, done)  # nothing completed was lost
    assert again == list(range(killed_at, epochs)), again
    saved = next(e for e in first if e["event"] == "epoch" and e["epoch"] == killed_at - 1)
    assert second[0]["event"] == "start" and second[0]["checksum"] == saved["checksum"]
    assert second[1]["iterations"] == saved["iterations"] + 64 // 16  # the optimizer's step count continues
    assert not metadata.exists(), "a finished run removes its backup"


@pytest.mark.parametrize("sampling, transform", [
    ("log_ends", lambda t: np.sin(0.5 * np.pi * t) ** 2),
    ("log_small", np.square),
])
def test_sigma_sampling_transforms_the_log_uniform_position(sampling, transform):
    # The same seed draws the same u: with t = log(σ/σ_min)/log(σ_max/σ_min) of the log-uniform draw, the
    # other samplings give t(u) exactly (float32 log/exp round trips: ~1e-6 relative, 1e-5 allowed).
    low, high = 0.05, 2.0
    draws = {}
    for name in ("log_uniform", sampling):
        gan = training.SDGAN(_shift_generator(), _linear_discriminator(W), generator_objective=None,
                             sigma_range=(low, high), sigma_sampling=name, seed=3)
        draws[name] = gan._sigmas(1000).numpy()[:, 0].astype(np.float64)
    t = np.log(draws["log_uniform"] / low) / np.log(high / low)
    expected = np.exp(np.log(low) + transform(t) * np.log(high / low))
    np.testing.assert_allclose(draws[sampling], expected, rtol=1e-5)
    assert draws[sampling].min() >= low * (1 - 1e-6) and draws[sampling].max() <= high * (1 + 1e-6)


def test_bad_sigma_sampling_raises():
    with pytest.raises(ValueError, match="sigma_sampling"):
        training.SDGAN(**_gan_kwargs(sigma_sampling="uniform"))


def test_discriminator_ema_is_the_hand_computed_average_after_two_steps():
    # Adam(use_ema=True, ema_momentum=m) keeps w̄ = w₁ after the first step and m w̄ + (1 − m) w₂ after the
    # second; fit ends by writing w̄ into the discriminator. The raw weights w₁, w₂ are read by a callback
    # after each step (one step per call), before that final write. float32 arithmetic: 1e-6 absolute.
    momentum = 0.7
    generator = _shift_generator()
    generator.trainable = False  # use_ema needs a frozen generator (test below)
    gan = training.SDGAN(generator, models.mlp_discriminator((2,), hidden=(8,)), generator_objective=None,
                         sigma_range=(0.1, 1.0), seed=0)
    gan.compile(keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=momentum), steps_per_execution=1)
    raw = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([v.numpy().copy() for v in gan.discriminator.trainable_variables])

    gan.fit(_real(64), batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[Snapshot()])
    assert len(raw) == 2
    assert any(not np.allclose(a, b) for a, b in zip(raw[0], raw[1], strict=True))  # the weights did move
    for final, first, second in zip(gan.discriminator.trainable_variables, raw[0], raw[1], strict=True):
        np.testing.assert_allclose(final.numpy(), momentum * first + (1 - momentum) * second, atol=1e-6)


def test_ema_needs_a_frozen_generator():
    gan = _small_gan(None)
    with pytest.raises(ValueError, match="use_ema"):
        gan.compile(keras.optimizers.Adam(1e-3, use_ema=True))
    gan = training.SDGAN(**_gan_kwargs(generator_objective="logit"))
    with pytest.raises(ValueError, match="use_ema"):
        gan.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3, use_ema=True))
