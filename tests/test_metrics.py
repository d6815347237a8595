"""Tests for gan2flow.metrics: NumPy references, exact identities, Monte Carlo checks and bad input.

Tolerances: the metrics compute in float64, so exact identities are checked to ~1e-10 (the round-off
of sums of ~1e4 float64 terms); Monte Carlo checks use a stated standard error and 4-5 of them (the
seeds are fixed, so the tests are deterministic; the margin says how unlucky a seed would have to be).
"""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import tensorflow as tf
import tensorflow_probability as tfp

from gan2flow import metrics, toys

tfd = tfp.distributions


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------
# Sliced Wasserstein


def _sliced_reference(x, y, theta, p):
    """Exact SW_p by replication: repeating each of n sorted values lcm/n times (and m values lcm/m
    times) gives two equal-size samples with the same empirical measures, then W_p^p is a mean."""
    n, m = len(x), len(y)
    lcm = n * m // math.gcd(n, m)
    xs = np.repeat(np.sort(x @ theta.T, axis=0), lcm // n, axis=0)
    ys = np.repeat(np.sort(y @ theta.T, axis=0), lcm // m, axis=0)
    return np.mean(np.mean(np.abs(xs - ys) ** p, axis=0)) ** (1.0 / p)


def test_sliced_w2_of_a_shift_is_exact_for_the_drawn_directions():
    y = _rng(1).normal(size=(300, 5))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    theta = metrics._directions(5, 256, 0)
    expected = math.sqrt(np.mean((theta @ shift) ** 2))
    # A shift moves every projection by θ·s and keeps the order, so W2 per direction is |θ·s|; the
    # only error is float64 round-off of the projections (~1e-16 · |y|), hence rtol 1e-10.
    assert metrics.sliced_wasserstein(y, y + shift, seed=0) == pytest.approx(expected, rel=1e-10)
    assert metrics.sliced_wasserstein(y + shift, y, seed=0) == pytest.approx(expected, rel=1e-10)


def test_sliced_w2_of_a_shift_matches_its_expectation():
    d, n_projections = 5, 20000
    y = _rng(2).normal(size=(50, d))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    value = metrics.sliced_wasserstein(y, y + shift, n_projections=n_projections, seed=3)
    # (θ·s)²/‖s‖² ~ Beta(1/2, (d−1)/2) for θ uniform on the sphere: mean 1/d, variance
    # 2(d−1)/(d²(d+2)); the mean over L directions has standard error sqrt(variance / L).
    ratio = value ** 2 / np.sum(shift ** 2)
    standard_error = math.sqrt(2 * (d - 1) / (d ** 2 * (d + 2)) / n_projections)
    assert abs(ratio - 1.0 / d) < 5 * standard_error


def test_directions_are_unit_and_reproducible():
    theta = metrics._directions(7, 100, 4)
    np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(theta, metrics._directions(7, 100, 4))
    assert not np.allclose(theta, metrics._directions(7, 100, 5))


@pytest.mark.parametrize("n, m, p", [(40, 40, 2), (30, 20, 2), (30, 20, 1), (7, 5, 3), (1, 6, 2)])
def test_sliced_wasserstein_matches_numpy_reference(n, m, p):
    x = _rng(3).normal(size=(n, 3))
    y = _rng(4).normal(size=(m, 3)) * 1.5 + 0.3
    theta = metrics._directions(3, 64, 7)
    expected = _sliced_reference(x, y, theta, p)
    # Both are exact; they differ only by float64 summation order (~1e-15 relative).
    value = metrics.sliced_wasserstein(x, y, n_projections=64, seed=7, p=p)
    assert value == pytest.approx(expected, rel=1e-10)


def test_sliced_w1_matches_scipy_per_direction():
    x = _rng(5).normal(size=(23, 4))
    y = _rng(6).standard_t(3, size=(17, 4))
    theta = metrics._directions(4, 32, 1)
    per_direction = [
        scipy.stats.wasserstein_distance(x @ direction, y @ direction) for direction in theta
    ]
    value = metrics.sliced_wasserstein(x, y, n_projections=32, seed=1, p=1)
    assert value == pytest.approx(np.mean(per_direction), rel=1e-10)


def test_sliced_wasserstein_identity_symmetry_and_scaling():
    x = _rng(7).normal(size=(200, 3))
    y = _rng(8).normal(size=(150, 3)) + 0.5
    assert metrics.sliced_wasserstein(x, x) == 0.0
    value = metrics.sliced_wasserstein(x, y)
    assert value > 0
    assert metrics.sliced_wasserstein(y, x) == pytest.approx(value, rel=1e-12)
    # W_p is 1-homogeneous under scaling both samples (|c| for c < 0, which also reverses the order).
    assert metrics.sliced_wasserstein(3.0 * x, 3.0 * y) == pytest.approx(3.0 * value, rel=1e-12)
    assert metrics.sliced_wasserstein(-0.5 * x, -0.5 * y) == pytest.approx(0.5 * value, rel=1e-12)


def test_sliced_wasserstein_flattens_and_accepts_tensors():
    x = _rng(9).normal(size=(20, 2, 3)).astype(np.float32)
    y = _rng(10).normal(size=(30, 2, 3)).astype(np.float32)
    flat = metrics.sliced_wasserstein(x.reshape(20, 6), y.reshape(30, 6))
    assert metrics.sliced_wasserstein(x, y) == flat
    assert metrics.sliced_wasserstein(tf.constant(x), tf.constant(y)) == flat


# ----------------------------------------------------------------------------------------------------
# MMD


def _kernel_matrix(a, b, bandwidths):
    squared = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(np.exp(-squared / (2 * h ** 2)) for h in bandwidths)


def _mmd_double_loop(x, y, bandwidths):
    def k(a, b):
        return sum(math.exp(-float(np.sum((a - b) ** 2)) / (2 * h ** 2)) for h in bandwidths)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("dim", [3, 12])  # per-axis distances (d <= 8) and the Gram form
@pytest.mark.parametrize("bandwidths", [[0.5, 1.0, 2.0], [0.7, 1.3]])  # squaring shortcut, plain exp
def test_mmd_blocked_equals_unblocked_and_double_loop(dim, bandwidths):
    x = _rng(11).normal(size=(37, dim))
    y = _rng(12).normal(size=(23, dim)) + 0.4
    scale = math.sqrt(dim)  # keep the kernels away from 0 and 1 in higher dimension
    bandwidths = [h * scale for h in bandwidths]
    expected = _mmd_double_loop(x, y, bandwidths)
    # Sums of ~2000 kernel values in [0, 3] in float64: round-off ~1e-13.
    for block_size in (1, 5, 1000):
        value = metrics.mmd(x, y, bandwidths=bandwidths, block_size=block_size)
        assert value == pytest.approx(expected, abs=1e-12)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    n, bandwidths = 400, [0.5, 1.0, 2.0]
    x = _rng(13).normal(size=(n, 2))
    y = _rng(14).normal(size=(n, 2))
    same = metrics.mmd(x, y, bandwidths=bandwidths)
    # Under p = q the estimator is a degenerate U-statistic with kernel
    # h = k(x,x') + k(y,y') − k(x,y') − k(x',y); its variance is 2 E[h²] / (n(n−1)), E[h²] estimated
    # from the off-diagonal pairs of this sample.
    kxx, kyy, kxy = (_kernel_matrix(a, b, bandwidths) for a, b in ((x, x), (y, y), (x, y)))
    h = kxx + kyy - kxy - kxy.T
    mean_h2 = (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / (n * (n - 1))
    standard_error = math.sqrt(2 * mean_h2 / (n * (n - 1)))
    assert abs(same) < 5 * standard_error
    shifted_1 = metrics.mmd(x, y + [1.0, 0.0], bandwidths=bandwidths)
    shifted_2 = metrics.mmd(x, y + [2.0, 0.0], bandwidths=bandwidths)
    assert shifted_1 > 20 * standard_error
    assert shifted_2 > shifted_1


def test_mmd_default_bandwidths_are_symmetric_and_scale_invariant():
    x = _rng(15).normal(size=(60, 3))
    y = _rng(16).normal(size=(50, 3)) + 0.7
    value = metrics.mmd(x, y)
    assert value > 0
    # The median heuristic uses all pooled pairs here (< 1000 points), in either order; scaling the
    # data scales the bandwidths with it, so MMD² is unchanged up to float64 round-off.
    assert metrics.mmd(y, x) == pytest.approx(value, rel=1e-10)
    assert metrics.mmd(10 * x, 10 * y) == pytest.approx(value, rel=1e-10)
    assert metrics.mmd(x, y, bandwidths=metrics._median_bandwidths(np.concatenate([x, y]))) == (
        pytest.approx(value, rel=1e-12)
    )


# ----------------------------------------------------------------------------------------------------
# Energy distance


def _energy_reference(x, y):
    def mean_distance(a, b):
        return np.mean(np.sqrt(np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)))

    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)


@pytest.mark.parametrize("dim", [1, 3, 12])
def test_energy_distance_matches_numpy_reference(dim):
    x = _rng(17).normal(size=(40, dim))
    y = _rng(18).normal(size=(25, dim)) * 1.3 + 0.2
    expected = _energy_reference(x, y)
    # Direct differences in the reference; the Gram form (d = 12) loses ~1e-8 on the smallest distances
    # (square root of a 1e-16 relative cancellation), averaged over all pairs: atol 1e-9.
    for block_size in (3, 1024):
        assert metrics.energy_distance(x, y, block_size=block_size) == pytest.approx(expected, abs=1e-9)


def test_energy_distance_is_nonnegative_zero_on_itself_and_scales():
    x = _rng(19).normal(size=(80, 2))
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    for seed in range(5):
        y = _rng(20 + seed).normal(size=(60, 2))
        assert metrics.energy_distance(x, y) >= 0.0
    y = _rng(30).normal(size=(60, 2)) + 1.0
    value = metrics.energy_distance(x, y)
    assert value > 0.5  # population value for a unit shift of N(0, I₂) is ≈ 0.9
    assert metrics.energy_distance(-2.0 * x, -2.0 * y) == pytest.approx(2.0 * value, rel=1e-10)
    assert metrics.energy_distance(y, x) == pytest.approx(value, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# Mode statistics


def test_mode_stats_on_exact_grid25_samples():
    target = toys.grid25()
    centers, stds, _ = toys.mixture_modes(target)
    n = 5000
    stats = metrics.mode_stats(toys.sample(target, n, seed=0), centers, stds)
    assert stats["n_modes"] == 25
    assert stats["modes"] == 25
    assert stats["covered"].all()
    np.testing.assert_array_equal(stats["min_count"], 40)  # ⌊0.2 · 5000 / 25⌋
    # Modes are 40 stds apart, so the nearest centre is the true one and HQ ~ Binomial(n, P(χ²₂ ≤ 9)).
    p_hq = 1.0 - math.exp(-4.5)
    standard_error = math.sqrt(p_hq * (1 - p_hq) / n)
    assert abs(stats["high_quality"] - p_hq) < 4 * standard_error
    assert stats["counts"].sum() == round(stats["high_quality"] * n)
    # 2C · KL(p̂ ‖ uniform) ≈ χ²₂₄ for exact samples (C HQ samples); 60 is beyond its 99.99% quantile.
    assert 0.0 <= stats["mode_kl"] < 60.0 / (2 * stats["counts"].sum())


def test_mode_stats_counts_only_the_sampled_modes():
    grid_centers, _, _ = toys.mixture_modes(toys.grid25())
    chosen = [0, 7, 24]
    partial = toys.gaussian_mixture(grid_centers[chosen], 0.05)
    stats = metrics.mode_stats(toys.sample(partial, 2500, seed=1), grid_centers, 0.05)
    assert stats["modes"] == 3
    assert sorted(np.flatnonzero(stats["covered"]).tolist()) == chosen
    # Missing 22 of 25 modes: KL(p̂‖uniform) ≈ log(25/3) ≈ 2.12, less a little for the ½ pseudo-counts.
    assert 1.9 < stats["mode_kl"] < math.log(25 / 3)


def test_mode_stats_hand_computed_case():
    centers = np.array([[0.0, 0.0], [10.0, 0.0]])
    # Three HQ samples at mode 0, one at mode 1, one far away (nearest mode 1, not HQ).
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, -0.2], [10.0, 0.05], [13.0, 0.0]])
    stats = metrics.mode_stats(x, centers, [0.1, 0.1], threshold=3.0, min_count=2)
    np.testing.assert_array_equal(stats["counts"], [3, 1])
    assert stats["high_quality"] == pytest.approx(0.8)
    assert stats["modes"] == 1
    smoothed = np.array([3.5, 1.5]) / 5.0
    assert stats["mode_kl"] == pytest.approx(np.sum(smoothed * np.log(smoothed / 0.5)), rel=1e-12)
    weighted = metrics.mode_stats(x, centers, 0.1, weights=[3, 1], min_count=1)
    assert weighted["modes"] == 2
    assert weighted["mode_kl"] == pytest.approx(
        np.sum(smoothed * np.log(smoothed / np.array([0.75, 0.25]))), rel=1e-12
    )
    # Per-centre stds: a tight mode 1 (std 0.01) rejects the sample 0.05 away.
    tight = metrics.mode_stats(x, centers, [0.1, 0.01], min_count=1)
    np.testing.assert_array_equal(tight["counts"], [3, 0])


def test_mode_stats_default_min_count_follows_the_weights():
    centers = np.array([[0.0], [5.0]])
    x = np.zeros((100, 1))
    stats = metrics.mode_stats(x, centers, 0.1, weights=[0.9, 0.1])
    np.testing.assert_array_equal(stats["min_count"], [18, 2])  # ⌊0.2 · 100 · w⌋
    assert metrics.mode_stats(x[:3], centers, 0.1)["min_count"].tolist() == [1, 1]  # max(1, ·)


# ----------------------------------------------------------------------------------------------------
# Gaussian closed forms


def test_gaussian_w2_and_kl_in_one_dimension():
    m1, s1, m2, s2 = 1.0, 2.0, -2.0, 3.0
    assert metrics.gaussian_w2([m1], [[s1 ** 2]], [m2], [[s2 ** 2]]) == pytest.approx(
        math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2), rel=1e-12
    )
    expected_kl = math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    assert metrics.gaussian_kl([m1], [[s1 ** 2]], [m2], [[s2 ** 2]]) == pytest.approx(expected_kl, rel=1e-12)
    assert metrics.gaussian_kl([0.0], [[1.0]], [1.0], [[1.0]]) == pytest.approx(0.5, rel=1e-12)


def _random_covariance(seed, d):
    a = _rng(seed).normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


def test_gaussian_identities():
    mean, cov = _rng(40).normal(size=4), _random_covariance(41, 4)
    # W2² = tr C + tr C − 2 tr C cancels in float64 to ~1e-15 · tr C; the square root leaves ~1e-7.
    assert metrics.gaussian_w2(mean, cov, mean, cov) < 1e-6 * math.sqrt(np.trace(cov))
    assert metrics.gaussian_kl(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-12)
    shift = np.array([1.0, 2.0, -2.0, 0.5])
    assert metrics.gaussian_w2(mean, cov, mean + shift, cov) == pytest.approx(np.linalg.norm(shift), rel=1e-7)


def test_gaussian_w2_commuting_and_general_covariances():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    expected = math.sqrt(1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    value = metrics.gaussian_w2(np.zeros(3), np.diag(a), [1.0, 0, 0], np.diag(b))
    assert value == pytest.approx(expected, rel=1e-10)
    cov1, cov2 = _random_covariance(42, 3), _random_covariance(43, 3)
    mean1, mean2 = _rng(44).normal(size=3), _rng(45).normal(size=3)
    # Independent reference: tr (C1^{1/2} C2 C1^{1/2})^{1/2} = tr (C1 C2)^{1/2} (similar matrices).
    trace_root = np.real(np.trace(scipy.linalg.sqrtm(cov1 @ cov2)))
    expected = math.sqrt(np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)
    value = metrics.gaussian_w2(mean1, cov1, mean2, cov2)
    assert value == pytest.approx(expected, rel=1e-8)
    assert metrics.gaussian_w2(mean2, cov2, mean1, cov1) == pytest.approx(value, rel=1e-8)


def test_gaussian_kl_matches_tfp():
    cov1, cov2 = _random_covariance(46, 3), _random_covariance(47, 3)
    mean1, mean2 = _rng(48).normal(size=3), _rng(49).normal(size=3)
    p = tfd.MultivariateNormalTriL(mean1, np.linalg.cholesky(cov1))
    q = tfd.MultivariateNormalTriL(mean2, np.linalg.cholesky(cov2))
    expected = float(tfd.kl_divergence(p, q))  # float64 parameters: agreement to ~1e-12
    assert metrics.gaussian_kl(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "args, name",
    [
        (([0.0, 0.0], np.eye(3), [0.0, 0.0], np.eye(2)), "cov1"),
        (([0.0, 0.0], np.eye(2), [0.0], np.eye(1)), "mean2"),
        (([0.0], [[1.0]], [0.0], [[-1.0]]), "cov2"),
        (([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]], [0.0, 0.0], np.eye(2)), "cov1"),
        (([[0.0]], [[1.0]], [0.0], [[1.0]]), "mean1"),
        (([np.nan], [[1.0]], [0.0], [[1.0]]), "mean1"),
    ],
)
def test_gaussian_bad_arguments(args, name):
    for function in (metrics.gaussian_w2, metrics.gaussian_kl):
        with pytest.raises(ValueError, match=f"`{name}`"):
            function(*args)


def test_gaussian_kl_needs_positive_definite():
    assert metrics.gaussian_w2([0.0, 0.0], np.diag([1.0, 0.0]), [0.0, 0.0], np.eye(2)) > 0
    with pytest.raises(ValueError, match="`cov1`"):
        metrics.gaussian_kl([0.0, 0.0], np.diag([1.0, 0.0]), [0.0, 0.0], np.eye(2))


# ----------------------------------------------------------------------------------------------------
# summarize


def test_summarize_reports_every_metric():
    target = toys.ring8()
    centers, stds, _ = toys.mixture_modes(target)
    x = toys.sample(target, 800, seed=0)
    reference = toys.sample(target, 1200, seed=1)
    plain = metrics.summarize(x, reference)
    assert set(plain) == {"sliced_w2", "mmd", "energy"}
    assert plain["sliced_w2"] == pytest.approx(metrics.sliced_wasserstein(x, reference), rel=1e-12)
    assert plain["energy"] == pytest.approx(metrics.energy_distance(x, reference), rel=1e-10)
    full = metrics.summarize(x, reference, centers=centers, std=stds)
    assert full["modes"] == 8 and full["n_modes"] == 8
    assert all(isinstance(value, (int, float)) for value in full.values())
    with pytest.raises(ValueError, match="`std`"):
        metrics.summarize(x, reference, centers=centers)
    with pytest.raises(ValueError, match="`reference`"):
        metrics.summarize(x, reference[:, :1])


# ----------------------------------------------------------------------------------------------------
# Bad input


_GOOD = np.zeros((10, 2))


def _with_nan():
    array = np.zeros((10, 2))
    array[3, 1] = np.nan
    return array


@pytest.mark.parametrize("function", [metrics.sliced_wasserstein, metrics.mmd, metrics.energy_distance])
@pytest.mark.parametrize(
    "x, y, name",
    [
        (_with_nan(), _GOOD, "x"),
        (_GOOD, _with_nan(), "y"),
        (np.zeros(10), _GOOD, "x"),
        (_GOOD, np.zeros((10, 3)), "x"),
        (np.zeros((0, 2)), _GOOD, "x"),
        (_GOOD, np.array([["a", "b"]]), "y"),
    ],
)
def test_sample_metrics_reject_bad_input(function, x, y, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        function(x, y)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_projections": 0}, "n_projections"),
        ({"p": 0.5}, "p"),
        ({"seed": -1}, "seed"),
    ],
)
def test_sliced_wasserstein_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        metrics.sliced_wasserstein(_GOOD, _GOOD, **kwargs)


def test_mmd_rejects_bad_options():
    with pytest.raises(ValueError, match="`bandwidths`"):
        metrics.mmd(_GOOD, _GOOD, bandwidths=[1.0, 0.0])
    with pytest.raises(ValueError, match="`block_size`"):
        metrics.mmd(_GOOD, _GOOD, block_size=0)
    with pytest.raises(ValueError, match="`x`"):
        metrics.mmd(_GOOD[:1], _GOOD)  # the U-statistic needs two points


@pytest.mark.parametrize(
    "centers, std, kwargs, name",
    [
        (np.zeros((3, 3)), 0.1, {}, "centers"),
        (np.zeros(3), 0.1, {}, "centers"),
        (np.zeros((3, 2)), [0.1, 0.1], {}, "std"),
        (np.zeros((3, 2)), -0.1, {}, "std"),
        (np.zeros((3, 2)), 0.1, {"threshold": 0.0}, "threshold"),
        (np.zeros((3, 2)), 0.1, {"min_count": 0}, "min_count"),
        (np.zeros((3, 2)), 0.1, {"weights": [1.0, 0.0, 1.0]}, "weights"),
        (np.zeros((3, 2)), 0.1, {"weights": [1.0, 1.0]}, "weights"),
    ],
)
def test_mode_stats_rejects_bad_input(centers, std, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        metrics.mode_stats(_GOOD, centers, std, **kwargs)
    with pytest.raises(ValueError, match="`x`"):
        metrics.mode_stats(_with_nan(), np.zeros((3, 2)), 0.1)
