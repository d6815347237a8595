"""Toy target distributions: Gaussian mixtures as tensorflow-probability distributions.

Every builder returns the same kind of object,

    tfd.MixtureSameFamily(tfd.Categorical(probs=w), tfd.MultivariateNormalDiag(loc=mu, scale_diag=s))

with ``mu`` of shape [K, d] and ``s`` of shape [K, d] (float32), so exact log-densities, scores (by
automatic differentiation) and smoothed proxies p_σ (add σ² to every variance) are available to the
rest of the package, and :func:`mixture_modes` recovers the centres for :func:`gan2flow.metrics.mode_stats`.

Named targets (``get(name)``, ``names()``):

- ``"grid25"``: 25 modes on the grid {−4, −2, 0, 2, 4}², std 0.05, equal weights (the VEEGAN / PacGAN
  2-D grid).
- ``"ring8"``: 8 modes equally spaced on the circle of radius 2 (angles 2πk/8, k = 0..7, the first at
  (2, 0)), std 0.05, equal weights (the Unrolled-GAN ring, with the grid's std).

Example::

    from gan2flow import toys, metrics
    target = toys.get("grid25")
    x = toys.sample(target, 2500, seed=0)             # float32 [2500, 2]
    centers, stds, weights = toys.mixture_modes(target)
    metrics.mode_stats(x, centers, stds)["modes"]     # 25
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from gan2flow import _checks

tfd = tfp.distributions

__all__ = [
    "gaussian_mixture",
    "get",
    "grid25",
    "mixture_modes",
    "names",
    "random_mixture",
    "ring8",
    "sample",
]


def gaussian_mixture(means, stds, weights=None):
    """A mixture of axis-aligned Gaussians, as a tfp ``MixtureSameFamily``.

    p(x) = Σ_k w_k N(x; μ_k, diag(s_k²))

    Args:
      means: array [K, d], the mode centres μ_k.
      stds: positive standard deviations: a scalar (all modes, all dims), shape [K] (isotropic per
        mode) or [K, d] (per mode and dimension).
      weights: optional non-negative array [K] with a positive sum (normalised here); default equal.

    Returns:
      ``tfd.MixtureSameFamily`` over float32 events of shape [d], batch shape [].

    Raises:
      ValueError: ``means`` not rank 2 or empty, ``stds`` of another shape or not positive,
        ``weights`` not shape [K], negative or summing to 0, or any value not finite.

    Example::

        p = gaussian_mixture([[0., 0.], [3., 0.]], 0.5, weights=[1, 3])
        p.log_prob([[0., 0.]])
    """
    means = _checks.as_float64(means, "means")
    if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
        raise ValueError(
            f"`means` must have shape [K, d] with K >= 1 and d >= 1, got shape {means.shape}."
        )
    n_modes, dim = means.shape
    stds = _checks.as_float64(stds, "stds")
    if stds.ndim == 0:
        scale = np.full((n_modes, dim), float(stds))
    elif stds.shape == (n_modes,):
        scale = np.repeat(stds[:, None], dim, axis=1)
    elif stds.shape == (n_modes, dim):
        scale = stds.copy()
    else:
        raise ValueError(
            f"`stds` must be a scalar, shape [K]=({n_modes},) or [K, d]=({n_modes}, {dim}) "
            f"to match `means`, got shape {stds.shape}."
        )
    if np.any(scale <= 0):
        raise ValueError(f"`stds` must be positive, got minimum {scale.min()!r}.")
    probs = _normalized_weights(weights, n_modes, "weights")
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(probs=probs.astype(np.float32)),
        components_distribution=tfd.MultivariateNormalDiag(
            loc=means.astype(np.float32), scale_diag=scale.astype(np.float32)
        ),
    )


def _normalized_weights(weights, n_modes, name):
    if weights is None:
        return np.full(n_modes, 1.0 / n_modes)
    weights = _checks.as_float64(weights, name)
    if weights.shape != (n_modes,):
        raise ValueError(f"`{name}` must have shape [K]=({n_modes},), got shape {weights.shape}.")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"`{name}` must be non-negative with a positive sum, got {weights.tolist()!r}."
        )
    return weights / weights.sum()


def grid25():
    """25 equal-weight modes on {−4, −2, 0, 2, 4}², std 0.05.

    Centres in row-major order: (−4, −4), (−4, −2), ..., (4, 4).

    Returns:
      ``tfd.MixtureSameFamily`` (see :func:`gaussian_mixture`), events of shape [2].

    Example::

        grid25().sample(5, seed=(0, 1)).shape   # (5, 2)
    """
    values = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    means = np.stack(np.meshgrid(values, values, indexing="ij"), axis=-1).reshape(25, 2)
    return gaussian_mixture(means, 0.05)


def ring8():
    """8 equal-weight modes on the circle of radius 2, std 0.05.

    Centre k = 0..7 is (2 cos(2πk/8), 2 sin(2πk/8)); the first is (2, 0).

    Returns:
      ``tfd.MixtureSameFamily`` (see :func:`gaussian_mixture`), events of shape [2].

    Example::

        ring8().mean()   # ≈ (0, 0)
    """
    angles = 2.0 * np.pi * np.arange(8) / 8.0
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return gaussian_mixture(means, 0.05)


def random_mixture(dim, n_modes, *, spread=4.0, std=0.5, seed=0):
    """Equal-weight isotropic mixture in ``dim`` dimensions with random centres.

    μ_k ~ Uniform([−spread, spread]^dim), drawn with ``numpy.random.default_rng(seed)`` (so the same
    seed gives the same target on every platform); every mode has std ``std`` in every dimension.

    Args:
      dim: int ≥ 1, event dimension d.
      n_modes: int ≥ 1, number of modes K.
      spread: positive half-width of the cube the centres are drawn from.
      std: positive per-mode standard deviation.
      seed: int ≥ 0 for the centres.

    Returns:
      ``tfd.MixtureSameFamily`` (see :func:`gaussian_mixture`), events of shape [dim].

    Raises:
      ValueError: non-positive ``dim``/``n_modes``/``spread``/``std`` or a negative ``seed``.

    Example::

        target = random_mixture(16, 10, seed=1)
    """
    dim = _checks.positive_int(dim, "dim")
    n_modes = _checks.positive_int(n_modes, "n_modes")
    spread = _checks.positive_float(spread, "spread")
    std = _checks.positive_float(std, "std")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    rng = np.random.default_rng(seed)
    means = rng.uniform(-spread, spread, size=(n_modes, dim))
    return gaussian_mixture(means, std)


def mixture_modes(distribution):
    """Centres, isotropic stds and weights of a Gaussian mixture.

    Args:
      distribution: a ``tfd.MixtureSameFamily`` whose components have a vector event (any
        Gaussian family with ``mean()`` and ``stddev()``, e.g. ``MultivariateNormalDiag``), batch
        shape [] — what the builders of this module return.

    Returns:
      ``(centers, stds, weights)``: float64 NumPy arrays of shapes [K, d], [K] and [K]. ``stds[k]``
      is the mode's std when it is isotropic, else the mean of its per-dimension stds.

    Raises:
      TypeError: ``distribution`` is not a ``tfd.MixtureSameFamily``.
      ValueError: it has a batch shape or a non-vector event.

    Example::

        centers, stds, weights = mixture_modes(grid25())   # (25, 2), (25,), (25,)
    """
    if not isinstance(distribution, tfd.MixtureSameFamily):
        raise TypeError(
            "`distribution` must be a tfp.distributions.MixtureSameFamily, "
            f"got {type(distribution).__name__}."
        )
    if distribution.batch_shape.rank != 0 or distribution.event_shape.rank != 1:
        raise ValueError(
            "`distribution` must have batch shape [] and event shape [d], got batch shape "
            f"{distribution.batch_shape} and event shape {distribution.event_shape}."
        )
    components = distribution.components_distribution
    centers = np.asarray(components.mean(), dtype=np.float64)
    stds = np.asarray(components.stddev(), dtype=np.float64).mean(axis=-1)
    weights = np.asarray(distribution.mixture_distribution.probs_parameter(), dtype=np.float64)
    return centers, stds, weights


def sample(distribution, n, seed=0):
    """Draw ``n`` samples reproducibly.

    Uses tfp's stateless sampling with the seed pair (0, ``seed``) (for ``seed`` < 2**31): the same call
    gives the same array in any process (on the same kind of device), whatever ran before it.

    Args:
      distribution: any tfp distribution with a vector event, e.g. from :func:`get`.
      n: int ≥ 1.
      seed: int ≥ 0.

    Returns:
      float32 ``np.ndarray`` of shape [n, *event_shape].

    Raises:
      ValueError: ``n`` not a positive int or ``seed`` not an int in [0, 2**62).
      TypeError: ``distribution`` is not a tfp distribution.

    Example::

        x = sample(get("ring8"), 1000, seed=3)
    """
    n = _checks.positive_int(n, "n")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    if not isinstance(distribution, tfd.Distribution):
        raise TypeError(
            f"`distribution` must be a tfp.distributions.Distribution, got {type(distribution).__name__}."
        )
    if seed >= 2 ** 62:
        raise ValueError(f"`seed` must be an integer below 2**62, got {seed}.")
    # Stateless seed pair of int32 values; (0, seed) for every seed below 2**31.
    pair = tf.constant([seed >> 31, seed & (2 ** 31 - 1)], dtype=tf.int32)
    draws = distribution.sample(n, seed=pair)
    return np.asarray(draws, dtype=np.float32)


_BUILDERS = {"grid25": grid25, "ring8": ring8}


def names():
    """Sorted names accepted by :func:`get`, e.g. ``["grid25", "ring8"]``."""
    return sorted(_BUILDERS)


def get(name):
    """Build the named target distribution.

    Args:
      name: one of :func:`names` (``"grid25"``, ``"ring8"``).

    Returns:
      A fresh ``tfd.MixtureSameFamily`` (the builder's result, not the builder).

    Raises:
      ValueError: unknown ``name``.

    Example::

        target = get("grid25")
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be one of {names()}, got {name!r}.")
    _checks.one_of(name, "name", _BUILDERS)
    return _BUILDERS[name]()
