"""Helpers shared by the test modules: the reliability kit (small models and files every module's table of
bad calls uses), hypothesis budgets, and small callables. Imported as ``import _helpers`` (pytest puts tests/
on the path); the ``kit`` fixture itself lives in tests/conftest.py.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow_probability as tfp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import gan2flow
from gan2flow import models
from gan2flow import sigmas as schedules

tfd = tfp.distributions
# Derandomised: the same examples every run (a CI failure reproduces locally); budgets keep each
# property test around a second on 2 CPU cores.
QUICK = settings(max_examples=60, deadline=None, derandomize=True)
TRACED = settings(max_examples=6, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
finite_positive = st.floats(min_value=2.0**-100, max_value=2.0**100, width=32)
any_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


# --------------------------------------------------------------------------------------------------
# Small models and files shared by the tables (built once per session)


def pull(x, sigma):
    """A per-sample estimator of any shape: v = −x (the SD of N(0, I) against a wider Gaussian)."""
    return -x


def constant_discriminator():
    x = keras.Input((2,))
    return keras.Model(x, keras.layers.Lambda(lambda t: 0.0 * t[:, :1])(x))


def two_output_discriminator():
    x = keras.Input((2,))
    return keras.Model(x, [keras.layers.Dense(1)(x), keras.layers.Dense(1)(x)])


def three_input_discriminator():
    inputs = [keras.Input((2,)), keras.Input((1,)), keras.Input((1,))]
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()(inputs)))

def gaussian_energy_difference(sigma, m, tau, rho, energy_bias=False, via_skip=False):
    """``mlp_discriminator(parametrisation="energy_difference")`` set by hand to the exact bowls of two Gaussians.

    p = N(m, τ² I), q = N(0, ρ² I), at the noise level σ: with no hidden layer, σ_data = τ, a zero log-gain,
    u = x/sqrt(σ² + τ²), residuals Δ_p = u − m/sqrt(σ² + τ²) and Δ_q = β u with β = sqrt((σ² + τ²)/(σ² + ρ²)),
    the bowls are A = −‖x − m‖²/(2(σ² + τ²)) (+ log K) and B = −‖x‖²/(2(σ² + ρ²)) (+ log K): log p_σ and
    log q_σ up to constants, so ∇A, ∇B are the exact scores at σ (every mixture component set alike).

    The residuals ``Δ = c·u − r`` (:class:`~gan2flow.models.ResidualSkip`) are set one of two ways: with the
    skip gains c = 0 and ``r = −Δ`` computed from u by the ``residuals`` layer (``via_skip=False``), or with
    c_p = 1, c_q = β and ``r`` the constant centres ``r_p = m/sqrt(σ² + τ²)``, ``r_q = 0`` (``via_skip=True``).
    """
    m = np.asarray(m, np.float32)
    dim = len(m)
    model = models.mlp_discriminator((dim,), hidden=(), parametrisation="energy_difference", sigma_data=tau,
                                     energy_bias=energy_bias)
    gain = model.get_layer("log_gain")
    gain.set_weights([np.zeros_like(w) for w in gain.get_weights()])
    residuals = model.get_layer("residuals")
    in_features, out_features = residuals.get_weights()[0].shape
    components = out_features // (2 * dim)
    scale = np.sqrt(sigma**2 + tau**2)
    beta = np.sqrt((sigma**2 + tau**2) / (sigma**2 + rho**2))
    kernel = np.zeros((in_features, out_features), np.float32)
    bias = np.zeros(out_features, np.float32)
    skip_kernel, _ = model.get_layer("skip_gain").get_weights()
    for k in range(components):
        bias[k * dim:(k + 1) * dim] = m / scale
        if not via_skip:
            kernel[:dim, k * dim:(k + 1) * dim] = -np.eye(dim)
            q = (components + k) * dim
            kernel[:dim, q:q + dim] = -beta * np.eye(dim)
    skip_gains = np.array([1.0, beta] if via_skip else [0.0, 0.0], np.float32)
    model.get_layer("skip_gain").set_weights([np.zeros_like(skip_kernel), skip_gains])
    residuals.set_weights([kernel, bias])
    return model


def one_nan(array):
    array = np.array(array, np.float32)
    array.flat[3] = np.nan
    return array


def small_convert(k, **overrides):
    arguments = dict(generator=k["generator"], discriminator=None, real_data=k["real"], steps=1, verbose=0,
                     hidden=(8,), fourier_features=0, stages=False)
    arguments.update(overrides)
    return gan2flow.convert(**arguments)



def make_kit(root):
    """The small models, arrays and files the reliability tables call into (``root``: an empty folder)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    generator = models.mlp_generator(4, (2,), hidden=(8,))
    conditioned = models.mlp_discriminator((2,), hidden=(8,))
    plain = models.mlp_discriminator((2,), hidden=(8,), sigma_conditioned=False)
    gan = gan2flow.SDGAN(generator, models.mlp_discriminator((2,), hidden=(8,)), seed=0)
    gan.compile(d_optimizer=keras.optimizers.Adam(1e-3), g_optimizer=keras.optimizers.Adam(1e-3))
    nan_generator = models.mlp_generator(4, (2,), hidden=(8,))
    nan_generator.set_weights([w * np.nan for w in nan_generator.get_weights()])
    files = {name: str(root / name) for name in
             ("corrupt.keras", "generator.keras", "model.h5", "folder.keras", "missing.keras", "missing.npy",
              "corrupt.npy", "backup")}
    with open(files["corrupt.keras"], "wb") as handle:
        handle.write(b"PK\x03\x04 not a keras archive")
    generator.save(files["generator.keras"])
    with open(files["model.h5"], "wb") as handle:
        handle.write(b"\x89HDF")
    os.makedirs(files["folder.keras"])
    with open(files["corrupt.npy"], "w") as handle:
        handle.write("1, 2, 3\n")
    os.makedirs(files["backup"])  # an interrupted calibration's backup, made with other settings
    with open(os.path.join(files["backup"], "settings.json"), "w") as handle:
        json.dump({"steps": 123456}, handle)
    with open(os.path.join(files["backup"], "latest.weights.h5"), "wb") as handle:
        handle.write(b"\x89HDF")
    return {
        "x": rng.normal(size=(8, 2)).astype(np.float32),
        "real": rng.normal(size=(64, 2)).astype(np.float32),
        "sigmas": schedules.geometric(1.0, 0.1, 4),
        "kernel": gan2flow.KernelScoreDifference(rng.normal(size=(16, 2)).astype(np.float32)),
        "generator": generator, "conditioned": conditioned, "plain": plain, "gan": gan,
        "nan_generator": nan_generator,
        "flow": gan2flow.GANFlow(generator, conditioned, sigma_range=(0.1, 1.0), latent_shape=(4,)),
        "gaussian": tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0]),
        "files": files,
    }



def same_bits(a, b):
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --------------------------------------------------------------------------------------------------
# Interrupting training


class Interrupted(Exception):
    """Stands in for a kill: raised at the start of an epoch, after the previous epoch's backup."""


class Recorder(keras.callbacks.Callback):
    """Records the epochs run, the weights at the start, and the weights and D-step count after each epoch."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.stop_at = stop_at
        self.epochs, self.after_epoch = [], {}

    def on_train_begin(self, logs=None):
        self.at_start = [w.copy() for w in self.model.get_weights()]
        self.iterations_at_start = int(self.model.d_optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_at:
            raise Interrupted
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch] = [w.copy() for w in self.model.get_weights()]


def bad_call_tests(table):
    """The two tests every module's table of bad calls gets: each row ``(id, call on the kit, error type, regex)``
    raises that error with a message matching the regex (naming the argument and what was found), and the
    ids are unique. Use: ``test_bad_input_..., test_bad_calls_... = bad_call_tests(BAD_CALLS)``."""

    @pytest.mark.parametrize("call, error, message", [row[1:] for row in table], ids=[row[0] for row in table])
    def test_bad_input_is_rejected_with_a_message_naming_it(kit, call, error, message):
        with pytest.raises(error, match=message):
            call(kit)

    def test_bad_calls_table_has_unique_ids():
        ids = [row[0] for row in table]
        assert len(ids) == len(set(ids))

    return test_bad_input_is_rejected_with_a_message_naming_it, test_bad_calls_table_has_unique_ids
