"""Sample-based distances between distributions, mode statistics, and Gaussian closed forms.

What the demo tables print and what tests across the package use as oracles:

- :func:`sliced_wasserstein`: sliced W_p between two samples (exact 1-D W_p per direction).
- :func:`mmd`: unbiased squared MMD with a sum of Gaussian kernels, computed in blocks.
- :func:`energy_distance`: the energy distance (V-statistic), computed in blocks.
- :func:`mode_stats`: modes covered / high-quality rate / mode KL for mixtures (VEEGAN, PacGAN).
- :func:`gaussian_w2`, :func:`gaussian_kl`: closed forms between two Gaussians.
- :func:`summarize`: all of the above for one sample against a reference, as a flat dict.

Precision: every metric converts its inputs to **float64 NumPy** (they are evaluation code, run
outside any graph). Pairwise distances use ‖a‖² + ‖b‖² − 2a·b on data first centred on the pooled
mean, which in float64 keeps the round-off of a squared distance near 1e-16·‖a‖²; in float32 it would
be near 1e-7·‖a‖², larger than the MMD of two close samples. Sample arguments are arrays or tensors
of shape [n, ...]; axes after the first are flattened, so [n, 28, 28, 1] is compared as [n, 784].

Example::

    import numpy as np
    from gan2flow import metrics
    x = np.random.default_rng(0).normal(size=(1000, 2))
    y = x + [1.0, 0.0]
    metrics.sliced_wasserstein(x, y)     # ≈ 1/sqrt(2)

See docs/metrics.md for when to use which.
"""
from __future__ import annotations

import math

import numpy as np

from gan2flow import _checks, _distances
from gan2flow._distances import gaussian_w2

__all__ = [
    "energy_distance",
    "gaussian_kl",
    "gaussian_w2",
    "mmd",
    "mode_stats",
    "sliced_wasserstein",
    "summarize",
    "median_neighbour_distance",
]

_DEFAULT_BLOCK = 1024  # rows per block: a [1024, 1024] float64 block is 8 MiB
_BANDWIDTH_POINTS = 1000  # points used by the median heuristic
_BANDWIDTH_FACTORS = (0.5, 1.0, 2.0)
_MODE_KL_SMOOTHING = 0.5  # add-half (Krichevsky–Trofimov) pseudo-count per mode
_MIN_COUNT_FRACTION = 0.2  # PacGAN: a mode is lost with < 20 of its expected 100 samples


# ----------------------------------------------------------------------------------------------------
# Argument handling


def _block_size(value):
    return _checks.positive_int(value, "block_size")


# ----------------------------------------------------------------------------------------------------
# Sliced Wasserstein


def _directions(dim, n, seed):
    """``n`` unit vectors in R^dim, uniform on the sphere, from ``numpy.random.default_rng(seed)``.

    Returns float64 [n, dim]. Private but stable: tests compute exact values with the same directions.
    """
    gaussian = np.random.default_rng(seed).standard_normal((n, dim))
    return gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)


def _wasserstein_1d_power(x_sorted, y_sorted, p):
    """W_p^p between the empirical measures of each column of two sorted [n, P] and [m, P] arrays.

    W_p^p = ∫_0^1 |F_x^{-1}(t) − F_y^{-1}(t)|^p dt. Both quantile functions are step functions, constant
    on the intervals between consecutive levels of {i/n} ∪ {j/m}, so the integral is a finite sum over
    that merged grid: exact, no interpolation. Levels are held as integers in units of 1/(n·m).
    """
    n, m = x_sorted.shape[0], y_sorted.shape[0]
    if n == m:
        return np.mean(np.abs(x_sorted - y_sorted) ** p, axis=0)
    levels = np.union1d(m * np.arange(1, n + 1, dtype=np.int64), n * np.arange(1, m + 1, dtype=np.int64))
    widths = np.diff(levels, prepend=0) / float(n * m)
    # On (levels[k-1], levels[k]] the x quantile is x_(i) with i = ceil(levels[k] / m), 1-based.
    x_index = (levels + m - 1) // m - 1
    y_index = (levels + n - 1) // n - 1
    return widths @ (np.abs(x_sorted[x_index] - y_sorted[y_index]) ** p)


def sliced_wasserstein(x, y, *, n_projections=256, seed=0, p=2):
    """Sliced Wasserstein distance SW_p between two samples.

    SW_p(x, y) = ( (1/L) Σ_l W_p^p(θ_l·x, θ_l·y) )^{1/p}

    over L unit directions θ_l drawn uniformly on the sphere from ``numpy.random.default_rng(seed)``
    (the same directions for the same ``(d, n_projections, seed)``). Each 1-D W_p is the exact distance
    between the two projected empirical measures; for unequal sample sizes the two quantile functions
    are compared on the merged grid of levels {i/n} ∪ {j/m}, which is exact for step functions.
    For a pure shift s, W_p(θ·x, θ·(x + s)) = |θ·s|, so SW_2 = sqrt(mean_l (θ_l·s)²) ≈ ‖s‖/sqrt(d).

    Cost: O(L·(n + m)·d) for the projections plus O(L·(n log n + m log m)) for the sorts; memory
    O(L·(n + m)).

    Args:
      x: sample [n, ...] (trailing axes flattened to d).
      y: sample [m, ...] with the same trailing shape.
      n_projections: int ≥ 1, number of directions L.
      seed: int ≥ 0 for the directions.
      p: order, a number ≥ 1.

    Returns:
      Python float ≥ 0.

    Raises:
      ValueError: rank < 2, empty, non-finite or mismatched trailing shapes (naming ``x``/``y``), or
        bad ``n_projections``, ``seed``, ``p``.

    Example::

        sliced_wasserstein(x, y, n_projections=512, seed=1)
    """
    x, y = _checks.float64_sample_pair(x, y)
    n_projections = _checks.positive_int(n_projections, "n_projections")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    p = _checks.positive_float(p, "p")
    if p < 1:
        raise ValueError(f"`p` must be a number >= 1, got {p!r}.")
    theta = _directions(x.shape[1], n_projections, seed)
    x_sorted = np.sort(x @ theta.T, axis=0)
    y_sorted = np.sort(y @ theta.T, axis=0)
    power = _wasserstein_1d_power(x_sorted, y_sorted, p)
    return float(np.mean(power) ** (1.0 / p))


# ----------------------------------------------------------------------------------------------------
# Kernel sums in blocks


def _pairwise_sum(a, b, function, block_size, *, same):
    """Σ_ij function(‖a_i − b_j‖²) over blocks of [block_size, block_size] pairs.

    With ``same=True`` (``b`` is ``a``) only blocks on or above the diagonal are formed, off-diagonal
    ones counted twice, and the diagonal squared distances are set to exactly 0.
    """
    a_norms = np.einsum("ij,ij->i", a, a)
    b_norms = a_norms if same else np.einsum("ij,ij->i", b, b)
    total = 0.0
    for i0 in range(0, len(a), block_size):
        i1 = i0 + block_size
        for j0 in range(i0 if same else 0, len(b), block_size):
            j1 = j0 + block_size
            squared = _distances.squared_distances(a[i0:i1], b[j0:j1], a_norms[i0:i1], b_norms[j0:j1])
            if same and i0 == j0:
                np.fill_diagonal(squared, 0.0)
            block_sum = function(squared)
            total += 2.0 * block_sum if (same and j0 != i0) else block_sum
    return total


def _gaussian_kernel_sum(squared, rates):
    """Σ over entries and rates of exp(−rate · squared), as a float.

    ``rates`` is sorted ascending. A rate 2^k times the previous one (within 1e-12, as the default
    bandwidth factors 0.5, 1, 2 give) reuses the previous kernel by k squarings instead of a new exp,
    which is 10-20 times cheaper.
    """
    total = 0.0
    kernel = None
    kernel_rate = None
    for rate in rates:
        if kernel is not None:
            ratio = rate / kernel_rate
            doublings = round(math.log2(ratio)) if ratio >= 1 else -1
            if doublings >= 0 and abs(ratio / 2.0 ** doublings - 1.0) < 1e-12:
                for _ in range(doublings):
                    np.square(kernel, out=kernel)
                kernel_rate = rate
                total += float(np.sum(kernel))
                continue
        kernel = np.multiply(squared, -rate)
        np.exp(kernel, out=kernel)
        kernel_rate = rate
        total += float(np.sum(kernel))
    return total


def _distance_sum(squared):
    return float(np.sum(np.sqrt(squared, out=squared)))


def _median_bandwidths(z, seed=0):
    """Median heuristic: median pairwise distance of (up to 1000 points of) ``z`` × (0.5, 1, 2).

    The subsample is drawn with ``numpy.random.default_rng(seed)``. If the median is 0 (many repeated
    points) the median of the positive distances is used; if all points coincide, 1.
    """
    if len(z) > _BANDWIDTH_POINTS:
        z = z[np.random.default_rng(seed).choice(len(z), _BANDWIDTH_POINTS, replace=False)]
    squared = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    distances = np.sqrt(squared[np.triu_indices(len(z), k=1)])
    median = float(np.median(distances)) if distances.size else 0.0
    if median <= 0.0:
        positive = distances[distances > 0]
        median = float(np.median(positive)) if positive.size else 1.0
    return np.array(_BANDWIDTH_FACTORS) * median


def _check_bandwidths(bandwidths):
    array = _checks.as_float64(bandwidths, "bandwidths")
    array = np.atleast_1d(array)
    if array.ndim != 1 or array.size == 0 or np.any(array <= 0):
        raise ValueError(
            f"`bandwidths` must be a positive number or a non-empty 1-D array of positive numbers, "
            f"got {np.asarray(bandwidths).tolist()!r}."
        )
    return array


def mmd(x, y, *, bandwidths=None, block_size=_DEFAULT_BLOCK, biased=False):
    """Squared maximum mean discrepancy, unbiased (U-statistic) estimate (``biased=True``: the V-statistic).

    k(a, b) = Σ_h exp(−‖a − b‖² / (2h²))       (a sum of Gaussian kernels, one per bandwidth h)

    MMD²_u = 1/(n(n−1)) Σ_{i≠i'} k(x_i, x_i') + 1/(m(m−1)) Σ_{j≠j'} k(y_j, y_j')
             − 2/(nm) Σ_{i,j} k(x_i, y_j)

    Unbiased for MMD²(p, q), so it is centred on 0 when both samples come from one distribution and
    can then be slightly **negative**. Default bandwidths: the median pairwise distance of the pooled
    sample (up to 1000 points drawn with a fixed seed) times (0.5, 1, 2). When comparing several
    samples with one reference, pass the same ``bandwidths`` to every call (``summarize`` does).

    Cost: O((n + m)²·d) time; memory O(block_size²) per block, so 10k × 10k never forms the full
    matrix.

    Args:
      x: sample [n, ...], n ≥ 2.
      y: sample [m, ...], m ≥ 2, same trailing shape.
      bandwidths: positive number or 1-D array of kernel bandwidths h; default the median heuristic.
      block_size: int ≥ 1, rows per block.
      biased: the V-statistic instead: every pair, self-pairs included (divided by n², m²); never negative up to
        round-off, biased upwards by about (1/n + 1/m)·(Σ_h 1 − mean kernel).

    Returns:
      Python float (MMD², not MMD).

    Raises:
      ValueError: bad samples (naming ``x``/``y``), non-positive ``bandwidths`` or ``block_size``.

    Example::

        mmd(x, y, bandwidths=[0.5, 1.0, 2.0])
    """
    x, y = _checks.float64_sample_pair(x, y, min_points=2)
    block_size = _block_size(block_size)
    x, y = _distances.centered(x, y)
    if bandwidths is None:
        bandwidths = _median_bandwidths(np.concatenate([x, y]))
    bandwidths = _check_bandwidths(bandwidths)
    rates = np.sort(1.0 / (2.0 * bandwidths ** 2))

    def kernel(squared):
        return _gaussian_kernel_sum(squared, rates)

    n, m = len(x), len(y)
    diagonal = float(len(rates))  # k(a, a) = Σ_h 1, exact since diagonal distances are set to 0
    if biased:
        within_x = _pairwise_sum(x, x, kernel, block_size, same=True) / (n * n)
        within_y = _pairwise_sum(y, y, kernel, block_size, same=True) / (m * m)
    else:
        within_x = (_pairwise_sum(x, x, kernel, block_size, same=True) - n * diagonal) / (n * (n - 1))
        within_y = (_pairwise_sum(y, y, kernel, block_size, same=True) - m * diagonal) / (m * (m - 1))
    between = _pairwise_sum(x, y, kernel, block_size, same=False) / (n * m)
    return float(within_x + within_y - 2.0 * between)


def energy_distance(x, y, *, block_size=_DEFAULT_BLOCK):
    """Energy distance between the two empirical distributions (V-statistic).

    E(x, y) = 2/(nm) Σ_{i,j} ‖x_i − y_j‖ − 1/n² Σ_{i,i'} ‖x_i − x_i'‖ − 1/m² Σ_{j,j'} ‖y_j − y_j'‖

    The V-statistic (diagonal terms included) is the energy distance between the empirical measures,
    hence ≥ 0 and 0 only when the two samples are the same multiset. It overestimates the population
    value by O(1/n + 1/m). Round-off below 0 is clipped to 0. It equals twice the squared Cramér
    distance in 1-D (Székely & Rizzo 2013) and is translation invariant and scales with |c|.

    Cost: O((n + m)²·d) time, memory O(block_size²).

    Args:
      x: sample [n, ...].
      y: sample [m, ...], same trailing shape.
      block_size: int ≥ 1, rows per block.

    Returns:
      Python float ≥ 0.

    Raises:
      ValueError: bad samples (naming ``x``/``y``) or ``block_size``.

    Example::

        energy_distance(x, y)
    """
    x, y = _checks.float64_sample_pair(x, y)
    block_size = _block_size(block_size)
    x, y = _distances.centered(x, y)
    n, m = len(x), len(y)
    between = _pairwise_sum(x, y, _distance_sum, block_size, same=False) / (n * m)
    within_x = _pairwise_sum(x, x, _distance_sum, block_size, same=True) / (n * n)
    within_y = _pairwise_sum(y, y, _distance_sum, block_size, same=True) / (m * m)
    return max(float(2.0 * between - within_x - within_y), 0.0)


# ----------------------------------------------------------------------------------------------------
# Mode statistics


def _per_mode(value, name, n_modes):
    array = _checks.as_float64(value, name)
    if array.ndim == 0:
        array = np.full(n_modes, float(array))
    if array.shape != (n_modes,):
        raise ValueError(
            f"`{name}` must be a scalar or have shape [K]=({n_modes},) to match `centers`, "
            f"got shape {array.shape}."
        )
    if np.any(array <= 0):
        raise ValueError(f"`{name}` must be positive, got minimum {array.min()!r}.")
    return array


def mode_stats(x, centers, std, threshold=3.0, *, min_count=None, weights=None):
    """Mode coverage and sample quality against a mixture with known centres (VEEGAN / PacGAN).

    Each sample is assigned to its nearest centre k(i); it is **high quality** (HQ) when
    ‖x_i − c_k(i)‖ ≤ threshold · std_k(i). With c_k the HQ count of mode k and C = Σ_k c_k:

    - ``high_quality`` = C / n.
    - ``covered[k]`` = c_k ≥ min_count_k; ``modes`` = Σ_k covered[k].
    - ``mode_kl`` = KL(p̂ ‖ w) = Σ_k p̂_k log(p̂_k / w_k), the KL from the HQ mode histogram to the
      mode weights w (uniform by default), smoothed with ½ pseudo-count per mode:
      p̂_k = (c_k + ½) / (C + K/2). The smoothing keeps it defined when C = 0 (it is then KL(uniform‖w),
      so read it with ``high_quality``); for exact samples its expectation is ≈ (K − 1)/(2C).

    Default ``min_count_k`` = max(1, ⌊0.2 · n · w_k⌋): a fifth of the mode's expected count, PacGAN's
    rule (2,500 samples on grid25: a mode is lost with fewer than 20 of its expected 100 HQ samples).
    With n = 100 samples on 25 modes it falls back to 1, VEEGAN's "at least one HQ sample".

    For isotropic Gaussian modes in d dimensions the exact HQ rate is P(χ²_d ≤ threshold²), e.g.
    1 − exp(−4.5) ≈ 0.98889 for d = 2 and threshold 3; compare against that, not 1.

    Cost: O(n·K·d).

    Args:
      x: samples [n, ...] (trailing axes flattened to d).
      centers: mode centres [K, d] (or [K, ...] with the same trailing shape as ``x``).
      std: positive scalar or [K]: each mode's isotropic std (e.g. from ``toys.mixture_modes``).
      threshold: positive number, the HQ radius in stds.
      min_count: int ≥ 1, the HQ count that covers a mode; default as above.
      weights: optional positive [K] mode weights (normalised here); default uniform.

    Returns:
      dict with ``modes`` (int), ``n_modes`` (int K), ``high_quality`` (float), ``mode_kl`` (float),
      ``counts`` (int64 [K]), ``covered`` (bool [K]) and ``min_count`` (int64 [K]).

    Raises:
      ValueError: bad ``x``/``centers`` (rank, finiteness, d mismatch), ``std``, ``threshold``,
        ``min_count`` or ``weights``.

    Example::

        centers, stds, weights = toys.mixture_modes(toys.grid25())
        stats = mode_stats(x, centers, stds)
        stats["modes"], stats["high_quality"]
    """
    x = _checks.float64_samples(x, "x")
    centers = _checks.float64_samples(centers, "centers")
    if centers.shape[1] != x.shape[1]:
        raise ValueError(
            f"`centers` must have the same flattened dimension as `x` ({x.shape[1]}), "
            f"got {centers.shape[1]}."
        )
    n, n_modes = len(x), len(centers)
    stds = _per_mode(std, "std", n_modes)
    threshold = _checks.positive_float(threshold, "threshold")
    if weights is None:
        weights = np.full(n_modes, 1.0 / n_modes)
    else:
        weights = _per_mode(weights, "weights", n_modes)
        weights = weights / weights.sum()
    if min_count is None:
        min_counts = np.maximum(1, np.floor(_MIN_COUNT_FRACTION * n * weights + 1e-9)).astype(np.int64)
    else:
        min_counts = np.full(n_modes, _checks.positive_int(min_count, "min_count"), dtype=np.int64)

    x_norms = np.einsum("ij,ij->i", x, x)
    center_norms = np.einsum("ij,ij->i", centers, centers)
    nearest = np.empty(n, dtype=np.int64)
    nearest_squared = np.empty(n)
    for i0 in range(0, n, _DEFAULT_BLOCK):
        i1 = min(i0 + _DEFAULT_BLOCK, n)
        squared = _distances.squared_distances(x[i0:i1], centers, x_norms[i0:i1], center_norms)
        index = np.argmin(squared, axis=1)
        nearest[i0:i1] = index
        nearest_squared[i0:i1] = squared[np.arange(i1 - i0), index]
    high_quality = np.sqrt(nearest_squared) <= threshold * stds[nearest]
    counts = np.bincount(nearest[high_quality], minlength=n_modes).astype(np.int64)
    covered = counts >= min_counts
    smoothed = (counts + _MODE_KL_SMOOTHING) / (counts.sum() + _MODE_KL_SMOOTHING * n_modes)
    mode_kl = float(np.sum(smoothed * np.log(smoothed / weights)))
    return {
        "modes": int(covered.sum()),
        "n_modes": int(n_modes),
        "high_quality": float(high_quality.mean()),
        "mode_kl": max(mode_kl, 0.0),
        "counts": counts,
        "covered": covered,
        "min_count": min_counts,
    }


# ----------------------------------------------------------------------------------------------------
# Gaussian closed forms (gaussian_w2, imported above, lives in gan2flow._distances beside the distance
# algebra it shares with image_metrics)


def gaussian_kl(mean1, cov1, mean2, cov2):
    """KL(N(m1, C1) ‖ N(m2, C2)) in nats (closed form, float64).

    KL = ½ [ tr(C2⁻¹ C1) + (m2 − m1)ᵀ C2⁻¹ (m2 − m1) − d + log det C2 − log det C1 ]

    In 1-D: log(s2/s1) + (s1² + (m1 − m2)²)/(2 s2²) − ½.

    Args:
      mean1, mean2: arrays [d].
      cov1, cov2: symmetric positive definite arrays [d, d].

    Returns:
      Python float ≥ 0.

    Raises:
      ValueError: wrong shapes or dimensions, non-finite, non-symmetric or singular covariances.

    Example::

        gaussian_kl([0.0], [[1.0]], [1.0], [[1.0]])   # 0.5
    """
    mean1, cov1 = _distances.gaussian_parameters(mean1, cov1, "mean1", "cov1")
    mean2, cov2 = _distances.gaussian_parameters(mean2, cov2, "mean2", "cov2", dim=mean1.shape[0])
    factors = []
    for cov, name in ((cov1, "cov1"), (cov2, "cov2")):
        try:
            factors.append(np.linalg.cholesky(cov))
        except np.linalg.LinAlgError as error:
            raise ValueError(
                f"`{name}` must be positive definite for the KL, got a singular matrix."
            ) from error
    chol1, chol2 = factors
    d = mean1.shape[0]
    whitened = np.linalg.solve(chol2, chol1)  # L2⁻¹ L1, so tr(C2⁻¹ C1) = ‖L2⁻¹ L1‖_F²
    offset = np.linalg.solve(chol2, mean2 - mean1)
    log_det_ratio = 2.0 * (np.sum(np.log(np.diag(chol2))) - np.sum(np.log(np.diag(chol1))))
    kl = 0.5 * (np.sum(whitened ** 2) + np.sum(offset ** 2) - d + log_det_ratio)
    return max(float(kl), 0.0)


# ----------------------------------------------------------------------------------------------------
# Summary


def summarize(x, reference, *, centers=None, std=None, weights=None, seed=0, max_points=5000):
    """The metrics the demo tables print, for one sample against a reference sample.

    - ``sliced_w2``: :func:`sliced_wasserstein` (p = 2, 256 directions from ``seed``), all points.
    - ``mmd``: :func:`mmd` with bandwidths from the **reference alone** (median heuristic × (0.5, 1, 2)),
      so every row of a table compared with one reference uses the same kernel.
    - ``energy``: :func:`energy_distance`.
    - with ``centers``: ``modes``, ``n_modes``, ``high_quality``, ``mode_kl`` from :func:`mode_stats`
      on all of ``x`` (default ``threshold`` and ``min_count``).

    MMD and energy cost O(n²); they use at most ``max_points`` points of each sample, drawn without
    replacement with ``numpy.random.default_rng(seed)``.

    Args:
      x: sample [n, ...].
      reference: sample [m, ...], same trailing shape (e.g. held-out target samples).
      centers: optional mode centres [K, d]; ``std`` is then required.
      std: scalar or [K] mode stds.
      weights: optional [K] mode weights.
      seed: int ≥ 0 for the directions and the subsample.
      max_points: int ≥ 2.

    Returns:
      dict of Python floats (and ints for ``modes``, ``n_modes``).

    Raises:
      ValueError: as the metrics, or ``centers`` given without ``std``.

    Example::

        centers, stds, weights = toys.mixture_modes(target)
        summarize(samples, toys.sample(target, 5000, seed=1), centers=centers, std=stds)
    """
    x_flat, reference_flat = _checks.float64_sample_pair(x, reference, "x", "reference", min_points=2)
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    max_points = _checks.positive_int(max_points, "max_points")
    if max_points < 2:
        raise ValueError(f"`max_points` must be an integer >= 2, got {max_points}.")
    if centers is not None and std is None:
        raise ValueError("`std` must be given with `centers` (a scalar or one std per centre), got None.")
    rng = np.random.default_rng(seed)

    def subsample(z):
        return z if len(z) <= max_points else z[rng.choice(len(z), max_points, replace=False)]

    x_small, reference_small = subsample(x_flat), subsample(reference_flat)
    bandwidths = _median_bandwidths(reference_small, seed=seed)
    result = {
        "sliced_w2": sliced_wasserstein(x_flat, reference_flat, seed=seed),
        "mmd": mmd(x_small, reference_small, bandwidths=bandwidths),
        "energy": energy_distance(x_small, reference_small),
    }
    if centers is not None:
        stats = mode_stats(x_flat, centers, std, weights=weights)
        result.update({key: stats[key] for key in ("modes", "n_modes", "high_quality", "mode_kl")})
    return result


def median_neighbour_distance(samples, max_points=2048, seed=0):
    """Median nearest-neighbour distance of (a subsample of at most ``max_points``) samples [n, ...].

    The scale below which a kernel estimate from these samples sees too few points (0 for < 2 samples).
    """
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    if len(flat) < 2:
        return 0.0
    if len(flat) > max_points:
        flat = flat[np.random.default_rng(seed).choice(len(flat), max_points, replace=False)]
    norms = (flat**2).sum(1)
    squared = norms[:, None] + norms[None, :] - 2.0 * flat @ flat.T
    np.fill_diagonal(squared, np.inf)
    return float(np.median(np.sqrt(np.maximum(squared.min(1), 0.0))))


# ----------------------------------------------------------------------------------------------------
# Deprecated: the image metrics used to be re-exported here; they live in gan2flow.image_metrics

_IMAGE_METRICS = ("frechet_distance", "image_features", "image_summary", "nearest_distances", "precision_recall")


def __getattr__(name):
    """``gan2flow.metrics.frechet_distance`` and the other image metrics: deprecated names, resolved on use."""
    if name in _IMAGE_METRICS:
        import warnings

        from gan2flow import image_metrics

        warnings.warn(f"gan2flow.metrics.{name} is deprecated; use gan2flow.image_metrics.{name}.",
                      DeprecationWarning, stacklevel=2)
        return getattr(image_metrics, name)
    raise AttributeError(f"module 'gan2flow.metrics' has no attribute {name!r}")
