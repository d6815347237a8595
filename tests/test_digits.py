"""Image metrics (closed forms, constructed cases, classifier cache) and a digits pipeline smoke run."""
import json
import os

import numpy as np
import pytest

from gan2flow import datasets, image_metrics
from gan2flow.experiments import digits

# ----------------------------------------------------------------------------------------------------
# Fréchet distance: closed forms


def test_frechet_distance_of_a_set_with_itself_is_zero(rng):
    features = rng.normal(size=(500, 8))
    # Both Gaussians are fitted to the same data, so FD is 0 up to the eigen-solver's round-off on a
    # trace of ~8 (gaussian_w2 documents ~1e-8·sqrt(tr C) for W2, i.e. ~1e-15 for W2²; 1e-9 is loose).
    assert image_metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_a_shift_is_the_squared_mean_difference(rng):
    features = rng.normal(size=(400, 6))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # A pure shift leaves the covariance unchanged, so FD = ‖μ1 − μ2‖² = 1 + 4 + 0.25 + 9 exactly
    # (float64 algebra on values of order 10: 1e-8 relative).
    assert image_metrics.frechet_distance(features, features + shift) == pytest.approx(14.25, rel=1e-8)


def test_frechet_distance_matches_the_gaussian_formula_for_scaled_features(rng):
    features = rng.normal(size=(300, 3))
    scaled = 2.0 * features + 1.0
    # Σ2 = 4 Σ1, μ2 = 2 μ1 + 1: FD = ‖μ1 − μ2‖² + tr Σ1 + tr(4 Σ1) − 2 tr(2 Σ1) = ‖μ1 + 1‖² + tr Σ1.
    mean, cov = features.mean(0), np.cov(features, rowvar=False)
    expected = np.sum((mean + 1.0) ** 2) + np.trace(cov)
    assert image_metrics.frechet_distance(features, scaled) == pytest.approx(expected, rel=1e-8)


def test_image_metrics_old_names_in_metrics_are_deprecated():
    from gan2flow import metrics

    for name in ("frechet_distance", "precision_recall", "nearest_distances", "image_features", "image_summary"):
        with pytest.warns(DeprecationWarning, match=f"gan2flow.image_metrics.{name}"):
            assert getattr(metrics, name) is getattr(image_metrics, name)
        assert name not in metrics.__all__
    with pytest.raises(AttributeError):
        metrics.no_such_metric  # noqa: B018 - the attribute lookup is what raises


def test_frechet_distance_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="`y`"):
        image_metrics.frechet_distance(rng.normal(size=(10, 3)), rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="`x`"):
        image_metrics.frechet_distance(np.full((10, 3), np.nan), rng.normal(size=(10, 3)))


# ----------------------------------------------------------------------------------------------------
# k-NN precision and recall: constructed cases


def test_precision_recall_identical_sets_are_one_one(rng):
    features = rng.normal(size=(200, 5))
    assert image_metrics.precision_recall(features, features.copy(), k=3) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_far_disjoint_sets_are_zero_zero(rng):
    real = rng.normal(size=(200, 5))
    fake = rng.normal(size=(150, 5)) + 100.0  # k-NN radii are a few units; the sets are 100·√5 apart
    assert image_metrics.precision_recall(real, fake, k=3) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_separate_quality_from_coverage(rng):
    real = rng.normal(size=(400, 2))
    # Fakes on one half of the real cloud only: all of them are realistic, half the reals are missed.
    fake = real[real[:, 0] > 0.5] + 1e-3
    scores = image_metrics.precision_recall(real, fake, k=3)
    assert scores["precision"] == 1.0
    assert scores["recall"] < 0.5


def test_precision_recall_rejects_too_few_points(rng):
    with pytest.raises(ValueError, match="`fake`"):
        image_metrics.precision_recall(rng.normal(size=(10, 2)), rng.normal(size=(3, 2)), k=3)


def test_nearest_distances_are_exact_on_a_grid():
    reference = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[3.0, 4.0], [10.0, 0.0], [7.0, 0.0]])
    np.testing.assert_allclose(image_metrics.nearest_distances(x, reference), [5.0, 0.0, 3.0], atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Data and the feature classifier


def test_load_splits_every_class_and_scales_to_unit_range():
    data = datasets.load_digits()
    assert data["train"].shape == (1347, 8, 8, 1) and data["test"].shape == (450, 8, 8, 1)
    assert data["train"].min() == -1.0 and data["train"].max() == 1.0
    assert set(np.unique(data["test_labels"])) == set(range(10))
    again = datasets.load_digits()
    np.testing.assert_array_equal(again["test"], data["test"])  # the split is seeded


def test_classifier_cache_round_trip_and_seed_determinism(tmp_path):
    path = tmp_path / "classifier.keras"
    first = image_metrics.digit_classifier(path, epochs=1, seed=3)
    assert path.exists()
    loaded = image_metrics.digit_classifier(path, epochs=1, seed=3)  # from the file: no training
    images = datasets.load_digits()["test"][:64]
    np.testing.assert_allclose(image_metrics.image_features(images, loaded),
                               image_metrics.image_features(images, first), atol=1e-6)
    data = datasets.load_digits()
    retrained = image_metrics.train_digit_classifier(data["train"], data["train_labels"], epochs=1, seed=3)
    # Same seed, same data, same CPU kernels: the same weights (float32 round-off only).
    for a, b in zip(retrained.get_weights(), first.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GAN2FLOW_CACHE", str(tmp_path / "here"))
    assert image_metrics.default_cache_dir() == str(tmp_path / "here")
    monkeypatch.delenv("GAN2FLOW_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image_metrics.default_cache_dir() == os.path.join(str(tmp_path), "gan2flow")


def test_classifier_path_must_be_a_keras_file(tmp_path):
    with pytest.raises(ValueError, match="`path`"):
        image_metrics.digit_classifier(tmp_path / "classifier.h5")


# ----------------------------------------------------------------------------------------------------
# The pipeline


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    return image_metrics.digit_classifier(tmp_path_factory.mktemp("classifier") / "c.keras", epochs=1)


@pytest.mark.slow
def test_digits_pipeline_smoke(tmp_path, tiny_classifier):
    """Every stage on a toy budget. Compiling ~8 graphs (3 trainers, calibration, 3 flows) dominates:
    ~60 s of CPU, ~105 s wall on the shared 2-core machine, hence slow."""
    result = digits.run(str(tmp_path), classifier=tiny_classifier, n=64, gan_steps=4, convert_steps=4,
                        sdgan_steps=2, latent_levels=2, flow_steps=1, verbose=False)
    expected_rows = {"real: training images", "real: held-out images", "GAN (non-saturating)",
                     "GAN + data-space refinement", "GAN + latent-space refinement", "SDGAN logit",
                     "SDGAN flow_regression"}
    assert set(result["rows"]) == expected_rows
    for name, row in result["rows"].items():
        assert np.isfinite(row["nn_median"]), name
    for key in ("real", "gan", "gan_refined", "gan_latent", "sdgan_logit", "sdgan_flow_regression",
                "before_after", "trajectory", "nearest_training", "numbers", "table", "flow"):
        assert os.path.getsize(result["files"][key]) > 0, key
    with open(result["files"]["numbers"], encoding="utf-8") as handle:
        saved = json.load(handle)
    assert len(saved["nn_distances"]["GAN + data-space refinement"]) == 64
    assert saved["rows"]["GAN (non-saturating)"]["fd"] == pytest.approx(result["rows"]["GAN (non-saturating)"]["fd"])
    assert "| GAN + data-space refinement |" in result["table"]
    import gan2flow

    assert gan2flow.load(result["files"]["flow"]).sample_shape == (8, 8, 1)


def test_format_table_leaves_missing_numbers_blank():
    table = digits.format_table({"GAN": {"fd": 12.345, "precision": 0.5, "recall": 0.25, "confident": 0.9,
                                         "nn_median": 3.0, "nn_p05": 2.0, "seconds": 61.2},
                                 "held-out": {"nn_median": 2.1, "nn_p05": 1.4}})
    lines = table.splitlines()
    assert lines[2] == "| GAN | 12.35 | 0.500 | 0.250 | 90.0% | 3.00 | 2.00 | 61 |"
    assert lines[3] == "| held-out |  |  |  |  | 2.10 | 1.40 |  |"


def test_cli_demo_digits_rejects_kernel(capsys):
    from gan2flow import cli

    assert cli.main(["demo", "--dataset", "digits", "--kernel"]) == 2
    assert "--kernel" in capsys.readouterr().err


@pytest.mark.slow
def test_digits_quick_run_improves_on_the_gan(tmp_path):
    """The --quick budget (about 3 minutes on 2 cores) must already meet the issue's target with the defaults:
    FD at least 30 % lower with recall not lower. Measured with seed 0 (1 200 GAN steps): FD 43.61 -> 6.87
    (-84 %), recall 0.389 -> 0.862 (docs/digits.md); the margins absorb another CPU's float round-off."""
    result = digits.run(str(tmp_path), quick=True, verbose=False)
    before, after = result["rows"]["GAN (non-saturating)"], result["rows"]["GAN + data-space refinement"]
    assert result["fd_reduction"] == pytest.approx(1.0 - after["fd"] / before["fd"])
    assert result["fd_reduction"] >= 0.30
    assert after["recall"] >= before["recall"]
    assert result["target_met"]
