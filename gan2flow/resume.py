"""Resumable training: back a Keras ``fit`` up after every epoch, and resume it after a kill.

One place for what ``gan2flow train`` and :func:`gan2flow.convert` (``backup_dir``) need to pick an
interrupted run up where it stopped, even after ``kill -9``:

- a backup folder holding ``keras.callbacks.BackupAndRestore``'s files (weights, optimizer state,
  epoch; the previous backup kept too, in case a kill lands mid-write) and ``settings.json``, the
  settings the run was started with: :func:`changed_settings` names those that differ, so a rerun
  with other settings is refused instead of silently mixing two runs (:func:`write_settings`);
- fingerprints of the data, part of those settings: :func:`fingerprint` (shape, dtype and a hash of
  up to 10⁶ strided elements) and :func:`content_hash` (a hash of every byte);
- :func:`restore_backup`: the backup callback and the epoch to resume at, known *before* the data
  pipeline is built, so that :func:`epoch_batches` gives epoch k the same shuffle (seeded by
  (seed, k)) as an uninterrupted run;
- :class:`EpochLog`: every epoch's logs (and optionally a noise generator's state), kept in a JSON
  file that survives the resume, so the history neither skips nor repeats an epoch;
- :func:`calibration_backup` and :func:`remove_backup`: convert's backup, refusing other settings,
  and its removal once the calibration is done.

Example::

    backup, start = resume.restore_backup(model, "out/backup")     # start = 0 for a fresh run
    log = resume.EpochLog("out/backup/epochs.json")
    model.fit(resume.epoch_batches(x, 64, seed=0, first_epoch=start, epochs=10), epochs=10,
              steps_per_epoch=len(x) // 64, callbacks=[log, backup])
"""
from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np

from gan2flow import _io

__all__ = [
    "BACKUP_FILES",
    "SETTINGS_FILE",
    "fingerprint",
    "content_hash",
    "changed_settings",
    "write_settings",
    "restore_backup",
    "epoch_batches",
    "EpochLog",
    "calibration_backup",
    "remove_backup",
]

#: The settings a backup was made with, in the backup folder.
SETTINGS_FILE = "settings.json"
#: What a calibration backup consists of: BackupAndRestore's files (double_checkpoint) and the settings.
BACKUP_FILES = ("latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json",
                "training_metadata.json.bkp", SETTINGS_FILE)


def fingerprint(array):
    """Shape, dtype and a SHA-1 of (at most 10⁶ evenly strided elements of) an array, as one string."""
    flat = np.ascontiguousarray(array).reshape(-1)
    strided = np.ascontiguousarray(flat[::max(1, flat.size // 1_000_000)])
    return f"{array.shape}:{array.dtype}:{hashlib.sha1(strided.tobytes()).hexdigest()[:16]}"


def content_hash(array):
    """The first 16 hex digits of the SHA-1 of every byte of a NumPy array (C order)."""
    return hashlib.sha1(array.tobytes()).hexdigest()[:16]


def changed_settings(backup_dir, settings):
    """The sorted names of ``settings`` whose values differ from those saved in ``backup_dir``.

    A name missing on one side counts as changed; settings are compared as they read back from JSON
    (tuples as lists). Returns [] when nothing was saved there. An unreadable ``settings.json``
    (not JSON) differs in every name.
    """
    path = os.path.join(os.fspath(backup_dir), SETTINGS_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        previous = None
    settings = json.loads(json.dumps(settings, default=lambda value: np.asarray(value).tolist()))  # as it reads back
    if previous == settings:
        return []
    previous = previous if isinstance(previous, dict) else {}
    return sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))


def write_settings(backup_dir, settings):
    """Save ``settings`` (JSON) in ``backup_dir`` atomically, creating the folder; returns the file's path."""
    return _io.write_json(os.path.join(os.fspath(backup_dir), SETTINGS_FILE), settings)


def restore_backup(model, backup_dir):
    """Restore ``model`` from a backup in ``backup_dir`` now, before ``fit``: (callback, first epoch).

    The callback is a ``keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)`` to pass
    to ``fit``; it already put back the weights, optimizer state and epoch of an interrupted run, and
    ``first epoch`` is the epoch to resume at (0 for a fresh run). Knowing it before ``fit`` lets the
    data pipeline start at that epoch (:func:`epoch_batches`). The folder is created.
    """
    backup = keras.callbacks.BackupAndRestore(os.fspath(backup_dir), double_checkpoint=True)
    backup.set_model(model)
    backup.on_train_begin()
    os.makedirs(backup_dir, exist_ok=True)
    return backup, int(getattr(model, "_initial_epoch", None) or 0)


def epoch_batches(data, batch_size, seed, *, first_epoch, epochs):
    """Batches of ``data`` for epochs ``first_epoch .. epochs − 1``, each epoch's order seeded by (seed, epoch).

    Epoch k is a permutation of ``data`` drawn from ``tf.random.stateless_uniform`` keyed by
    (``seed``, k), cut into ``len(data) // batch_size`` full batches: a run resumed at epoch k sees
    exactly the batches an uninterrupted run sees from k on. Returns a prefetched ``tf.data.Dataset``.
    """
    import tensorflow as tf

    samples = tf.constant(data)

    def one_epoch(epoch):
        order = tf.argsort(tf.random.stateless_uniform([len(data)], seed=tf.stack([tf.constant(seed, tf.int64),
                                                                                    epoch])))
        shuffled = tf.data.Dataset.from_tensor_slices(tf.gather(samples, order))
        return shuffled.batch(batch_size, drop_remainder=True)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).prefetch(2)


class EpochLog(keras.callbacks.Callback):
    """A Keras callback keeping every epoch's logs in ``path`` (JSON), so they survive a resumed run.

    Pass it before ``BackupAndRestore`` in ``callbacks``: if the run is killed between the two at an
    epoch's end, that epoch is repeated on resume and its entry overwritten, so the log never skips or
    repeats an epoch. With ``noise_state`` (a variable, e.g. a ``keras.random.SeedGenerator``'s state,
    which is not part of the weights) it also records its value after each epoch, and
    :meth:`restore` puts back the value recorded after ``epoch − 1``.

    Attributes:
        epochs: {epoch: {"logs": {name: float}, "noise_state": [...]}} read from ``path`` if it exists.
    """

    def __init__(self, path, noise_state=None):
        super().__init__()
        self.path = os.fspath(path)
        self.noise_state = noise_state
        self.epochs = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as handle:
                self.epochs = {int(k): v for k, v in json.load(handle).items()}

    def restore(self, epoch):
        """Put back the noise state recorded after ``epoch − 1`` (resuming at ``epoch``)."""
        entry = self.epochs.get(epoch - 1, {})
        if self.noise_state is not None and "noise_state" in entry:
            self.noise_state.assign(np.asarray(entry["noise_state"], self.noise_state.dtype))

    def history(self):
        """{log name: [value per epoch]} over the epochs recorded so far, in epoch order."""
        epochs = [self.epochs[k]["logs"] for k in sorted(self.epochs)]
        return {name: [entry.get(name) for entry in epochs] for name in (epochs[0] if epochs else {})}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = {k: v for k, v in self.epochs.items() if k < epoch}
        entry = {"logs": {name: float(value) for name, value in (logs or {}).items()}}
        if self.noise_state is not None:
            entry["noise_state"] = np.asarray(self.noise_state).tolist()
        self.epochs[epoch] = entry
        _io.write_json(self.path, {str(k): v for k, v in sorted(self.epochs.items())})


def calibration_backup(backup_dir, settings):
    """A ``BackupAndRestore`` for convert's calibration in ``backup_dir``, refusing a backup made with other settings.

    Writes ``settings`` to the folder. A folder with settings but no weights holds nothing to resume
    and is started over. The callback keeps its files when training ends (``delete_checkpoint=False``):
    :func:`remove_backup` deletes them once the calibration is done.

    Raises:
        ValueError: the folder holds a backup made with other settings (named in the message).
    """
    backup_dir = os.fspath(backup_dir)
    saved = any(os.path.exists(os.path.join(backup_dir, name)) for name in BACKUP_FILES[:2])
    changed = changed_settings(backup_dir, settings) if saved else []  # (settings without a backup: start over)
    if changed:
        raise ValueError(
            f"`backup_dir`: {backup_dir!r} holds an interrupted calibration with other settings "
            f"({', '.join(changed) or 'unreadable settings.json'}); call convert with the same arguments to "
            "resume it, or delete that folder to start over.")
    write_settings(backup_dir, settings)
    return keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True, delete_checkpoint=False)


def remove_backup(backup_dir):
    """Delete the backup files :func:`calibration_backup` and its callback wrote (only those), then the folder if
    empty."""
    for name in BACKUP_FILES:
        try:
            os.remove(os.path.join(backup_dir, name))
        except OSError:  # already gone
            pass
    try:
        os.rmdir(backup_dir)
    except OSError:  # it holds other files: leave it
        pass
