"""Reliability (issue 8): bad input at every public entry point, divergence, resuming, reproducibility.

- ``BAD_CALLS``: one table of bad inputs over the library's public API. Every row must raise the given
  error *before any work is done*, with a message that names the argument and says what was found.
- ``BAD_COMMAND_LINES``: the same for the CLI (one line on stderr, status 2, no traceback).
- Property-based tests (hypothesis, derandomised so CI runs are repeatable) on schedules, input checks
  and the shapes flows keep.
- Divergence: the error names the step and σ; ``on_divergence="backoff"`` recovers; nothing non-finite
  is ever returned.
- Resuming: an SDGAN ``fit`` interrupted after an epoch's backup resumes from it (in-process, fast), and
  survives a corrupt latest backup; a ``kill -9``-ed training process resumes (subprocess, slow); an
  interrupted ``convert(backup_dir=...)`` resumes (slow).
- Reproducibility: same seed, same machine, same samples bit for bit.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gan2flow
from gan2flow import adapters, cli, conversion, flows, models
from gan2flow import sigmas as schedules

tfd = tfp.distributions
# Derandomised: the same examples every run (a CI failure reproduces locally); budgets keep each
# property test around a second on 2 CPU cores.
QUICK = settings(max_examples=60, deadline=None, derandomize=True)
TRACED = settings(max_examples=6, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------------
# Small models and files shared by the tables (built once)


def _pull(x, sigma):
    """A per-sample estimator of any shape: v = −x (the SD of N(0, I) against a wider Gaussian)."""
    return -x


def _constant_discriminator():
    x = keras.Input((2,))
    return keras.Model(x, keras.layers.Lambda(lambda t: 0.0 * t[:, :1])(x))


def _two_output_discriminator():
    x = keras.Input((2,))
    return keras.Model(x, [keras.layers.Dense(1)(x), keras.layers.Dense(1)(x)])


def _three_input_discriminator():
    inputs = [keras.Input((2,)), keras.Input((1,)), keras.Input((1,))]
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()(inputs)))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
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


def _one_nan(array):
    array = np.array(array, np.float32)
    array.flat[3] = np.nan
    return array


def _convert(k, **overrides):
    arguments = dict(generator=k["generator"], discriminator=None, real_data=k["real"], steps=1, verbose=0,
                     hidden=(8,), fourier_features=0)
    arguments.update(overrides)
    return gan2flow.convert(**arguments)


# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    # flows: gan2flow.flow / trajectory -----------------------------------------------------------
    ("flow-x-nan", lambda k: gan2flow.flow(_one_nan(k["x"]), _pull, k["sigmas"]), ValueError,
     r"`x` must be finite, found 1 NaN/Inf value\(s\) in shape \(8, 2\)"),
    ("flow-x-inf", lambda k: gan2flow.flow(k["x"] * np.inf, _pull, k["sigmas"]), ValueError, r"`x` must be finite"),
    ("flow-x-rank-1", lambda k: gan2flow.flow(k["x"][0], _pull, k["sigmas"]), ValueError,
     r"`x` must have rank >= 2.*got shape \(2,\)"),
    ("flow-x-strings", lambda k: gan2flow.flow(np.array([["a", "b"]]), _pull, k["sigmas"]), ValueError,
     r"`x` must be a numeric array, got dtype <U1"),
    ("flow-x-complex", lambda k: gan2flow.flow(k["x"] + 1j, _pull, k["sigmas"]), ValueError,
     r"`x` must be real-valued"),
    ("flow-x-none", lambda k: gan2flow.flow(None, _pull, k["sigmas"]), ValueError, r"`x` must be an array.*None"),
    ("trajectory-x-nan", lambda k: gan2flow.trajectory(k["x"] * np.nan, _pull, k["sigmas"]), ValueError,
     r"`x` must be finite"),
    ("flow-sigma-zero", lambda k: gan2flow.flow(k["x"], _pull, [1.0, 0.0]), ValueError,
     r"`sigmas` must be > 0.*sigmas\[1\] = 0"),
    ("flow-sigma-negative", lambda k: gan2flow.flow(k["x"], _pull, [-1.0]), ValueError, r"`sigmas` must be > 0"),
    ("flow-sigma-increasing", lambda k: gan2flow.flow(k["x"], _pull, [0.5, 1.0]), ValueError,
     r"`sigmas` must be non-increasing.*sigmas\[0\] = 0.5 then sigmas\[1\] = 1"),
    ("flow-sigma-nan", lambda k: gan2flow.flow(k["x"], _pull, [1.0, np.nan]), ValueError, r"`sigmas` must be finite"),
    ("flow-sigma-2d", lambda k: gan2flow.flow(k["x"], _pull, [[1.0, 0.5]]), ValueError, r"`sigmas` must have rank 1"),
    ("flow-step-scale-zero", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], step_scale=0), ValueError,
     r"`step_scale` must be a positive finite number, got 0"),
    ("flow-step-sizes-length", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], step_sizes=[0.1]), ValueError,
     r"`step_sizes` must have one entry per sigma level \(4\), got 1"),
    ("flow-step-sizes-negative", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], step_sizes=[0.1, -1, 0.1, 0.1]),
     ValueError, r"`step_sizes` must be >= 0"),
    ("flow-method", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], method="rk4"), ValueError,
     r"`method` must be one of \['euler', 'heun'\], got 'rk4'"),
    ("flow-on-divergence", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], on_divergence="ignore"), ValueError,
     r"`on_divergence` must be one of"),
    ("flow-steps-per-sigma", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], steps_per_sigma=0), ValueError,
     r"`steps_per_sigma` must be an integer >= 1, got 0"),
    ("flow-steps-per-sigma-float", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], steps_per_sigma=1.5),
     ValueError, r"`steps_per_sigma` must be an integer, got 1.5"),
    ("flow-noise-scale", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], noise_scale=-1), ValueError,
     r"`noise_scale` must be a non-negative finite number, got -1"),
    ("flow-seed", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], seed="zero"), ValueError,
     r"`seed` must be an integer or None, got 'zero'"),
    ("flow-batch-size", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], batch_size=0), ValueError,
     r"`batch_size` must be an integer >= 1, got 0"),
    ("flow-divergence-bound-nan", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], divergence_bound=np.nan),
     ValueError, r"`divergence_bound` must be a positive finite number, got nan"),
    ("flow-divergence-bound-text", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], divergence_bound="big"),
     ValueError, r"`divergence_bound` must be a positive number, got 'big'"),
    ("flow-callback", lambda k: gan2flow.flow(k["x"], _pull, k["sigmas"], callback="print"), ValueError,
     r"`callback` must be callable"),
    ("flow-estimator-not-callable", lambda k: gan2flow.flow(k["x"], "kernel", k["sigmas"]), ValueError,
     r"`estimator` must be a callable \(x, sigma\) -> v, got str"),
    ("flow-estimator-column", lambda k: gan2flow.flow(k["x"], lambda x, s: x[:, :1], k["sigmas"]), ValueError,
     r"`estimator` must return v shaped like x: got shape \(8, 1\) for x of shape \(8, 2\)"),
    ("flow-estimator-float64", lambda k: gan2flow.flow(k["x"], lambda x, s: tf.cast(x, tf.float64), k["sigmas"]),
     ValueError, r"`estimator` must return float32 .*float64"),
    ("flow-estimator-list", lambda k: gan2flow.flow(k["x"], lambda x, s: [x, x], k["sigmas"]), ValueError,
     r"`estimator` must return one tensor v shaped like x, got a list of 2"),
    ("flow-estimator-none", lambda k: gan2flow.flow(k["x"], lambda x, s: None, k["sigmas"]), ValueError,
     r"`estimator` must return one tensor v shaped like x, got None"),
    ("flow-kernel-other-shape", lambda k: gan2flow.flow(np.zeros((3, 3), np.float32), k["kernel"], k["sigmas"]),
     ValueError, r"`x` must be a batch of samples of shape \(2,\).*got shape \(3, 3\)"),
    # schedules ------------------------------------------------------------------------------------
    ("geometric-min-above-max", lambda k: schedules.geometric(0.1, 1.0, 5), ValueError,
     r"`sigma_min` must be <= `sigma_max`, got sigma_min=1.0 > sigma_max=0.1"),
    ("geometric-n-zero", lambda k: schedules.geometric(1.0, 0.1, 0), ValueError, r"`n` must be an integer >= 1, got 0"),
    ("geometric-n-one", lambda k: schedules.geometric(1.0, 0.1, 1), ValueError, r"`n` must be >= 2"),
    ("geometric-max-inf", lambda k: schedules.geometric(np.inf, 0.1, 5), ValueError,
     r"`sigma_max` must be a positive finite number, got inf"),
    ("geometric-min-nan", lambda k: schedules.geometric(1.0, np.nan, 5), ValueError, r"`sigma_min` must be a positive"),
    ("geometric-min-zero", lambda k: schedules.geometric(1.0, 0.0, 5), ValueError,
     r"`sigma_min` must be a positive finite number, got 0"),
    ("geometric-min-below-float32", lambda k: schedules.geometric(1.0, 1e-50, 5), ValueError,
     r"`sigma_min` and `sigma_max` must be positive and finite in float32.*1e-50"),
    ("geometric-n-text", lambda k: schedules.geometric(1.0, 0.1, "10"), ValueError, r"`n` must be an integer, got '10'"),
    ("karras-rho", lambda k: schedules.karras(1.0, 0.1, 5, rho=0), ValueError, r"`rho` must be a positive"),
    ("constant-sigma", lambda k: schedules.constant(-1.0, 3), ValueError, r"`sigma` must be a positive"),
    ("validate-name", lambda k: schedules.validate([1.0, 2.0], "my_schedule"), ValueError,
     r"`my_schedule` must be non-increasing"),
    ("validate-strict", lambda k: schedules.validate([1.0, 1.0], allow_equal=False), ValueError,
     r"`sigmas` must be strictly decreasing"),
    ("diffusion-sigma-final", lambda k: schedules.diffusion_step_sizes([1.0, 0.5], sigma_final=0.7), ValueError,
     r"`sigma_final` must be <= the last level 0.5, got 0.7"),
    # estimators -----------------------------------------------------------------------------------
    ("kernel-target-nan", lambda k: gan2flow.KernelScoreDifference(np.full((4, 2), np.nan)), ValueError,
     r"`target` must be finite, found 8 NaN/Inf"),
    ("kernel-target-empty", lambda k: gan2flow.KernelScoreDifference(np.zeros((0, 2))), ValueError,
     r"`target` must hold at least one sample, got shape \(0, 2\)"),
    ("kernel-target-rank-1", lambda k: gan2flow.KernelScoreDifference(np.zeros(5)), ValueError,
     r"`target` must have rank >= 2"),
    ("kernel-source-shape", lambda k: gan2flow.KernelScoreDifference(k["x"], source=np.zeros((4, 3))), ValueError,
     r"`target` and `source` must have the same shape after the batch axis, got \(8, 2\) and \(4, 3\)"),
    ("kernel-block-size", lambda k: gan2flow.KernelScoreDifference(k["x"], block_size=0), ValueError,
     r"`block_size` must be an integer >= 1, got 0"),
    ("kernel-assign-other-shape", lambda k: gan2flow.KernelScoreDifference(k["x"]).assign_target(k["x"][:4]),
     ValueError, r"`target` must keep the shape \(8, 2\).*got \(4, 2\)"),
    ("discriminator-not-callable", lambda k: gan2flow.DiscriminatorScoreDifference("D.keras"), ValueError,
     r"`discriminator` must be a Keras model or callable, got str"),
    ("discriminator-linkless-loss", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"], loss="hinge"),
     ValueError, r"`loss`='hinge' has no link"),
    ("discriminator-unknown-loss", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"], loss="bce"),
     ValueError, r"`loss` must be one of \[.*'logistic'.*\], got 'bce'"),
    ("discriminator-said-conditioned", lambda k: gan2flow.DiscriminatorScoreDifference(
        k["plain"], sigma_conditioned=True), ValueError,
     r"`sigma_conditioned`=True contradicts the discriminator, which takes x only \(1 input\)"),
    ("discriminator-said-unconditioned", lambda k: gan2flow.DiscriminatorScoreDifference(
        k["conditioned"], sigma_conditioned=False), ValueError,
     r"`sigma_conditioned`=False contradicts the discriminator, which takes \[x, sigma\] \(2 inputs\)"),
    ("discriminator-three-inputs", lambda k: gan2flow.DiscriminatorScoreDifference(_three_input_discriminator()),
     ValueError, r"`discriminator` must take x or \[x, sigma\], got a model with 3 inputs"),
    ("discriminator-no-inputs", lambda k: gan2flow.DiscriminatorScoreDifference(lambda x, training=False: x),
     ValueError, r"`sigma_conditioned` must be given"),
    ("discriminator-two-outputs", lambda k: gan2flow.DiscriminatorScoreDifference(_two_output_discriminator())(
        k["x"], 0.5), ValueError, r"`discriminator` must return a single output .*got 2 outputs"),
    ("discriminator-wide-output", lambda k: gan2flow.DiscriminatorScoreDifference(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))(k["x"], 0.5), ValueError,
     r"`discriminator` must return one raw output per sample, shape \[batch, 1\] or \[batch\]; got shape \(8, 3\)"),
    ("discriminator-zero-gradient", lambda k: gan2flow.DiscriminatorScoreDifference(_constant_discriminator())(
        k["x"], 0.5), ValueError, r"`discriminator` output does not depend on its input x: its gradient is exactly "
     r"zero at all 8 samples"),
    ("discriminator-zero-gradient-in-flow", lambda k: gan2flow.flow(
        k["x"], gan2flow.DiscriminatorScoreDifference(_constant_discriminator()), k["sigmas"]), ValueError,
     r"`discriminator` output does not depend on its input x"),
    ("discriminator-no-gradient-path", lambda k: gan2flow.DiscriminatorScoreDifference(
        lambda x, training=False: tf.ones([tf.shape(x)[0], 1]), sigma_conditioned=False)(k["x"], 0.5), ValueError,
     r"`discriminator` output does not depend on its input x \(no gradient path\)"),
    ("discriminator-x-shape", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"])(
        np.zeros((4, 3), np.float32), 0.5), ValueError,
     r"`x` must be a batch of samples of shape \(2,\) for this discriminator, got shape \(4, 3\)"),
    ("analytic-x-shape", lambda k: gan2flow.AnalyticScoreDifference(k["gaussian"], None)(np.zeros((4, 3)), 0.5),
     ValueError, r"`x` must have shape \[batch, 2\], got \(4, 3\)"),
    ("analytic-distribution", lambda k: gan2flow.AnalyticScoreDifference(tfd.Laplace(0.0, 1.0), None), ValueError,
     r"`target` must be a Gaussian or Gaussian mixture"),
    ("sum-empty", lambda k: gan2flow.ScoreDifferenceSum(), ValueError, r"`estimators` must name at least one"),
    ("sum-not-callable", lambda k: gan2flow.ScoreDifferenceSum(_pull, 3), ValueError, r"`estimators\[1\]` must be callable"),
    ("denoiser-none", lambda k: gan2flow.DenoiserScoreDifference(None), ValueError, r"`target_denoiser` must be a callable"),
    # training: SDGAN ------------------------------------------------------------------------------
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
    ("sdgan-fit-nan", lambda k: k["gan"].fit(_one_nan(k["real"]), epochs=1, verbose=0), ValueError,
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
    # conversion: convert, load, load_keras_model -------------------------------------------------
    ("convert-generator-kind", lambda k: _convert(k, generator=3), ValueError,
     r"`generator` must be a keras.Model or a path to a .keras file, got int"),
    ("convert-generator-missing", lambda k: _convert(k, generator=k["files"]["missing.keras"]), FileNotFoundError,
     r"`generator`: no file at .*missing.keras"),
    ("convert-generator-corrupt", lambda k: _convert(k, generator=k["files"]["corrupt.keras"]), ValueError,
     r"`generator`: .*corrupt.keras' is not a readable .keras model file"),
    ("convert-generator-h5", lambda k: _convert(k, generator=k["files"]["model.h5"]), ValueError,
     r"`generator` must be a .keras model file, got .*model.h5"),
    ("convert-generator-folder", lambda k: _convert(k, generator=k["files"]["folder.keras"]), ValueError,
     r"`generator`: .*folder.keras' is not a readable .keras model file"),
    ("convert-generator-nan", lambda k: _convert(k, generator=k["nan_generator"]), ValueError,
     r"`generator` returned NaN/Inf samples"),
    ("convert-generator-shape", lambda k: _convert(k, real_data=np.zeros((64, 3), np.float32)), ValueError,
     r"`generator` output shape \(2,\) does not match the samples of `real_data` \(3,\)"),
    ("convert-data-nan", lambda k: _convert(k, real_data=k["real"] * np.nan), ValueError,
     r"`real_data` must be finite, found 128 NaN/Inf"),
    ("convert-data-tiny", lambda k: _convert(k, real_data=k["real"][:5]), ValueError,
     r"`real_data` must hold at least 20 samples .*got 5"),
    ("convert-data-empty", lambda k: _convert(k, real_data=k["real"][:0]), ValueError,
     r"`real_data` must hold at least 20 samples .*got 0"),
    ("convert-data-rank-1", lambda k: _convert(k, real_data=k["real"][:, 0]), ValueError,
     r"`real_data` must have rank >= 2"),
    ("convert-data-missing", lambda k: _convert(k, real_data=k["files"]["missing.npy"]), FileNotFoundError,
     r"`real_data`: no file at .*missing.npy"),
    ("convert-data-corrupt", lambda k: _convert(k, real_data=k["files"]["corrupt.npy"]), ValueError,
     r"`real_data`: .*corrupt.npy' is not a readable .npy array"),
    ("convert-discriminator-two-outputs", lambda k: _convert(k, discriminator=_two_output_discriminator()),
     ValueError, r"`discriminator` must return a single output .*got 2 outputs"),
    ("convert-discriminator-shape", lambda k: _convert(k, discriminator=models.mlp_discriminator(
        (3,), hidden=(8,), sigma_conditioned=False)), ValueError,
     r"`discriminator` could not be called on samples of shape \(2,\)"),
    ("convert-sigma-range-inf", lambda k: _convert(k, sigma_range=(0.1, np.inf)), ValueError,
     r"`sigma_range` must be \(sigma_min, sigma_max\) with 0 < sigma_min <= sigma_max < inf, got \(0.1, inf\)"),
    ("convert-sigma-range-scalar", lambda k: _convert(k, sigma_range=0.5), ValueError,
     r"`sigma_range` must be a pair \(sigma_min, sigma_max\), got 0.5"),
    ("convert-learning-rate", lambda k: _convert(k, learning_rate=-1e-3), ValueError,
     r"`learning_rate` must be a positive finite number, got -0.001"),
    ("convert-validation-fraction", lambda k: _convert(k, validation_fraction=1.0), ValueError,
     r"`validation_fraction` must be in \(0, 1\), got 1.0"),
    ("convert-steps", lambda k: _convert(k, steps=0), ValueError, r"`steps` must be an integer >= 1, got 0"),
    ("convert-loss", lambda k: _convert(k, loss="bce"), ValueError, r"`loss` must be one of .*got 'bce'"),
    ("convert-backup-other-settings", lambda k: _convert(k, backup_dir=k["files"]["backup"]), ValueError,
     r"`backup_dir`: .*backup' holds an interrupted calibration with other settings \(.*steps"),
    ("load-missing", lambda k: gan2flow.load(k["files"]["missing.keras"]), FileNotFoundError,
     r"`path`: no file at .*missing.keras"),
    ("load-corrupt", lambda k: gan2flow.load(k["files"]["corrupt.keras"]), ValueError,
     r"`path`: .* is not a readable .keras model file"),
    ("load-wrong-kind", lambda k: gan2flow.load(k["files"]["generator.keras"]), ValueError,
     r"`path`: .*generator.keras' holds a Functional, not a gan2flow GANFlow"),
    ("load-h5", lambda k: gan2flow.load(k["files"]["model.h5"]), ValueError, r"`path` must be a .keras model file"),
    ("load-model-kind", lambda k: adapters.load_model(["G.keras"], "generator"), ValueError,
     r"`generator` must be a keras.Model or a path to a .keras file, got list"),
    # conversion: GANFlow ---------------------------------------------------------------------------
    ("ganflow-sample-n", lambda k: k["flow"].sample(0, seed=0), ValueError, r"`n` must be an integer >= 1, got 0"),
    ("ganflow-sample-seed", lambda k: k["flow"].sample(4, seed=-1), ValueError, r"`seed` must be an integer >= 0, got -1"),
    ("ganflow-sample-space", lambda k: k["flow"].sample(4, seed=0, space="pixel"), ValueError,
     r"`space` must be one of \['data', 'latent'\], got 'pixel'"),
    ("ganflow-refine-shape", lambda k: k["flow"].refine(np.zeros((4, 3), np.float32)), ValueError,
     r"`x` must have shape \[batch, 2\], got \(4, 3\)"),
    ("ganflow-refine-nan", lambda k: k["flow"].refine(k["x"] * np.nan), ValueError, r"`x` must be finite"),
    ("ganflow-refine-schedule", lambda k: k["flow"].refine(k["x"], sigmas=[0.1, 1.0]), ValueError,
     r"`sigmas` must be non-increasing"),
    ("ganflow-refine-noise-none", lambda k: k["flow"].refine(k["x"], noise_scale=None), ValueError, r"`noise_scale`"),
    ("ganflow-refine-noise-text", lambda k: k["flow"].refine(k["x"], noise_scale="0.5"), ValueError, r"`noise_scale`"),
    ("ganflow-refine-seed", lambda k: k["flow"].refine(k["x"], noise_scale=0.1, seed=1.5), ValueError,
     r"`seed` must be an integer or None, got 1.5"),
    ("ganflow-refine-method", lambda k: k["flow"].refine(k["x"], method="rk4"), ValueError,
     r"`method` must be one of \['euler', 'heun'\], got 'rk4'"),
    ("ganflow-refine-latent-shape", lambda k: k["flow"].refine_latent(np.zeros((4, 2), np.float32)), ValueError,
     r"`z` must have shape \[batch, 4\], got \(4, 2\)"),
    ("ganflow-generate-shape", lambda k: k["flow"].generate(np.zeros((4, 5), np.float32)), ValueError,
     r"`z` must have shape \[batch, 4\], got \(4, 5\)"),
    ("ganflow-log-ratio-sigma", lambda k: k["flow"].log_ratio(k["x"], sigma=0.0), ValueError,
     r"`sigma` must be a positive finite number, got 0"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in BAD_CALLS], ids=[row[0] for row in BAD_CALLS])
def test_bad_input_is_rejected_with_a_message_naming_it(kit, call, error, message):
    with pytest.raises(error, match=message):
        call(kit)


def test_bad_calls_table_has_unique_ids():
    ids = [row[0] for row in BAD_CALLS]
    assert len(ids) == len(set(ids))


def test_a_rejected_backup_folder_is_left_untouched(kit):
    folder = kit["files"]["backup"]
    with pytest.raises(ValueError, match="backup_dir"):
        _convert(kit, backup_dir=folder)
    assert sorted(os.listdir(folder)) == ["latest.weights.h5", "settings.json"]
    with open(os.path.join(folder, "settings.json")) as handle:
        assert json.load(handle) == {"steps": 123456}


# --------------------------------------------------------------------------------------------------
# Command line: one line on stderr, status 2, no traceback (test_cli.py covers the flag checks)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = {name.replace(".", "_"): str(root / name) for name in
             ("points.npy", "nan.npy", "empty.npy", "generator.keras", "discriminator3.keras", "folder.keras",
              "points.keras")}
    rng = np.random.default_rng(0)
    np.save(paths["points_npy"], rng.normal(size=(64, 2)).astype(np.float32))
    np.save(paths["nan_npy"], np.full((64, 2), np.nan, np.float32))
    np.save(paths["empty_npy"], np.zeros((0, 2), np.float32))
    models.mlp_generator(4, (2,), hidden=(8,)).save(paths["generator_keras"])
    models.mlp_discriminator((3,), hidden=(8,), sigma_conditioned=False).save(paths["discriminator3_keras"])
    os.makedirs(paths["folder_keras"])
    with open(paths["points_keras"], "wb") as handle:          # an .npy array under a .keras name
        np.save(handle, np.zeros((4, 2), np.float32))
    paths["out"] = str(root / "out")
    paths["stale"] = str(root / "stale")
    os.makedirs(os.path.join(paths["stale"], "backup"))
    with open(os.path.join(paths["stale"], "backup", "settings.json"), "w") as handle:
        json.dump({"steps": 1}, handle)
    with open(os.path.join(paths["stale"], "backup", "latest.weights.h5"), "wb") as handle:
        handle.write(b"\x89HDF")
    return paths


BAD_COMMAND_LINES = [
    # (argv with {placeholders} for cli_files, the flag the one-line message must name)
    ("train --data {nan_npy} --out {out}", "--data"),
    ("train --data {empty_npy} --out {out}", "--data"),
    ("train --toy grid25 --batch-size 0 --out {out}", "--batch-size"),
    ("train --toy grid25 --learning-rate -1 --out {out}", "--learning-rate"),
    ("train --toy grid25 --d-learning-rate 0 --out {out}", "--d-learning-rate"),
    ("train --toy grid25 --seed -1 --out {out}", "--seed"),
    ("convert --generator {generator_keras} --data {nan_npy} --out {out}", "--data"),
    ("convert --generator {generator_keras} --data {empty_npy} --out {out}", "--data"),
    ("convert --generator {points_npy} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {points_keras} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {folder_keras} --data {points_npy} --out {out}", "--generator"),
    ("convert --generator {generator_keras} --discriminator {discriminator3_keras} --data {points_npy} --out {out}",
     "--discriminator"),
    ("convert --generator {generator_keras} --data {points_npy} --sigma-min 0 --out {out}", "--sigma-min"),
    ("convert --generator {generator_keras} --data {points_npy} --learning-rate 0 --out {out}", "--learning-rate"),
    ("convert --generator {generator_keras} --data {points_npy} --steps 1 --out {stale}", "--out"),
    ("refine --flow {folder_keras} --n 4 --out {out}/x.npy", "--flow"),
    ("refine --flow {points_keras} --n 4 --out {out}/x.npy", "--flow"),
    ("refine --flow {generator_keras} --n 4 --seed -2 --out {out}/x.npy", "--seed"),
]


@pytest.mark.parametrize("argv, flag", BAD_COMMAND_LINES, ids=[argv for argv, _ in BAD_COMMAND_LINES])
def test_command_line_errors_are_one_line_naming_the_flag(cli_files, argv, flag, capsys):
    status = cli.main([word.format(**cli_files) for word in argv.split()])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("gan2flow: error: "), err
    assert f"`{flag}`" in lines[0], lines[0]
    assert "Traceback" not in err
    assert not os.path.exists(cli_files["out"]), "a rejected command must not write outputs"


def test_traceback_flag_shows_the_original_error(cli_files):
    with pytest.raises(ValueError, match="NaN"):
        cli.main(["--traceback", "convert", "--generator", cli_files["generator_keras"], "--data", cli_files["nan_npy"]])


def test_unexpected_errors_are_one_line_with_status_1(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("disk controller on fire\nsecond line")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), broken))
    status = cli.main(["demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert err[0] == ("gan2flow: error: RuntimeError: disk controller on fire (rerun with --traceback for "
                      "details)")


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        for subparser in action.choices.values():
            subparser.set_defaults(handler=handler)
    return parser


def test_errors_raised_while_tracing_show_their_own_line():
    # TensorFlow prefixes errors raised inside traced code with "in user code:" and the stack.
    traced = ValueError("in user code:\n\n    File \"a.py\", line 3, in f\n\n    ValueError: `x` is bad\n")
    assert cli._one_line(traced) == "ValueError: `x` is bad"
    assert cli._one_line(ValueError("first\nsecond")) == "first"
    assert cli._one_line(ValueError("")) == "ValueError"


# --------------------------------------------------------------------------------------------------
# Property-based: schedules, input checks, shapes

finite_positive = st.floats(min_value=2.0**-100, max_value=2.0**100, width=32)
any_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@QUICK
@given(st.one_of(st.lists(any_float32, max_size=10),
                 st.lists(finite_positive, max_size=10).map(lambda v: sorted(v, reverse=True)),
                 st.lists(st.sampled_from([2.0, 1.0, 0.5, 0.0, -1.0]), max_size=6)))
def test_validate_accepts_exactly_the_nonincreasing_positive_finite_sequences(values):
    acceptable = all(np.isfinite(v) and v > 0 for v in values) and all(a >= b for a, b in zip(values, values[1:]))
    if acceptable:
        np.testing.assert_array_equal(schedules.validate(values).numpy(), np.float32(values).reshape(-1))
    else:
        with pytest.raises(ValueError, match="`sigmas` must be"):
            schedules.validate(values)


@QUICK
@given(st.lists(finite_positive, min_size=1, max_size=10).map(lambda v: sorted(v, reverse=True)))
def test_strict_validation_rejects_exactly_the_repeated_levels(values):
    if len(set(values)) == len(values):
        schedules.validate(values, allow_equal=False)
    else:
        with pytest.raises(ValueError, match="strictly decreasing"):
            schedules.validate(values, allow_equal=False)


@QUICK
@given(sigma_max=st.floats(1e-3, 1e3), ratio=st.floats(1.0, 1e4), n=st.integers(2, 200),
       kind=st.sampled_from(["geometric", "linear", "karras"]))
def test_schedules_are_positive_nonincreasing_with_exact_ends(sigma_max, ratio, n, kind):
    sigma_min = sigma_max / ratio
    values = getattr(schedules, kind)(sigma_max, sigma_min, n).numpy()
    assert values.shape == (n,) and values.dtype == np.float32
    assert np.all(values > 0) and np.all(np.diff(values) <= 0)
    schedules.validate(values)  # every schedule is a valid flow schedule
    # geometric/linear set their ends exactly; karras computes (a^(1/ρ))^ρ in float64: within 1 ulp.
    ulps = 0 if kind != "karras" else 1
    assert abs(values[0] - np.float32(sigma_max)) <= ulps * np.spacing(np.float32(sigma_max))
    assert abs(values[-1] - np.float32(sigma_min)) <= ulps * np.spacing(np.float32(sigma_min))
    if kind == "geometric" and ratio ** (1.0 / (n - 1)) > 1 + 1e-5:
        # consecutive levels differ by > 1e-5 relative, far above float32 rounding (6e-8): strictly decreasing
        assert np.all(np.diff(values) < 0)


@QUICK
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4), elements=any_float32))
def test_sample_sets_are_accepted_exactly_when_finite_nonempty_batches(array):
    good = array.ndim >= 2 and array.size > 0 and np.all(np.isfinite(array))
    if good:
        estimator = gan2flow.KernelScoreDifference(array)
        assert estimator.event_shape == array.shape[1:]
    else:
        with pytest.raises(ValueError, match="`target` must"):
            gan2flow.KernelScoreDifference(array)


@TRACED
@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3), levels=st.integers(0, 5),
       steps_per_sigma=st.integers(1, 2), batch_size=st.one_of(st.none(), st.integers(1, 3)))
def test_flow_keeps_shape_and_chunking_changes_nothing(shape, levels, steps_per_sigma, batch_size):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sigmas = schedules.geometric(1.0, 0.1, levels) if levels >= 2 else schedules.constant(1.0, levels) \
        if levels else tf.zeros([0])
    out = gan2flow.flow(x, _pull, sigmas, steps_per_sigma=steps_per_sigma, batch_size=batch_size, jit_compile=False)
    assert out.shape == x.shape and out.dtype == tf.float32 and np.all(np.isfinite(out))
    if levels == 0:
        np.testing.assert_array_equal(out, x)  # the empty schedule is the identity
    if batch_size is not None:
        whole = gan2flow.flow(x, _pull, sigmas, steps_per_sigma=steps_per_sigma, jit_compile=False)
        np.testing.assert_array_equal(out, whole)  # per-sample estimator: chunks give the same bits


# --------------------------------------------------------------------------------------------------
# Divergence: stop with the step and σ, or back off; never return non-finite samples


def _explodes_below(threshold):
    def estimator(x, sigma):
        return -x + tf.cast(sigma < threshold, tf.float32) * 1e30 * x
    return estimator


@pytest.mark.parametrize("steps_per_sigma, callback", [(1, None), (2, None), (1, lambda info: None)])
def test_divergence_names_the_step_and_sigma(kit, steps_per_sigma, callback):
    # geometric(1, 0.1, 5) = [1, 0.562, 0.316, 0.178, 0.1]: the first level below 0.25 is level 3.
    sigmas = schedules.geometric(1.0, 0.1, 5)
    with pytest.raises(gan2flow.FlowDivergenceError, match=r"flow diverged at step \d+ \(level 3, sigma=0.177") as info:
        gan2flow.flow(kit["x"], _explodes_below(0.25), sigmas, steps_per_sigma=steps_per_sigma, callback=callback)
    error = info.value
    assert (error.level, error.step) == (3, 3 * steps_per_sigma)
    assert error.sigma == pytest.approx(float(sigmas[3]))
    assert "on_divergence='backoff'" in str(error)


def test_backoff_halves_the_step_until_stable_and_returns_finite_samples(kit):
    # v = −100 x / σ²: an Euler step multiplies x by (1 − 100 ε) = −49 at ε = 0.5, which explodes; five
    # halvings (ε = 1/64: factor −0.56) make it contract, within the default 8 allowed.
    def stiff(x, sigma):
        return -100.0 * x / tf.square(sigma)

    sigmas = schedules.geometric(1.0, 0.1, 6)
    with pytest.raises(gan2flow.FlowDivergenceError):
        gan2flow.flow(kit["x"], stiff, sigmas, steps_per_sigma=4)
    out = gan2flow.flow(kit["x"], stiff, sigmas, steps_per_sigma=4, on_divergence="backoff")
    bound = 1e3 * (1 + np.max(np.abs(kit["x"])) + 10 * 1.0)  # flow's default divergence bound
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= bound


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_velocities_never_reach_the_caller(kit, poison):
    def poisoned(x, sigma):
        return x * poison

    for on_divergence in ("raise", "backoff"):
        with pytest.raises(gan2flow.FlowDivergenceError, match="non-finite or exploding"):
            gan2flow.flow(kit["x"], poisoned, kit["sigmas"], on_divergence=on_divergence, max_backoffs=2)
        with pytest.raises(gan2flow.FlowDivergenceError):
            gan2flow.trajectory(kit["x"], poisoned, kit["sigmas"], on_divergence=on_divergence, max_backoffs=2)


# --------------------------------------------------------------------------------------------------
# Reproducibility: same seed, same machine, same bits


def _same_bits(a, b):
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_noisy_flows_repeat_bit_for_bit_with_a_seed(kit):
    sigmas = schedules.geometric(1.0, 0.1, 5)
    runs = [gan2flow.flow(kit["x"], kit["kernel"], sigmas, noise_scale=1.0, seed=seed) for seed in (7, 7, 8)]
    assert _same_bits(runs[0], runs[1]) and not _same_bits(runs[0], runs[2])
    # The noise is keyed by sample index, so chunks of a per-sample flow draw the same noise. Same bits
    # need the same batch_size too: the vectorised and scalar tails of log/cos/sqrt kernels can differ by an
    # ulp between chunk shapes (measured: 1 ulp on a few entries), hence the float32 tolerance here.
    whole, chunked = (gan2flow.flow(kit["x"], _pull, sigmas, noise_scale=1.0, seed=7, batch_size=size,
                                    jit_compile=False) for size in (None, 3))
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    path = [gan2flow.trajectory(kit["x"], _pull, sigmas, noise_scale=1.0, seed=3, jit_compile=False)
            for _ in range(2)]
    assert _same_bits(*path) and _same_bits(path[0][-1], gan2flow.flow(
        kit["x"], _pull, sigmas, noise_scale=1.0, seed=3, jit_compile=False))


def test_progress_bar_segments_draw_the_noise_of_one_flow(kit):
    """verbose=True runs the schedule in segments; they keep the global step index of the noise, so the
    result is the uninterrupted flow's, bit for bit (same chunk shapes), with and without a trajectory."""
    sigmas = schedules.geometric(1.0, 0.1, 7)
    options = dict(noise_scale=1.0, seed=5, steps_per_sigma=2)
    whole = gan2flow.flow(kit["x"], _pull, sigmas, jit_compile=False, **options)
    plan = flows.make_plan(kit["x"], _pull, sigmas, **options)
    for record in (False, True):
        segmented, path = flows.run(plan, kit["x"], segments=3, progress="flow", record=record, jit_compile=False)[:2]
        assert _same_bits(segmented, whole)
    assert _same_bits(path, gan2flow.trajectory(kit["x"], _pull, sigmas, jit_compile=False, **options))
    # A piece that starts later in the schedule draws that later noise: levels 0-2, then levels 3-6 (whose
    # plan starts at global step 6) is the whole flow again.
    first = flows.run(plan.levels(0, 3), kit["x"], jit_compile=False).x
    assert plan.levels(3).step_offset == 6
    rest = flows.run(plan.levels(3), first, jit_compile=False).x
    assert _same_bits(rest, whole)
    # A callback sees every step once, numbered from the start of the whole flow, through the segments.
    seen = []
    with_callback = flows.run(plan, kit["x"], segments=3, progress="flow", callback=seen.append,
                              jit_compile=False).x
    assert [d["step"] for d in seen] == list(range(14))
    assert [d["level"] for d in seen] == list(np.repeat(np.arange(7), 2))
    np.testing.assert_allclose([d["sigma"] for d in seen], np.repeat(sigmas.numpy(), 2))
    np.testing.assert_allclose(with_callback, whole, rtol=1e-6, atol=1e-6)


def test_ganflow_refine_noise_does_not_depend_on_chunks_or_progress_bar(kit):
    flow = kit["flow"]
    x = flow.generate(flow.latents(12, seed=2))
    options = dict(levels=5, steps_per_sigma=1, noise_scale=0.5, seed=9, drift_correction=False)
    whole = flow.refine(x, **options)
    chunked = flow.refine(x, batch_size=5, verbose=True, **options)
    # Same noise per sample and step; only float32 round-off of other batch shapes may differ.
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    # With the drift correction the chunks couple differently, but every row still gets its own noise:
    # no two chunks repeat each other's draws (the old per-chunk row numbering did, on identical rows).
    same = tf.repeat(x[:1], 10, axis=0)
    out = flow.refine(same, levels=4, noise_scale=0.5, seed=1, batch_size=5, drift_min_sigma=0.0).numpy()
    assert len(np.unique(out.round(6), axis=0)) == 10


@pytest.mark.parametrize("space", ["data", "latent"])
def test_ganflow_samples_repeat_bit_for_bit_with_a_seed(kit, space):
    flow = kit["flow"]
    # drift_min_sigma=0: every level drift-corrected, one compiled program for the test instead of two
    options = dict(space=space, levels=4, steps_per_sigma=1, **({"drift_min_sigma": 0.0} if space == "data" else {}))
    first, again, other = (flow.sample(16, seed=seed, **options) for seed in (11, 11, 12))
    assert _same_bits(first, again) and not _same_bits(first, other)
    assert np.all(np.isfinite(first))
    assert _same_bits(kit["gan"].generate(8, seed=4), kit["gan"].generate(8, seed=4))


# --------------------------------------------------------------------------------------------------
# Atomic outputs


def test_ganflow_save_is_atomic(kit, tmp_path, monkeypatch):
    path = str(tmp_path / "flow.keras")
    kit["flow"].save(path)
    assert os.listdir(tmp_path) == ["flow.keras"]  # no temporary left behind
    expected = kit["flow"].sample(8, seed=0, refine=False)
    assert _same_bits(gan2flow.load(path).sample(8, seed=0, refine=False), expected)

    def dies_half_way(self, filepath, *args, **kwargs):  # a crash (or kill) in the middle of writing
        with open(filepath, "wb") as handle:
            handle.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        kit["flow"].save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["flow.keras"]
    assert _same_bits(gan2flow.load(path).sample(8, seed=0, refine=False), expected)  # the old file is intact


# --------------------------------------------------------------------------------------------------
# Resuming interrupted training


class _Interrupted(Exception):
    """Stands in for a kill: raised at the start of an epoch, after the previous epoch's backup."""


class _Recorder(keras.callbacks.Callback):
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
            raise _Interrupted
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch] = [w.copy() for w in self.model.get_weights()]


def _small_gan(seed):
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

    first = _Recorder(stop_at=2)
    with pytest.raises(_Interrupted):
        fit(_small_gan(0), first, backup_dir)
    assert first.epochs == [0, 1]
    with open(os.path.join(backup_dir, "training_metadata.json")) as handle:
        assert json.load(handle)["epoch"] == 2

    # A copy whose latest backup was cut short (a kill while writing it): the previous one is used.
    shutil.copytree(backup_dir, corrupted_dir)
    with open(os.path.join(corrupted_dir, "latest.weights.h5"), "r+b") as handle:
        handle.truncate(100)

    # Resume with another initial seed: the weights must come from the backup.
    resumed_gan, resumed = _small_gan(1), _Recorder()
    history = fit(resumed_gan, resumed, backup_dir)
    assert resumed.epochs == [2, 3], "the resumed run must continue at the first unfinished epoch"
    assert len(history.history["d_loss"]) == 2
    for restored, saved in zip(resumed.at_start, first.after_epoch[1]):
        np.testing.assert_array_equal(restored, saved)
    assert resumed.iterations_at_start == 2 * 2  # the optimizer state came back too
    assert int(resumed_gan.d_optimizer.iterations.numpy()) == 4 * 2
    assert not os.path.exists(backup_dir), "a finished run removes its backup"

    fallback = _Recorder()
    fit(_small_gan(2), fallback, corrupted_dir)
    assert fallback.epochs == [1, 2, 3], "one epoch lost, not the run"
    for restored, saved in zip(fallback.at_start, first.after_epoch[0]):
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


@pytest.mark.slow
def test_interrupted_conversion_resumes_from_its_backup(kit, tmp_path):
    backup_dir = str(tmp_path / "calibration-backup")
    options = dict(steps=201, batch_size=32, backup_dir=backup_dir, jit_compile=False)  # 2 epochs of 200 steps
    first = _Recorder(stop_at=1)
    with pytest.raises(_Interrupted):
        _convert(kit, callbacks=[first], **options)
    assert first.epochs == [0] and os.path.exists(os.path.join(backup_dir, "latest.weights.h5"))
    resumed = _Recorder()
    flow = _convert(kit, callbacks=[resumed], **options)
    assert resumed.epochs == [1] and resumed.iterations_at_start == 200
    for restored, saved in zip(resumed.at_start, first.after_epoch[0]):
        np.testing.assert_array_equal(restored, saved)
    assert np.all(np.isfinite(flow.log_ratio(kit["real"])))
    assert not os.path.exists(backup_dir), "a finished conversion removes its backup"


def test_conversion_with_a_backup_folder_cleans_up_only_its_files(kit, tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "notes.txt").write_text("mine")
    (backup_dir / "settings.json").write_text('{"steps": 5}')  # settings but no backup: nothing to resume
    flow = _convert(kit, steps=2, backup_dir=str(backup_dir), jit_compile=False)
    assert isinstance(flow, gan2flow.GANFlow)
    assert os.listdir(backup_dir) == ["notes.txt"]
