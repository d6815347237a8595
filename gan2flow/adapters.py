"""One adapter for what a user hands in: Keras models (objects or ``.keras`` paths) and ``.npy`` arrays.

Every entry point that accepts a user's model or data goes through here, so a model is loaded, its
inputs counted, its σ-conditioning inferred and its output normalised the same way everywhere
(estimators, training, losses, conversion, the command line):

- :func:`load_model`: a ``keras.Model`` or a path to a ``.keras`` file, with clear errors;
- :func:`load_array`: an array or a path to a ``.npy`` file of samples ``[n, ...]``;
- :func:`model_arity`, :func:`input_sample_shape`: what a model takes;
- :func:`sigma_conditioning`: whether a discriminator takes ``[x, sigma]`` (given, inferred, or contradicted);
- :func:`latent_shape`: a generator's latent shape (given or inferred);
- :func:`output_column`: a discriminator's raw output as ``[batch, 1]``;
- :func:`check_labels`, :func:`label_input`: integer class labels checked, and shaped for a class-conditional
  model's label input (``[n]``, ``[n, 1]`` or one-hot ``[n, K]``, whichever the model declares);
- conventions noticed instead of calibrated through silently: :func:`ends_in_sigmoid` (a discriminator
  that outputs probabilities, keras-io style, not logits) and :func:`check_ranges` (data in 0..255 for a
  tanh generator, say).

Each raises ``ValueError`` (``FileNotFoundError`` for a missing file) naming the argument.
"""
from __future__ import annotations

import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks

__all__ = ["load_model", "load_array", "model_arity", "input_sample_shape", "sigma_conditioning", "latent_shape",
           "output_column", "final_activation", "ends_in_sigmoid", "check_ranges", "check_labels", "label_input"]


def load_model(value, name):
    """A Keras model given as an object or a ``.keras`` path (clear errors for missing/corrupt files)."""
    if isinstance(value, keras.Model):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.exists(path):
            raise FileNotFoundError(f"`{name}`: no file at {path!r} (expected a .keras model file).")
        if not path.endswith(".keras"):
            raise ValueError(f"`{name}` must be a .keras model file, got {path!r}.")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"`{name}`: {path!r} is not a readable .keras model file ({first}).") from None
        if not isinstance(model, keras.Model):
            raise ValueError(f"`{name}`: {path!r} holds a {type(model).__name__}, expected a keras.Model.")
        return model
    raise ValueError(f"`{name}` must be a keras.Model or a path to a .keras file, got {type(value).__name__}.")


def load_array(value, name):
    """Samples ``[n, ...]`` as a finite float32 NumPy array, from an array or a ``.npy`` path.

    Raises:
        FileNotFoundError: a path with no file.
        ValueError: an unreadable file, an ``.npz`` archive, non-numbers, no batch axis, no rows or NaN/Inf.
    """
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        array = _read_npy(path, name, "a .npy array")
        if not isinstance(array, np.ndarray):  # an .npz archive
            raise ValueError(f"`{name}`: {path!r} holds several arrays (.npz); save one array with numpy.save.")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"`{name}`: {path!r} must hold numbers, got dtype {array.dtype}.")
        if array.ndim < 2 or len(array) == 0:
            raise ValueError(
                f"`{name}`: {path!r} must hold samples as rows, shape [n, ...] with n >= 1; got shape {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"`{name}`: {path!r} holds NaN or infinite values.")
        return array.astype(np.float32)
    return _checks.as_float_tensor(value, name, min_rank=2).numpy()


def _read_npy(path, name, expected):
    """``np.load(path)`` (no pickles), or a FileNotFoundError / ValueError naming ``name`` and what was expected."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{name}`: no file at {path!r} (expected {expected}).")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"`{name}`: {path!r} is not a readable .npy array ({first}).") from None


def model_arity(model):
    """How many inputs a Keras model declares (None for a model without Keras ``inputs``)."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        return len(inputs) if isinstance(inputs, (list, tuple)) else 1
    return None


def input_sample_shape(model):
    """The sample shape of a Keras model's x input (its only input, or the first of [x, sigma]); None if unknown."""
    try:
        structure = model.input
    except (AttributeError, ValueError):  # e.g. a Sequential model not called yet
        inputs = getattr(model, "inputs", None)
        if not inputs or len(inputs) != 1:
            return None
        structure = inputs[0]
    if isinstance(structure, (list, tuple)):
        structure = structure[0]
    shape = getattr(structure, "shape", None)
    return None if shape is None or isinstance(structure, dict) else tuple(shape[1:])


def sigma_conditioning(model, sigma_conditioned=None, name="discriminator", *, labelled=False):
    """Whether ``model`` takes ``[x, sigma]``: ``sigma_conditioned`` checked against its inputs, or inferred.

    With ``labelled`` the model is class-conditional and takes a label as its last input (``[x, label]`` or
    ``[x, sigma, label]``); the label input is not counted.

    Raises:
        ValueError: more than two inputs; None for a model without Keras ``inputs`` (cannot infer); or a
            value that contradicts the model's inputs.
    """
    arity = model_arity(model)
    if labelled and arity is not None:
        if arity not in (2, 3):
            raise ValueError(f"`{name}` must take [x, label] or [x, sigma, label] (class-conditional), got a model "
                             f"with {arity} input{'s' if arity != 1 else ''}.")
        arity -= 1
    if arity is not None and arity not in (1, 2):
        raise ValueError(f"`{name}` must take x or [x, sigma], got a model with {arity} inputs.")
    if sigma_conditioned is None:
        if arity is None:
            raise ValueError(
                "`sigma_conditioned` must be given (True or False) for a discriminator without Keras "
                f"`inputs` (got a {type(model).__name__}).")
        return arity == 2
    if arity is not None and bool(sigma_conditioned) != (arity == 2):
        raise ValueError(
            f"`sigma_conditioned`={bool(sigma_conditioned)} contradicts the {name}, which takes "
            f"{'[x, sigma] (2 inputs)' if arity == 2 else 'x only (1 input)'}; pass "
            f"sigma_conditioned={arity == 2} or None (inferred).")
    return bool(sigma_conditioned)


def latent_shape(generator, latent_dim=None):
    """A generator's latent shape (without batch): ``latent_dim`` checked, or inferred from its one input."""
    if latent_dim is not None:
        if isinstance(latent_dim, numbers.Integral):
            return (_checks.positive_int(latent_dim, "latent_dim"),)
        try:
            shape = tuple(int(_checks.positive_int(d, "latent_dim")) for d in latent_dim)
        except TypeError:
            raise ValueError(f"`latent_dim` must be an int or a shape tuple, got {latent_dim!r}.") from None
        if not shape:
            raise ValueError(f"`latent_dim` must be an int or a non-empty shape tuple, got {latent_dim!r}.")
        return shape
    inputs = getattr(generator, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ValueError(
            "`latent_dim` must be given: it cannot be inferred from a generator with "
            f"{'no Keras inputs' if not inputs else f'{len(inputs)} inputs'}.")
    shape = tuple(inputs[0].shape[1:])
    if not shape or any(d is None for d in shape):
        raise ValueError(
            f"`latent_dim` must be given: the generator input shape {tuple(inputs[0].shape)} is not fully defined.")
    return shape


def output_column(output, name):
    """A model's raw output as a [batch, 1] tensor: one output (a 1-element list/tuple/dict is unwrapped)
    of shape [batch, 1] or [batch]; anything else raises ValueError naming ``name``."""
    if isinstance(output, (list, tuple, dict)):
        if len(output) != 1:
            raise ValueError(f"`{name}` must return a single output (one raw output per sample), got {len(output)} "
                             "outputs.")
        output = list(output.values())[0] if isinstance(output, dict) else output[0]
    output = tf.convert_to_tensor(output)
    if output.shape.rank == 2 and output.shape[1] == 1:
        return output
    if output.shape.rank == 1:
        return output[:, None]
    raise ValueError(
        f"`{name}` must return one raw output per sample, shape [batch, 1] or [batch]; got shape "
        f"{tuple(output.shape)}.")


def final_activation(model):
    """The name of the activation a Keras model's last layer applies (``"sigmoid"``, ``"tanh"``, ...), looking
    into nested models; None where it cannot tell (a subclassed model without layers)."""
    layers = getattr(model, "layers", None) or []
    while layers and getattr(layers[-1], "layers", None):  # a nested model: look inside it
        layers = layers[-1].layers
    if not layers:
        return None
    activation = getattr(layers[-1], "activation", None)
    return getattr(activation, "__name__", None)


def ends_in_sigmoid(model):
    """Whether a Keras model's last layer squashes its output through a sigmoid (it outputs probabilities:
    ``Dense(1, activation="sigmoid")`` or ``Activation("sigmoid")``, keras-io style)."""
    return final_activation(model) == "sigmoid"


_BOUNDED = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}


def check_ranges(real, fake, *, generator=None, real_name="real_data", fake_name="generator"):
    """Refuse data and generator samples on different scales (uint8 images in 0..255 for a tanh generator):
    ``ValueError`` naming both ranges.

    Two checks, both on the 0.1 %–99.9 % quantiles of all values: a generator whose last activation bounds
    its output (tanh: [−1, 1], sigmoid: [0, 1]) cannot reach data beyond that bound by more than a quarter
    of its width; and at least half of the generator's values must lie within the data's range widened by
    half its span on each side. (A generator whose samples are merely narrower than the data, e.g. a
    mode-collapsed one, passes.)
    """
    real_low, real_high = (float(v) for v in np.quantile(np.asarray(real, np.float64), [0.001, 0.999]))
    fake = np.asarray(fake, np.float64)
    fake_low, fake_high = (float(v) for v in np.quantile(fake, [0.001, 0.999]))
    message = (f"`{real_name}` and `{fake_name}` samples live on different scales: `{real_name}` values span "
               f"[{real_low:.4g}, {real_high:.4g}], `{fake_name}` samples [{fake_low:.4g}, {fake_high:.4g}]")
    advice = " Pass the data the way the GAN was trained on it (e.g. images scaled to [-1, 1] for a tanh generator)."
    bound = _BOUNDED.get(final_activation(generator)) if generator is not None else None
    if bound is not None:
        margin = 0.25 * (bound[1] - bound[0])
        if real_low < bound[0] - margin or real_high > bound[1] + margin:
            raise ValueError(f"{message}, and the generator ends in {final_activation(generator)} (outputs in "
                             f"[{bound[0]:g}, {bound[1]:g}]).{advice}")
    span = max(real_high - real_low, 1e-12)
    inside = np.mean((fake >= real_low - 0.5 * span) & (fake <= real_high + 0.5 * span))
    if inside < 0.5:
        raise ValueError(f"{message}: only {inside:.0%} of the generator's values fall near the data's range.{advice}")


def check_labels(labels, n, name="labels", n_classes=None):
    """Integer class labels for ``n`` rows as an int32 NumPy array ``[n]`` (an int gives every row that class).

    Args:
        labels: an int, or an array (or ``.npy`` path) of ``n`` integer labels (shape ``[n]`` or ``[n, 1]``).
        n: the number of rows the labels are for.
        name: the argument's name in error messages.
        n_classes: the number of classes; labels must lie in ``0 … n_classes − 1`` (None: only ≥ 0).

    Raises:
        ValueError: non-integers, negative labels or labels ≥ ``n_classes``, or not one label per row.
        FileNotFoundError: a path with no file.
    """
    if isinstance(labels, (str, os.PathLike)):
        labels = _read_npy(os.fspath(labels), name, "a .npy array of integer labels")
    if isinstance(labels, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be an integer class or an array of integer classes, got {labels!r}.")
    if isinstance(labels, numbers.Integral):
        labels = np.full(n, int(labels), np.int64)
    array = np.asarray(labels.numpy() if isinstance(labels, tf.Tensor) else labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"`{name}` must hold integer class labels, got dtype {array.dtype}.")
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"`{name}` must hold one integer label per row, shape [{n}], got shape {array.shape}.")
    if array.size and array.min() < 0:
        raise ValueError(f"`{name}` must be class indices >= 0, got {int(array.min())}.")
    if n_classes is not None and array.size and array.max() >= n_classes:
        raise ValueError(f"`{name}` must be class indices below n_classes={n_classes}, got {int(array.max())}.")
    return array.astype(np.int32)


def label_input(model, labels, n_classes=None):
    """Labels shaped for a class-conditional model's label input (its last Keras input).

    An input declared ``[batch]`` gets labels ``[batch]``, ``[batch, 1]`` gets a column (integer or float as the
    input's dtype), ``[batch, K]`` with K > 1 gets one-hot rows (K classes). A model without Keras ``inputs``
    gets an int32 column.

    Args:
        model: the Keras model (a generator ``[z, label]`` or discriminator ``[x, (sigma,) label]``).
        labels: integer tensor ``[batch]``.
        n_classes: checked against a one-hot input's width when given.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    inputs = getattr(model, "inputs", None)
    spec = inputs[-1] if inputs else None
    shape = getattr(spec, "shape", None)
    if shape is None or len(shape) < 1:
        return labels[:, None]
    dtype = tf.as_dtype(getattr(spec, "dtype", None) or "float32")
    if len(shape) == 1:
        return tf.cast(labels, dtype)
    width = shape[-1]
    if len(shape) == 2 and width is not None and width > 1:
        if n_classes is not None and width != n_classes:
            raise ValueError(f"the model's label input takes one-hot rows of {width} classes, but the labels have "
                             f"{n_classes} classes (pass n_classes={width}).")
        return tf.one_hot(labels, width, dtype=dtype if dtype.is_floating else tf.float32)
    return tf.cast(labels[:, None], dtype)
