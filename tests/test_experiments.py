"""The experiments sub-package: apart from the library, its old names deprecated, and the demo GAN's losses.

``import gan2flow`` is checked in a subprocess (this test session has imported the experiments
already); the old names ``gan2flow.compare`` / ``.demo`` / ``.digits`` must still resolve, with a
DeprecationWarning naming the new place.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import gan2flow
from gan2flow import datasets, toys
from gan2flow.experiments import compare, demo, digits


def test_import_gan2flow_loads_neither_the_experiments_nor_the_cli():
    script = ("import sys, gan2flow; print(sorted(m for m in sys.modules if m.startswith('gan2flow.') "
              "and (m.startswith('gan2flow.experiments') or m == 'gan2flow.cli')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name, module", [("compare", compare), ("demo", demo), ("digits", digits)])
def test_old_experiment_names_warn_and_resolve(name, module):
    with pytest.warns(DeprecationWarning, match=f"gan2flow.experiments.{name}"):
        assert getattr(gan2flow, name) is module
    assert name not in gan2flow.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        gan2flow.no_such_name  # noqa: B018 - the attribute lookup is what raises


def test_digits_load_is_the_library_loader():
    assert digits.load is datasets.load_digits


@pytest.mark.parametrize("loss", ["wasserstein", "logistic"])
def test_train_plain_gan_runs_a_few_steps(loss):
    # wasserstein adds the WGAN-GP penalty, whose interpolation used to get a per-step tensor seed
    # that losses.gradient_penalty rejects; a few steps on a small batch must give finite models.
    real = toys.sample(toys.get("grid25"), 256, seed=0)
    generator, discriminator = demo.train_plain_gan(real, loss=loss, steps=3, batch_size=32, hidden=(16,), seed=1)
    samples = generator(np.zeros((4, 8), np.float32)).numpy()
    assert samples.shape == (4, 2) and np.all(np.isfinite(samples))
    assert np.all(np.isfinite(discriminator(real[:4]).numpy()))
