"""Counter-based random numbers: element (seed, step, global row, coordinate) always draws the same value.

However a batch is split into chunks, progress-bar segments, refinement phases or replicas, every
element gets the noise of one uninterrupted pass (shared/STYLE.md). Integer mixing in int64, valid
under XLA.
"""
from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["counter_normal", "counter_uniform"]


_MASK32 = 0xFFFFFFFF


def _mix32(value):
    """lowbias32 integer hash on the low 32 bits of an int64 tensor."""
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 16))
    value = tf.bitwise.bitwise_and(value * 0x7FEB352D, _MASK32)
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 15))
    value = tf.bitwise.bitwise_and(value * 0x846CA68B, _MASK32)
    return tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, 16))


def _counter_hash(shape, seed, step, offset):
    """One 32-bit hash (in an int64 tensor [rows, width]) per element of rows ``offset ..``."""
    rows = shape[0]
    width = tf.reduce_prod(shape[1:])
    row_index = tf.cast(offset, tf.int64) + tf.range(tf.cast(rows, tf.int64), dtype=tf.int64)
    columns = tf.range(tf.cast(width, tf.int64), dtype=tf.int64)
    element = row_index[:, None] * tf.cast(width, tf.int64) + columns[None, :]
    key = _mix32(tf.bitwise.bitwise_and(
        tf.cast(seed, tf.int64) * 0x9E3779B1 + tf.cast(step, tf.int64) * 0x85EBCA77 + 0x165667B1, _MASK32
    ))
    low = tf.bitwise.bitwise_and(element, _MASK32)
    high = tf.bitwise.right_shift(element, 32)
    return _mix32(tf.bitwise.bitwise_xor(_mix32(tf.bitwise.bitwise_xor(low, key)), high))


def counter_normal(shape, seed, step, offset):
    """Standard normal noise for rows ``offset .. offset + shape[0]`` of a flow at ``step``.

    Deterministic in (seed, step, global row index, coordinate): chunked and sharded flows draw the
    same noise as a single pass. Box–Muller on two 32-bit hashes.
    """
    first = _counter_hash(shape, seed, step, offset)
    second = _mix32(tf.bitwise.bitwise_xor(first, 0x68E31DA4))
    scale = 1.0 / 4294967296.0
    uniform_1 = (tf.cast(first, tf.float32) + 0.5) * scale
    uniform_2 = (tf.cast(second, tf.float32) + 0.5) * scale
    normal = tf.sqrt(-2.0 * tf.math.log(uniform_1)) * tf.cos(2.0 * math.pi * uniform_2)
    return tf.reshape(normal, shape)


def counter_uniform(shape, seed, step, offset):
    """Uniform noise on (0, 1) with the keying of :func:`counter_normal` (seed, step, global row, coordinate).

    24-bit resolution, so every value is exact in float32 and strictly inside (0, 1). Used where draws
    must not depend on how a batch is split (``SDGAN(replica_invariant_noise=True)``).
    """
    first = _counter_hash(shape, seed, step, offset)
    uniform = (tf.cast(tf.bitwise.right_shift(first, 8), tf.float32) + 0.5) * (1.0 / 16777216.0)
    return tf.reshape(uniform, shape)
