"""Performance contracts that do not depend on timing: no retracing in steady state, bounded kernel blocks,
the blocked kernel equal to the one-block one, and reduced-precision discriminators. Speed itself is
measured in benchmarks/run.py, never asserted here."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow
from gan2flow import estimators, flows


def _discriminator(dtype=None, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(16, activation="swish", dtype=dtype),
        keras.layers.Dense(1, dtype=dtype),
    ])


@pytest.mark.parametrize("jit_compile", [True, False])
def test_steady_state_never_retraces(jit_compile):
    estimator = gan2flow.DiscriminatorScoreDifference(_discriminator(), sigma_conditioned=False)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(2.0, 0.1, 6), jit_compile=jit_compile)
    before = flows.trace_count()
    # New σ values, new step scales, new schedule lengths within the same bucket (≤ 8 levels), new
    # data of the same shape: all reuse the compiled program.
    for index, (sigma_max, length) in enumerate([(3.0, 6), (1.0, 5), (0.7, 8), (2.5, 3), (1.3, 7)]):
        schedule = gan2flow.sigmas.geometric(sigma_max, 0.05, length)
        moved = gan2flow.flow(x + index, estimator, schedule, step_scale=0.2 + 0.1 * index, jit_compile=jit_compile)
        assert moved.shape == x.shape
    assert flows.trace_count() == before


def test_programs_are_cached_per_estimator_and_shape():
    estimator = gan2flow.DiscriminatorScoreDifference(_discriminator(), sigma_conditioned=False)
    rng = np.random.default_rng(1)
    small, large = (rng.normal(size=(n, 3)).astype(np.float32) for n in (16, 48))
    sigmas = gan2flow.sigmas.geometric(1.0, 0.1, 4)
    start = flows.trace_count()
    gan2flow.flow(small, estimator, sigmas)
    gan2flow.flow(large, estimator, sigmas)
    assert flows.trace_count() == start + 2  # one program per input shape
    gan2flow.flow(large, estimator, sigmas * 0.5)
    gan2flow.flow(small, estimator, sigmas * 2.0)
    assert flows.trace_count() == start + 2
    # Streaming in chunks: one program per chunk shape (full chunks and the remainder), then none.
    x = rng.normal(size=(100, 3)).astype(np.float32)
    gan2flow.flow(x, estimator, sigmas, batch_size=48)  # chunks of 48, 48 (cached above) and 4
    assert flows.trace_count() == start + 3
    gan2flow.flow(x, estimator, sigmas * 0.7, batch_size=48)
    assert flows.trace_count() == start + 3


def test_kernel_flow_does_not_retrace():
    target = np.random.default_rng(2).normal(size=(200, 2)).astype(np.float32)
    estimator = gan2flow.KernelScoreDifference(target)
    x = np.random.default_rng(3).normal(size=(50, 2)).astype(np.float32)
    gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(1.0, 0.1, 5))
    before = flows.trace_count()
    for sigma_max in (2.0, 0.5, 1.5):
        gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(sigma_max, 0.1, 5))
    assert flows.trace_count() == before


@pytest.mark.parametrize("n_queries, n_samples, expected", [
    (16384, 16384, 256),   # 2²² / 16384: 16 MiB of float32 logits per block
    (100_000, 1_000, 4096),
    (10, 16384, 10),        # never more than the queries
    (5_000, 10**7, 16),     # at least 16 rows
    (None, 4096, 1024),     # unknown N: bounded by M alone
])
def test_auto_block_size_bounds_the_block(n_queries, n_samples, expected):
    block = estimators.auto_block_size(n_queries, n_samples)
    assert block == expected
    assert block * n_samples <= max(1 << 22, 16 * n_samples)


@pytest.mark.parametrize("block_size", ["auto", 1, 7, 64, None])
def test_kernel_denoise_blocks_agree_with_numpy(block_size, rng):
    x = rng.normal(size=(77, 5)).astype(np.float32)
    samples = rng.normal(size=(120, 5)).astype(np.float32) + 0.3
    sigma = 0.6
    # NumPy in float64: softmax over −‖x − y‖²/2σ².
    squared = ((x[:, None, :].astype(np.float64) - samples[None]) ** 2).sum(-1)
    logits = -squared / (2 * sigma**2)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    expected = (weights / weights.sum(1, keepdims=True)) @ samples
    got = estimators.kernel_denoise(tf.constant(x), tf.constant(samples), sigma, block_size=block_size)
    # float32 logits of size ~10 and a 120-term weighted mean: ~1e-5 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    compiled = tf.function(lambda a, b: estimators.kernel_denoise(a, b, sigma, block_size=block_size), jit_compile=True)
    np.testing.assert_allclose(compiled(tf.constant(x), tf.constant(samples)), expected, rtol=1e-4, atol=1e-5)


def test_kernel_denoise_rejects_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        estimators.kernel_denoise(tf.zeros([3, 2]), tf.zeros([4, 2]), 1.0, block_size="big")
    with pytest.raises(ValueError, match="block_size"):
        gan2flow.KernelScoreDifference(np.zeros((3, 2)), block_size="fast")


def test_kernel_far_queries_stay_finite():
    # Every sample is hundreds of σ away: all logits underflow without the max shift.
    samples = np.float32([[100.0, 0.0], [101.0, 0.0]])
    got = estimators.kernel_denoise(tf.constant([[0.0, 0.0]]), tf.constant(samples), 0.1, block_size="auto")
    np.testing.assert_allclose(got, [[100.0, 0.0]], atol=1e-4)


def test_mixed_bfloat16_discriminator_is_a_reduced_precision_option():
    """Keras' mixed_bfloat16 policy runs the discriminator in bfloat16; the estimator still returns float32."""
    full = _discriminator()
    mixed = _discriminator(dtype="mixed_bfloat16")
    mixed.set_weights(full.get_weights())
    x = np.random.default_rng(4).normal(size=(256, 3)).astype(np.float32)
    reference = gan2flow.DiscriminatorScoreDifference(full, sigma_conditioned=False)(x, 0.5).numpy()
    reduced = gan2flow.DiscriminatorScoreDifference(mixed, sigma_conditioned=False)(x, 0.5)
    assert reduced.dtype == tf.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2⁻⁸ ≈ 0.4 %) through two layers and their
    # gradients: a few per cent of the velocity's norm.
    relative = np.linalg.norm(reduced.numpy() - reference) / np.linalg.norm(reference)
    assert relative < 0.05
    moved = gan2flow.flow(x, gan2flow.DiscriminatorScoreDifference(mixed, sigma_conditioned=False),
                          gan2flow.sigmas.geometric(1.0, 0.1, 4))
    assert moved.dtype == tf.float32 and np.all(np.isfinite(moved))
