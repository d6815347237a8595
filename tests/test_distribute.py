"""tf.distribute: SDGAN training and convert under strategies, sharded flows (gan2flow.distribute).

Multi-device checks run in a subprocess: logical CPU devices must be set before TensorFlow
initialises, and the rest of the suite keeps one device. One script per device count computes every
comparison and prints them as JSON; the tests below read it (one TensorFlow start-up per device count).

Tolerances (float32, unit roundoff 6e-8):
- training: SGD on a few global batches; two replicas sum their gradients in another order than one
  device does, a ~1e-7 relative change per step. Measured max |Δw| 6e-8 (2 and 4 replicas, and two
  workers; 3 steps); asserted atol 1e-6 (weights O(1)). Reported means: measured ≤ 2.3e-8 apart;
  asserted rtol 1e-5.
- flows: each chunk runs the same compiled loop on the same rows; against a flow with the same chunks
  nothing but the device differs (measured 0.0 under XLA). Against the unchunked flow the kernels see
  other batch shapes (summation order, vectorised or scalar paths, ~1e-7 relative per step); asserted
  atol 1e-5 (12 steps on O(1) values). The per-sample check uses a discriminator: the kernel estimator
  at σ = 0.05 scales logits by 1/σ² = 400, which turns such shape-dependent rounding into 5e-5
  (measured), so a kernel flow is compared with the same chunks only.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow
from gan2flow import distribute, estimators, models, training

TRAIN_ATOL = 1e-6
FLOW_ATOL = 1e-5


# ------------------------------------------------------------------------------------------------
# One device, in process
# ------------------------------------------------------------------------------------------------
def test_chunk_bounds_cover_the_rows_in_order():
    assert distribute.chunk_bounds(10, 4) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert distribute.chunk_bounds(10, 4, batch_size=4) == [(0, 4), (4, 8), (8, 10)]
    assert distribute.chunk_bounds(0, 2) == []
    assert distribute.chunk_bounds(3, 8) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="replicas"):
        distribute.chunk_bounds(3, 0)


def _per_sample_kernel(seed=0):
    rng = np.random.default_rng(seed)
    return gan2flow.KernelScoreDifference(rng.normal(size=(64, 2)) + 1.5, source=rng.normal(size=(64, 2)))


def test_flow_under_a_one_device_strategy_equals_flow():
    estimator = _per_sample_kernel()
    x = np.random.default_rng(1).normal(size=(13, 2)).astype(np.float32)
    sigmas = gan2flow.sigmas.geometric(2.0, 0.1, 5)
    # Graph mode (jit_compile=False) keeps this quick; the subprocess tests run the XLA default.
    expected = gan2flow.flow(x, estimator, sigmas, noise_scale=0.4, seed=5, jit_compile=False)
    got = distribute.flow(x, estimator, sigmas, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), batch_size=4,
                          noise_scale=0.4, seed=5, jit_compile=False)
    np.testing.assert_allclose(got, expected, atol=FLOW_ATOL)
    np.testing.assert_array_equal(distribute.flow(x, estimator, [], strategy=tf.distribute.get_strategy()), x)


def test_bad_arguments_raise_value_error():
    estimator = _per_sample_kernel()
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="strategy"):
        distribute.flow(x, estimator, [1.0], strategy="mirrored")
    with pytest.raises(ValueError, match="callback"):
        distribute.flow(x, estimator, [1.0], strategy=tf.distribute.get_strategy(), callback=print)
    with pytest.raises(ValueError, match="batch_size"):
        distribute.flow(x, estimator, [1.0], strategy=tf.distribute.get_strategy(), batch_size=0)
    with pytest.raises(ValueError, match="sigmas"):
        distribute.flow(x, estimator, [1.0, 2.0], strategy=tf.distribute.get_strategy())


def test_divergence_is_reported_like_flow():
    x = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32)
    with pytest.raises(gan2flow.FlowDivergenceError, match="step 0"):
        distribute.flow(x, _per_sample_kernel(), [2.0], strategy=tf.distribute.get_strategy(), step_scale=1e7,
                        jit_compile=False)


def test_drift_correction_of_a_plan_is_the_kernel_estimators_arithmetic():
    # A plan with drift_correction adds the kernel term from the batch's starting samples (held as tensors,
    # so it runs per replica); one Euler step must be exactly what drift_corrected's
    # KernelScoreDifference(initial, source=None) gives.
    rng = np.random.default_rng(3)
    initial = rng.normal(size=(40, 2)).astype(np.float32)
    x = initial + 0.3 * rng.normal(size=(40, 2)).astype(np.float32)
    reference = estimators.KernelScoreDifference(initial, source=None, block_size=16)
    zero = lambda x, sigma: tf.zeros_like(x)  # noqa: E731
    for sigma in (0.1, 1.0):
        plan = gan2flow.flows.make_plan(x, zero, [sigma], step_sizes=[1.0], drift_correction=True,
                                        kernel_block_size=16)
        moved = gan2flow.flows.run_batch(plan, x, reference=tf.constant(initial), jit_compile=False).x
        np.testing.assert_allclose(moved - x, reference(x, sigma), rtol=1e-4, atol=1e-5)


def _gan_flow(seed=0):
    keras.utils.set_random_seed(seed)
    generator = models.mlp_generator(3, (2,), hidden=(8,))
    discriminator = gan2flow.models.calibration_discriminator((2,), hidden=(8,))
    return gan2flow.GANFlow(generator, discriminator, sigma_range=(0.05, 1.0), latent_shape=(3,))


def test_gan_flow_methods_delegate_to_distribute():
    gan_flow = _gan_flow()
    z = gan_flow.latents(4, seed=1)
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="callback"):
        gan_flow.refine(gan_flow.generate(z), strategy=strategy, callback=print, levels=2)
    with pytest.raises(ValueError, match="callback"):
        gan_flow.refine_latent(z, strategy=strategy, callback=print, levels=2)
    with pytest.raises(ValueError, match="strategy"):
        gan_flow.refine(gan_flow.generate(z), strategy="all GPUs", levels=2)


@pytest.mark.slow
def test_refine_under_a_strategy_equals_refine_with_the_same_chunks():
    # ~11 s of CPU: four XLA compilations (drift-corrected and plain loops, on one device and under
    # the strategy). The four-replica test repeats this on four devices.
    gan_flow = _gan_flow()
    x = gan_flow.generate(gan_flow.latents(24, seed=1))
    # drift_min_sigma between levels: both phases run (drift-corrected σ ≥ 0.3, then plain), so the plain
    # phase's noise steps must continue after the corrected ones on both sides.
    options = dict(levels=6, batch_size=8, noise_scale=0.2, seed=3, drift_min_sigma=0.3)
    expected = gan_flow.refine(x, **options)
    got = gan_flow.refine(x, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), **options)
    np.testing.assert_allclose(got, expected, atol=FLOW_ATOL)


def test_replica_invariant_noise_is_a_function_of_the_global_row():
    gan = training.SDGAN(models.mlp_generator(3, (2,), hidden=(8,)), models.mlp_discriminator((2,), hidden=(8,)),
                         generator_objective=None, seed=4, replica_invariant_noise=True)
    whole = gan._normal(tf.constant([10, 2]), offset=0)
    gan._seed_generator.state.assign_sub([0, 1])          # replay the same draw, as another replica would
    tail = gan._normal(tf.constant([4, 2]), offset=6)
    # The same hashes; log/cos may take a vectorised or a scalar path by array size: a few ulp.
    np.testing.assert_allclose(tail, whole[6:], rtol=1e-6, atol=1e-6)
    gan._seed_generator.state.assign_sub([0, 1])
    u = gan._uniform(tf.constant([20000, 1])).numpy()
    assert 0.0 < u.min() and u.max() < 1.0
    # Uniform on (0, 1): mean 1/2 with standard error 0.29/sqrt(20000) = 0.002; 5 standard errors.
    assert abs(u.mean() - 0.5) < 0.01


# ------------------------------------------------------------------------------------------------
# Several logical devices, in a subprocess
# ------------------------------------------------------------------------------------------------
_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np, tensorflow as tf
    replicas = int(sys.argv[1])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras, gan2flow
    from gan2flow import distribute, flows, models, training

    devices = [f"/cpu:{i}" for i in range(replicas)]
    mirrored = tf.distribute.MirroredStrategy(devices)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    out = {}

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))

    # Training: σ random per pair, R1 penalty, generator trained; the last batch is partial and split
    # unevenly (53 = 24 + 24 + 5 rows), so the global batch must be the sum of the local sizes.
    real = np.random.default_rng(0).normal([1.5, -1.0], [0.5, 1.2], size=(53, 2)).astype("float32")

    def train(strategy, objective="logit", penalty="r1"):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            gan = training.SDGAN(models.mlp_generator(3, (2,), hidden=(8,)),
                                 models.mlp_discriminator((2,), hidden=(8,)), generator_objective=objective,
                                 sigma_range=(0.05, 2.0), penalty=penalty, seed=0, replica_invariant_noise=True)
            gan.compile(keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05) if objective else None)
        history = gan.fit(real, batch_size=24, epochs=1, verbose=0, shuffle=False).history
        return history, [w.numpy() for w in gan.generator.weights + gan.discriminator.weights]

    h1, w1 = train(one)
    hr, wr = train(mirrored)
    out["train_weights"] = max_diff(w1, wr)
    out["train_history"] = {k: [h1[k][0], hr[k][0]] for k in h1}

    # Sharded flows with noise. A per-sample estimator (a discriminator; 33 rows in chunks of 5, so the
    # last chunk is short and the last round leaves a replica idle) against the unchunked flow; the kernel
    # flow with the particles as source (coupled within a chunk) against flow with the same chunks.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(33, 2)).astype("float32")
    sigmas = gan2flow.sigmas.geometric(2.0, 0.05, 6)
    with mirrored.scope():
        keras.utils.set_random_seed(3)
        per_sample = gan2flow.DiscriminatorScoreDifference(models.mlp_discriminator((2,), hidden=(16,)))
        coupled = gan2flow.KernelScoreDifference(rng.normal(size=(64, 2)) + 2, source=None)
    kwargs = dict(noise_scale=0.3, seed=3, steps_per_sigma=2)
    a = distribute.flow(x, per_sample, sigmas, strategy=mirrored, batch_size=5, **kwargs)
    out["flow_per_sample"] = max_diff([a], [flows.flow(x, per_sample, sigmas, **kwargs)])
    chunk = -(-33 // replicas)
    kwargs["jit_compile"] = False  # graph mode here, to keep the test quick; the discriminator flow ran XLA
    b = distribute.flow(x, coupled, sigmas, strategy=mirrored, **kwargs)
    out["flow_coupled"] = max_diff([b], [flows.flow(x, coupled, sigmas, batch_size=chunk, **kwargs)])

    # convert() under the strategy: its default jit_compile=True is not requested there (no warning).
    with mirrored.scope():
        keras.utils.set_random_seed(2)
        generator = models.mlp_generator(3, (2,), hidden=(8,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gan_flow = gan2flow.convert(generator, None, real, steps=4, batch_size=16, hidden=(8,), verbose=0,
                                    strategy=mirrored, stages=False)
    out["convert_losses"] = [row["train_loss"] for row in gan_flow.diagnostics["levels"]]
    out["convert_jit_warning"] = any("jit_compile" in str(w.message) for w in caught)
    if "--refine" in sys.argv:
        z = gan_flow.latents(30, seed=1)
        xs = gan_flow.generate(z)
        options = dict(levels=6, batch_size=4, noise_scale=0.2, seed=3)
        out["refine"] = max_diff([gan_flow.refine(xs, strategy=mirrored, **options)], [gan_flow.refine(xs, **options)])
        latent = dict(levels=4, seed=2, batch_size=4)
        out["refine_latent"] = max_diff([gan_flow.refine_latent(z, strategy=mirrored, **latent)],
                                        [gan_flow.refine_latent(z, **latent)])
        # A MultiWorkerMirroredStrategy without TF_CONFIG: one local worker, one replica.
        worker = tf.distribute.MultiWorkerMirroredStrategy()
        hw, ww = train(worker)
        out["multi_worker_local"] = [worker.num_replicas_in_sync, max_diff(w1, ww)]
    print("RESULT" + json.dumps(out))
    """
)


def _run_script(*args, timeout=600):
    result = subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def two_replicas():
    return _run_script(2)


def _check_training(result):
    assert result["train_weights"] < TRAIN_ATOL
    for key, (single, distributed) in result["train_history"].items():
        np.testing.assert_allclose(distributed, single, rtol=1e-5, atol=1e-6, err_msg=key)


def _check_flows(result):
    assert result["flow_per_sample"] < FLOW_ATOL
    assert result["flow_coupled"] < FLOW_ATOL


def _check_convert(result):
    assert not result["convert_jit_warning"]
    losses = np.array(result["convert_losses"])
    # After 4 steps the logistic loss is near chance (2 log 2 = 1.386); finite and not absurd.
    assert np.all(np.isfinite(losses)) and np.all(np.abs(losses - 2 * np.log(2.0)) < 0.5)


def test_two_replicas_train_like_one_device(two_replicas):
    _check_training(two_replicas)


def test_two_replica_sharded_flow_equals_single_device_flow(two_replicas):
    _check_flows(two_replicas)


def test_convert_under_two_replicas(two_replicas):
    _check_convert(two_replicas)


@pytest.mark.slow
def test_four_replicas_training_flows_refine_convert():
    # Four replicas: the last training batch of 5 rows splits 2/2/1/0 (one replica gets no rows) and
    # the flow's last round leaves a replica idle; refine/refine_latent under the strategy equal the one-device methods.
    result = _run_script(4, "--refine")
    _check_training(result)
    _check_flows(result)
    _check_convert(result)
    assert result["refine"] < FLOW_ATOL
    assert result["refine_latent"] < FLOW_ATOL
    replicas, difference = result["multi_worker_local"]
    assert replicas == 1 and difference < TRAIN_ATOL


# ------------------------------------------------------------------------------------------------
# Two workers (MultiWorkerMirroredStrategy over localhost, TF_CONFIG), one CPU replica each
# ------------------------------------------------------------------------------------------------
_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras, gan2flow
    from gan2flow import distribute, flows, models, training

    real = np.random.default_rng(0).normal([1.5, -1.0], [0.5, 1.2], size=(53, 2)).astype("float32")

    def train(scope_strategy):
        with scope_strategy.scope():
            keras.utils.set_random_seed(1)
            gan = training.SDGAN(models.mlp_generator(3, (2,), hidden=(8,)),
                                 models.mlp_discriminator((2,), hidden=(8,)), generator_objective="logit",
                                 sigma_range=(0.05, 2.0), penalty="r1", seed=0, replica_invariant_noise=True)
            gan.compile(keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05))
        history = gan.fit(real, batch_size=24, epochs=1, verbose=0, shuffle=False).history
        return ({k: float(np.ravel(v)[0]) for k, v in history.items()},
                [w.numpy().tolist() for w in gan.generator.weights + gan.discriminator.weights])

    history, weights = train(strategy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 2)).astype("float32")
    with strategy.scope():
        estimator = gan2flow.KernelScoreDifference(rng.normal(size=(64, 2)) + 2, source=rng.normal(size=(64, 2)))
    sharded = distribute.flow(x, estimator, gan2flow.sigmas.geometric(2.0, 0.05, 6), strategy=strategy,
                              batch_size=5, noise_scale=0.3, seed=3)
    print("RESULT" + json.dumps({"replicas": strategy.num_replicas_in_sync, "history": history,
                                 "weights": weights, "flow": sharded.numpy().tolist()}))
    """
)

_SINGLE_SCRIPT = _WORKER_SCRIPT.replace(
    "strategy = tf.distribute.MultiWorkerMirroredStrategy()", "strategy = tf.distribute.OneDeviceStrategy('/cpu:0')")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_and_flow_like_one_device():
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": config}
        workers.append(subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env))
    single = subprocess.run([sys.executable, "-c", _SINGLE_SCRIPT], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-4000:]
        outputs.append(json.loads([r for r in stdout.splitlines() if r.startswith("RESULT")][-1][len("RESULT"):]))
    assert single.returncode == 0, single.stderr[-4000:]
    reference = json.loads([r for r in single.stdout.splitlines() if r.startswith("RESULT")][-1][len("RESULT"):])
    for output in outputs:  # every worker holds the same weights and the whole flow
        assert output["replicas"] == 2
        for a, b in zip(output["weights"], reference["weights"], strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=TRAIN_ATOL)
        for key, value in reference["history"].items():
            np.testing.assert_allclose(output["history"][key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(np.array(output["flow"]), np.array(reference["flow"]), atol=FLOW_ATOL)
