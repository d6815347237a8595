"""gan2flow.resume: settings checks, fingerprints, the seeded epoch shuffle, the epoch log, convert's backup.

The kill -9 end-to-end runs live in test_cli.py and test_reliability.py (slow); these check the pieces.
"""
import hashlib
import json
import os

import keras
import numpy as np
import pytest

from gan2flow import resume


def test_fingerprints(rng):
    x = rng.normal(size=(50, 3)).astype(np.float32)
    assert resume.content_hash(x) == hashlib.sha1(x.tobytes()).hexdigest()[:16]
    assert resume.content_hash(x) != resume.content_hash(x[::-1].copy())
    assert resume.fingerprint(x).startswith("(50, 3):float32:")
    assert resume.fingerprint(x) != resume.fingerprint(x.astype(np.float64))
    # every element is hashed below 10⁶ elements: shape, dtype, then the SHA-1 of the bytes (hand-computed)
    assert resume.fingerprint(x) == f"(50, 3):float32:{hashlib.sha1(x.tobytes()).hexdigest()[:16]}"


def test_changed_settings(tmp_path):
    folder = tmp_path / "backup"
    settings = {"seed": 0, "sigma_range": (0.1, 1.0), "loss": "logistic"}
    assert resume.changed_settings(folder, settings) == []           # nothing saved
    path = resume.write_settings(folder, settings)
    assert path == os.path.join(str(folder), resume.SETTINGS_FILE)
    assert resume.changed_settings(folder, settings) == []           # tuples compare as the lists saved
    assert resume.changed_settings(folder, dict(settings, seed=1, extra=2)) == ["extra", "seed"]
    assert resume.changed_settings(folder, {"seed": 0}) == ["loss", "sigma_range"]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("{not json")
    assert resume.changed_settings(folder, settings) == ["loss", "seed", "sigma_range"]


def test_epoch_batches_resumed_at_an_epoch_equal_the_uninterrupted_tail():
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    whole = [batch.numpy() for batch in resume.epoch_batches(data, 3, seed=4, first_epoch=0, epochs=3)]
    tail = [batch.numpy() for batch in resume.epoch_batches(data, 3, seed=4, first_epoch=1, epochs=3)]
    assert len(whole) == 9 and len(tail) == 6                        # 10 // 3 full batches per epoch
    np.testing.assert_array_equal(np.stack(whole[3:]), np.stack(tail))
    first_epoch = np.concatenate(whole[:3])
    assert len(np.unique(first_epoch[:, 0])) == 9                     # a permutation, one row dropped
    assert not np.array_equal(np.concatenate(whole[:3]), np.concatenate(whole[3:6]))  # reshuffled per epoch
    other_seed = [batch.numpy() for batch in resume.epoch_batches(data, 3, seed=5, first_epoch=0, epochs=1)]
    assert not np.array_equal(np.concatenate(other_seed), first_epoch)


def test_epoch_log_survives_a_restart_and_restores_the_noise_state(tmp_path):
    path = tmp_path / "epochs.json"
    state = keras.Variable(np.array([1, 2], np.int64))
    log = resume.EpochLog(path, state)
    log.on_epoch_end(0, {"loss": 1.0})
    state.assign(np.array([3, 4], np.int64))
    log.on_epoch_end(1, {"loss": 0.5})
    log.on_epoch_end(2, {"loss": 0.25})

    again = resume.EpochLog(path, state)                              # the resumed process reads the file
    assert again.history() == {"loss": [1.0, 0.5, 0.25]}
    again.restore(1)                                                  # resume at epoch 1: state after epoch 0
    np.testing.assert_array_equal(np.asarray(state), [1, 2])
    again.on_epoch_end(1, {"loss": 0.4})                              # epoch 1 rerun: later entries dropped
    assert again.history() == {"loss": [1.0, 0.4]}
    assert json.loads(path.read_text())["1"]["noise_state"] == [1, 2]


def test_calibration_backup_refuses_other_settings_and_remove_backup_keeps_other_files(tmp_path):
    folder = tmp_path / "backup"
    callback = resume.calibration_backup(folder, {"steps": 10})
    assert isinstance(callback, keras.callbacks.BackupAndRestore)
    resume.calibration_backup(folder, {"steps": 20})                  # settings but no weights: start over
    (folder / "latest.weights.h5").write_bytes(b"weights")
    with pytest.raises(ValueError, match=r"interrupted calibration with other settings \(steps\)"):
        resume.calibration_backup(folder, {"steps": 30})
    resume.calibration_backup(folder, {"steps": 20})                  # the same settings: resume
    (folder / "notes.txt").write_text("mine")
    resume.remove_backup(folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    os.remove(folder / "notes.txt")
    resume.remove_backup(folder)
    assert not folder.exists()
