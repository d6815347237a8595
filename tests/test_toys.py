"""Tests for gan2flow.toys: mode layout, moments against the analytic mixture, seeds, bad shapes.

Moment checks compare sample moments with the mixture's closed-form moments within 5 standard errors,
each estimated from the sample itself (seeds are fixed, so the tests are deterministic).
"""
import itertools
import math

import numpy as np
import pytest
import tensorflow_probability as tfp

from gan2flow import toys

tfd = tfp.distributions


def test_grid25_layout():
    target = toys.grid25()
    centers, stds, weights = toys.mixture_modes(target)
    expected = np.array(list(itertools.product([-4, -2, 0, 2, 4], repeat=2)), dtype=np.float64)
    np.testing.assert_array_equal(centers, expected)  # row-major order; float32 holds these exactly
    np.testing.assert_allclose(stds, 0.05, rtol=1e-6)  # float32 parameters
    np.testing.assert_allclose(weights, 1 / 25, rtol=1e-6)
    assert target.event_shape == (2,) and target.dtype == np.float32
    # At a centre the 39 other modes (≥ 40 stds away) contribute nothing in float32:
    # log p(c) = log(1/25) − log(2π · 0.05²).
    expected_log_prob = math.log(1 / 25) - math.log(2 * math.pi * 0.05 ** 2)
    assert float(target.log_prob(centers[7].astype(np.float32))) == pytest.approx(expected_log_prob, rel=1e-5)


def test_ring8_layout():
    centers, stds, weights = toys.mixture_modes(toys.ring8())
    assert centers.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 2.0, rtol=1e-6)
    angles = np.mod(np.arctan2(centers[:, 1], centers[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(angles, 2 * np.pi * np.arange(8) / 8, atol=1e-6)
    np.testing.assert_allclose(stds, 0.05, rtol=1e-6)
    np.testing.assert_allclose(weights, 1 / 8, rtol=1e-6)


def _analytic_moments(distribution):
    """Mean and covariance of a diagonal Gaussian mixture from its parameters (float64)."""
    components = distribution.components_distribution
    means = np.asarray(components.mean(), np.float64)
    variances = np.asarray(components.variance(), np.float64)
    weights = np.asarray(distribution.mixture_distribution.probs_parameter(), np.float64)
    mean = weights @ means
    second = np.einsum("k,ki,kj->ij", weights, means, means) + np.diag(weights @ variances)
    return mean, second - np.outer(mean, mean)


@pytest.mark.parametrize(
    "build",
    [
        toys.grid25,
        toys.ring8,
        lambda: toys.gaussian_mixture(
            [[0.0, 1.0, 0.0], [2.0, -1.0, 1.0]], [[0.3, 0.5, 1.0], [1.0, 0.2, 0.4]], [3.0, 1.0]
        ),
        lambda: toys.random_mixture(4, 6, spread=3.0, std=0.5, seed=2),
    ],
)
def test_sample_moments_match_the_mixture(build):
    target = build()
    n = 20000
    x = toys.sample(target, n, seed=5).astype(np.float64)
    mean, cov = _analytic_moments(target)
    centred = x - x.mean(axis=0)
    # Standard errors from the sample: std(x_a)/sqrt(n) for means, std((x_a − x̄_a)(x_b − x̄_b))/sqrt(n)
    # for covariance entries; 5 of them, over at most 4 + 10 entries.
    mean_error = x.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * mean_error)
    products = centred[:, :, None] * centred[:, None, :]
    cov_error = products.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(products.mean(axis=0) - cov) < 5 * cov_error + 1e-6)


def test_gaussian_mixture_std_shapes():
    means = [[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]]
    scalar = toys.gaussian_mixture(means, 0.5)
    per_mode = toys.gaussian_mixture(means, [0.1, 0.2, 0.3])
    per_dim = toys.gaussian_mixture(means, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], weights=[1, 1, 2])
    for distribution, expected in [
        (scalar, np.full((3, 2), 0.5)),
        (per_mode, np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])),
        (per_dim, np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])),
    ]:
        np.testing.assert_allclose(distribution.components_distribution.stddev(), expected, rtol=1e-6)
    _, stds, weights = toys.mixture_modes(per_dim)
    np.testing.assert_allclose(stds, [0.15, 0.35, 0.55], rtol=1e-6)  # mean of the per-dim stds
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "means, stds, weights, name",
    [
        ([0.0, 1.0], 0.5, None, "means"),
        (np.zeros((0, 2)), 0.5, None, "means"),
        ([[0.0, np.nan]], 0.5, None, "means"),
        ([[0.0, 0.0], [1.0, 1.0]], [0.1, 0.2, 0.3], None, "stds"),
        ([[0.0, 0.0], [1.0, 1.0]], [[0.1, 0.2]], None, "stds"),
        ([[0.0, 0.0], [1.0, 1.0]], [0.1, 0.0], None, "stds"),
        ([[0.0, 0.0], [1.0, 1.0]], 0.1, [1.0], "weights"),
        ([[0.0, 0.0], [1.0, 1.0]], 0.1, [1.0, -1.0], "weights"),
        ([[0.0, 0.0], [1.0, 1.0]], 0.1, [0.0, 0.0], "weights"),
        ([[0.0, 0.0], [1.0]], 0.1, None, "means"),
    ],
)
def test_gaussian_mixture_rejects_bad_shapes(means, stds, weights, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        toys.gaussian_mixture(means, stds, weights)


def test_sample_is_reproducible():
    target = toys.grid25()
    first = toys.sample(target, 100, seed=3)
    assert first.dtype == np.float32 and first.shape == (100, 2)
    np.testing.assert_array_equal(first, toys.sample(target, 100, seed=3))
    np.testing.assert_array_equal(first, toys.sample(toys.grid25(), 100, seed=3))
    assert not np.array_equal(first, toys.sample(target, 100, seed=4))
    with pytest.raises(ValueError, match="`n`"):
        toys.sample(target, 0, seed=0)
    with pytest.raises(ValueError, match="`seed`"):
        toys.sample(target, 10, seed=-1)


def test_random_mixture_is_seeded():
    first, _, _ = toys.mixture_modes(toys.random_mixture(5, 7, spread=2.0, std=0.3, seed=1))
    again, stds, weights = toys.mixture_modes(toys.random_mixture(5, 7, spread=2.0, std=0.3, seed=1))
    other, _, _ = toys.mixture_modes(toys.random_mixture(5, 7, spread=2.0, std=0.3, seed=2))
    assert first.shape == (7, 5)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert np.all(np.abs(first) <= 2.0)
    np.testing.assert_allclose(stds, 0.3, rtol=1e-6)
    np.testing.assert_allclose(weights, 1 / 7, rtol=1e-6)
    with pytest.raises(ValueError, match="`dim`"):
        toys.random_mixture(0, 3)
    with pytest.raises(ValueError, match="`std`"):
        toys.random_mixture(2, 3, std=-1.0)


def test_registry():
    assert toys.names() == ["grid25", "ring8"]
    for name in toys.names():
        np.testing.assert_array_equal(
            toys.mixture_modes(toys.get(name))[0], toys.mixture_modes(getattr(toys, name)())[0]
        )
    with pytest.raises(ValueError, match="`name`"):
        toys.get("grid9")


def test_mixture_modes_rejects_other_distributions():
    with pytest.raises(TypeError, match="`distribution`"):
        toys.mixture_modes(tfd.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="`distribution`"):
        toys.mixture_modes(np.zeros((3, 2)))
