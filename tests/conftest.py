"""Shared test set-up: quiet TensorFlow logs, deterministic seeds, the reliability kit (tests/_helpers.py)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    """Small models, arrays and files for the tables of bad calls (built once; no test changes them)."""
    import _helpers

    return _helpers.make_kit(tmp_path_factory.mktemp("reliability"))
