"""The comparison problems: a Gaussian-mixture target and a frozen affine generator with an exactly known law.

A :class:`Problem` pairs a target ``p`` (a tensorflow-probability Gaussian mixture) with a frozen generator
``G(z) = A z + b``, ``z ~ N(0, I)``, whose law ``q = N(b, A Aᵀ)`` is known, so the smoothed score difference
``v_σ = ∇log p_σ − ∇log q_σ`` is exact (:class:`gan2flow.AnalyticScoreDifference`): the reference every
estimated field of :mod:`gan2flow.experiments.compare` is measured against.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow_probability as tfp

from gan2flow import _checks, toys
from gan2flow import estimators as _estimators

tfd = tfp.distributions

#: Names accepted by :func:`problem`.
PROBLEMS = ("2d", "16d")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A target ``p`` (a Gaussian mixture) and a frozen affine generator ``G(z) = A z + b``.

    Attributes:
      name: a short label, e.g. ``"2d"``.
      target: ``p``, a ``tfd.MixtureSameFamily`` of diagonal Gaussians (from :mod:`gan2flow.toys`).
      source_loc: ``b``, float32 ``[d]``.
      source_scale: ``A``, float32 lower-triangular ``[d, d]``; ``q = N(b, A Aᵀ)``.
      sigma_range: ``(σ_min, σ_max)`` the discriminators are trained on (log-uniform) and flows span.
    """

    name: str
    target: object
    source_loc: np.ndarray
    source_scale: np.ndarray
    sigma_range: tuple

    @property
    def dim(self):
        """The event dimension d."""
        return int(self.source_loc.shape[0])

    @property
    def source(self):
        """``q = N(b, A Aᵀ)`` as a ``tfd.MultivariateNormalTriL``."""
        return tfd.MultivariateNormalTriL(loc=self.source_loc, scale_tril=self.source_scale)

    def exact(self):
        """The exact field: ``AnalyticScoreDifference(target, source)``."""
        return _estimators.AnalyticScoreDifference(self.target, self.source)


def problem(name):
    """Build a named comparison problem.

    * ``"2d"``: ``toys.ring8()`` (8 modes on the circle of radius 2, std 0.05) against
      ``q = N((0.3, −0.2), A Aᵀ)`` with ``A = [[1.5, 0], [0.5, 1.2]]``; σ ∈ [0.05, 2].
    * ``"16d"``: ``toys.random_mixture(16, 8, spread=2, std=0.5, seed=1)`` against ``q = N(0, 1.5² I)``;
      σ ∈ [0.1, 3].

    Args:
      name: one of :data:`PROBLEMS`.

    Returns:
      A :class:`Problem`.

    Raises:
      ValueError: an unknown name.
    """
    _checks.one_of(name, "name", PROBLEMS)
    if name == "2d":
        return Problem("2d", toys.ring8(), np.array([0.3, -0.2], np.float32),
                       np.array([[1.5, 0.0], [0.5, 1.2]], np.float32), (0.05, 2.0))
    dim = 16
    return Problem("16d", toys.random_mixture(dim, 8, spread=2.0, std=0.5, seed=1), np.zeros(dim, np.float32),
                   1.5 * np.eye(dim, dtype=np.float32), (0.1, 3.0))


def as_problem(value):
    """``value`` as a :class:`Problem`: a Problem as it is, a name in :data:`PROBLEMS` built.

    Raises:
      ValueError: anything else.
    """
    if isinstance(value, Problem):
        return value
    if isinstance(value, str):
        return problem(value)
    raise ValueError(f"`targets` entries must be names in {list(PROBLEMS)} or Problem objects, got {value!r}.")


def affine_generator(loc, scale_tril, name="affine_generator"):
    """A frozen Keras generator ``z -> A z + b`` (``z ~ N(0, I_d)``), whose samples follow ``N(b, A Aᵀ)``.

    Args:
      loc: ``b``, shape ``[d]``.
      scale_tril: ``A``, shape ``[d, d]``.
      name: the model name.

    Returns:
      A non-trainable ``keras.Model`` ``[batch, d] -> [batch, d]``.
    """
    loc = np.asarray(loc, np.float32)
    scale = np.asarray(scale_tril, np.float32)
    dim = loc.shape[0]
    if scale.shape != (dim, dim):
        raise ValueError(f"`scale_tril` must have shape [{dim}, {dim}] to match `loc`, got {scale.shape}.")
    z = keras.Input((dim,), name="z")
    dense = keras.layers.Dense(dim, name="affine")
    model = keras.Model(z, dense(z), name=name)
    dense.set_weights([scale.T, loc])  # row vectors: x = z Aᵀ + b
    model.trainable = False
    return model
