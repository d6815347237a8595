"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) whose message names the
argument, what was expected and what was found, before any work is done.
"""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

__all__: list[str] = []


def as_float_tensor(value, name, *, min_rank=None, rank=None, check_finite=True):
    """Convert ``value`` to a float32 tensor, checking rank and (eagerly) finiteness."""
    if value is None:
        raise ValueError(f"`{name}` must be an array of numbers, got None.")
    if isinstance(value, tf.Tensor) or isinstance(value, tf.Variable):
        tensor = value if value.dtype == tf.float32 else tf.cast(value, tf.float32)
    else:
        array = np.asarray(value)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
        ):
            raise ValueError(
                f"`{name}` must be a numeric array, got dtype {array.dtype} "
                f"(type {type(value).__name__})."
            )
        if np.iscomplexobj(array):
            raise ValueError(f"`{name}` must be real-valued, got complex dtype {array.dtype}.")
        tensor = tf.convert_to_tensor(array.astype(np.float32, copy=False))
    shape_rank = tensor.shape.rank
    if rank is not None and shape_rank is not None and shape_rank != rank:
        raise ValueError(
            f"`{name}` must have rank {rank}, got shape {tuple(tensor.shape)} (rank {shape_rank})."
        )
    if min_rank is not None and shape_rank is not None and shape_rank < min_rank:
        raise ValueError(
            f"`{name}` must have rank >= {min_rank} (a batch axis first), "
            f"got shape {tuple(tensor.shape)}."
        )
    if check_finite and tf.executing_eagerly():
        finite = tf.math.is_finite(tensor)
        if not bool(tf.reduce_all(finite)):
            bad = int(tf.size(tensor) - tf.math.count_nonzero(finite, dtype=tf.int32))
            raise ValueError(
                f"`{name}` must be finite, found {bad} NaN/Inf value(s) in shape {tuple(tensor.shape)}."
            )
    return tensor


def positive_float(value, name, *, allow_zero=False):
    """A finite positive (or non-negative) Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray, tf.Tensor)):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    number = float(np.asarray(value))
    if not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        expected = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"`{name}` must be {expected} finite number, got {number!r}.")
    return number


def positive_int(value, name, *, allow_zero=False):
    """A positive (or non-negative) Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral,)):
        raise ValueError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    number = int(value)
    if number < 0 or (number == 0 and not allow_zero):
        expected = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"`{name}` must be an integer {expected}, got {number}.")
    return number


def shapes_compatible(found, expected):
    """Same rank, and equal sizes on every axis where both are known (None is unknown)."""
    found, expected = tuple(found), tuple(expected)
    return len(found) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(found, expected, strict=False))


def one_of(value, name, choices):
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")
    return value


def same_trailing_shape(a, b, name_a, name_b):
    """Two batches must agree on every axis but the first."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape after the batch axis, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}."
        )


# Float64 NumPy arrays for evaluation code (metrics, image_metrics, toys), outside any graph


def as_float64(value, name, *, rank=None, min_rank=None):
    """Check kind and rank as :func:`as_float_tensor` does, then convert to float64 and check finiteness.

    That check converts to float32; the values used here are taken from ``value`` directly so a
    float64 input keeps its precision.
    """
    try:
        as_float_tensor(value, name, rank=rank, min_rank=min_rank, check_finite=False)
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        if str(error).startswith(f"`{name}`"):
            raise
        raise ValueError(
            f"`{name}` must be a rectangular numeric array, got {type(value).__name__}: {error}"
        ) from error
    finite = np.isfinite(array)
    if not np.all(finite):
        bad = int(array.size - np.count_nonzero(finite))
        raise ValueError(
            f"`{name}` must be finite, found {bad} NaN/Inf value(s) in shape {array.shape}."
        )
    return array


def float64_samples(value, name, *, min_points=1):
    """A sample [n, ...] as a float64 matrix [n, D]."""
    array = as_float64(value, name, min_rank=2)
    if array.shape[0] < min_points:
        raise ValueError(
            f"`{name}` must hold at least {min_points} sample(s) along axis 0, got shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError(f"`{name}` must have non-empty trailing axes, got shape {array.shape}.")
    return array.reshape(array.shape[0], -1)


def float64_sample_pair(x, y, name_x="x", name_y="y", *, min_points=1):
    """Two samples [n, ...] and [m, ...] with equal trailing shapes as float64 matrices [n, D], [m, D]."""
    x_array = as_float64(x, name_x, min_rank=2)
    y_array = as_float64(y, name_y, min_rank=2)
    same_trailing_shape(x_array, y_array, name_x, name_y)
    return (float64_samples(x_array, name_x, min_points=min_points),
            float64_samples(y_array, name_y, min_points=min_points))
