"""Atomic file output: write to a temporary file in the same folder, then rename over the target."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

__all__ = ["atomic_write", "write_json", "write_text", "save_npy"]


def atomic_write(path, write, suffix):
    """Call ``write(temporary)`` on a temporary file beside ``path``, then rename it over ``path``.

    A killed process leaves either the old file or the new one, never half a file. ``suffix`` is the
    temporary file's extension (some writers, e.g. ``keras.Model.save``, insist on one). The folder
    is created; the file gets the usual permissions (0666 less the umask). Returns the absolute path.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path




def write_json(path, data):
    """Write ``data`` as indented JSON, atomically."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_to_builtin)
            handle.write("\n")
    return atomic_write(path, write, ".json")


def write_text(path, text):
    """Write text, atomically."""
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    return atomic_write(path, write, os.path.splitext(path)[1] or ".txt")


def save_npy(path, array):
    """``numpy.save`` atomically."""
    def write(temporary):
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(array))
    return atomic_write(path, write, ".npy")


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "numpy"):
        return np.asarray(value).tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
