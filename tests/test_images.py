"""Issue 17: image data that install with a package, the self-trained feature space, and the convolutional
calibration discriminator chosen from the sample shape. The end-to-end conversion of an image zoo GAN is
``slow`` (benchmarks/images.py measures the targets)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import gan2flow
from gan2flow import conv_models, datasets, image_metrics

# --------------------------------------------------------------------------------------------------
# Data


def test_patch_loader_shapes_range_seed_and_disjoint_splits():
    data = datasets.load_image_patches(16, n_train=300, n_test=60, seed=3)
    assert data["train"].shape == (300, 16, 16, 3) and data["test"].shape == (60, 16, 16, 3)
    assert data["reference"].shape == (60, 16, 16, 3)
    for split in data.values():
        assert split.dtype == np.float32 and split.min() >= -1.0 and split.max() <= 1.0
        assert split.std() > 0.1  # photo content, not a constant
    again = datasets.load_image_patches(16, n_train=300, n_test=60, seed=3)
    np.testing.assert_array_equal(data["train"], again["train"])
    other = datasets.load_image_patches(16, n_train=300, n_test=60, seed=4)
    assert not np.array_equal(data["train"], other["train"])
    # held-out patches come from held-out tiles: none is a copy of a training patch (8-bit photos: two different
    # patches differ by at least one grey level, 2/255 ≈ 0.008 in [−1, 1]; a copy is at 0 up to ~1e-7 round-off)
    assert image_metrics.nearest_distances(data["test"], data["train"]).min() > 5e-3


@pytest.mark.parametrize("kwargs, name", [({"size": 1}, "size"), ({"n_train": 0}, "n_train"),
                                          ({"test_fraction": 1.0}, "test_fraction"), ({"size": 500}, "size")])
def test_patch_loader_names_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        datasets.load_image_patches(**kwargs)


def test_faces_loader():
    pytest.importorskip("skimage")
    data = datasets.load_faces(seed=0)
    assert data["train"].shape == (160, 25, 25, 1) and data["test"].shape == (40, 25, 25, 1)
    assert data["train"].min() >= -1.0 and data["train"].max() <= 1.0
    assert datasets.load_faces(faces_only=True)["train"].shape == (80, 25, 25, 1)
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_faces(0.0)


# --------------------------------------------------------------------------------------------------
# The self-trained feature space


def _tiny_images(n=64, seed=0):
    return np.tanh(np.random.default_rng(seed).normal(size=(n, 16, 16, 3))).astype(np.float32)


def test_feature_encoder_is_deterministic_by_seed():
    images = _tiny_images()
    first = image_metrics.train_feature_encoder(images, features=8, epochs=1, batch_size=32, seed=0)
    second = image_metrics.train_feature_encoder(images, features=8, epochs=1, batch_size=32, seed=0)
    other = image_metrics.train_feature_encoder(images, features=8, epochs=1, batch_size=32, seed=1)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])
    features = image_metrics.encoder_features(images, first)
    assert features.shape == (64, 8 + 32 + 64) and features.dtype == np.float64


def test_feature_encoder_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GAN2FLOW_CACHE", str(tmp_path))
    images = _tiny_images(32)
    trained = image_metrics.feature_encoder(images, name="tiny", features=4, epochs=1)
    files = list(tmp_path.glob("feature_encoder-v*-tiny-*.keras"))
    assert len(files) == 1
    loaded = image_metrics.feature_encoder(images, name="tiny", features=4, epochs=1)
    np.testing.assert_allclose(image_metrics.encoder_features(images, loaded),
                               image_metrics.encoder_features(images, trained), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="name"):
        image_metrics.feature_encoder(images, name="no spaces")


def test_frechet_distance_in_encoder_features_is_zero_for_a_set_with_itself_and_positive_when_shifted():
    images = _tiny_images(96)
    encoder = image_metrics.train_feature_encoder(images, features=8, epochs=1, seed=0)
    features = image_metrics.encoder_features(images, encoder)
    # float64 algebra: the Gaussian W2 closed form leaves ~1e-8·sqrt(tr Σ) of round-off, squared here
    assert image_metrics.frechet_distance(features, features) < 1e-6
    shifted = image_metrics.encoder_features(np.clip(images + 0.5, -1, 1), encoder)
    assert image_metrics.frechet_distance(shifted, features) > 1e-2


def test_power_spectrum_and_image_report():
    constant = np.full((4, 8, 8, 1), 0.5, np.float32)
    spectrum = image_metrics.power_spectrum(constant)
    assert spectrum.shape == (5,) and spectrum[0] > 0 and np.all(spectrum[1:] == 0)
    images = _tiny_images(40)
    assert image_metrics.spectrum_distance(images, images) == 0.0
    encoder = image_metrics.train_feature_encoder(images, features=4, epochs=1, seed=0)
    report = image_metrics.image_report(images[:20], images[20:], images[20:], encoder)
    assert set(report) >= {"fd", "precision", "recall", "spectrum", "nn", "nn_ratio", "out"}
    assert report["out"] == 0.0 and report["nn"] > 0
    copies = image_metrics.image_report(images[20:], images[20:], images[20:], encoder, heldout_nn=1.0)
    # a copy is at distance 0 up to the Gram form's float64 round-off (~1e-7 over 768 pixels of magnitude ~1)
    assert copies["nn"] < 1e-5 and copies["nn_ratio"] < 1e-5


# --------------------------------------------------------------------------------------------------
# The convolutional calibration


def _given_discriminator(shape=(16, 16, 3)):
    layers = keras.layers
    return keras.Sequential([keras.Input(shape), layers.Conv2D(8, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
                             layers.Conv2D(16, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
                             layers.Flatten(), layers.Dense(1)], name="given")


def test_calibration_model_is_chosen_by_shape():
    assert conv_models.is_image_shape((32, 32, 3)) and conv_models.is_image_shape((25, 25, 1))
    assert not conv_models.is_image_shape((8, 8, 1)) and not conv_models.is_image_shape((2,))
    assert not conv_models.is_image_shape((32, 32, 64))  # channels-last images only
    image = conv_models.calibration_model((16, 16, 3))
    digits = conv_models.calibration_model((8, 8, 1), hidden=(32,))
    assert "down_0" in [layer.name for layer in image.layers]
    assert "down_0" not in [layer.name for layer in digits.layers]
    assert conv_models.convert_defaults((8, 8, 1)) == {} and conv_models.convert_defaults((2,)) == {}
    assert conv_models.convert_defaults((32, 32, 3))["steps"] > 0


def test_image_stage_defaults_are_calibrate_stages_arguments():
    # Every image stage option must name a calibrate_stages argument (a misspelt key fails only inside convert).
    import inspect

    from gan2flow import staged

    options = conv_models.convert_defaults((25, 25, 1))["stage_options"]
    assert set(options) <= set(inspect.signature(staged.calibrate_stages).parameters)
    assert options["flow_steps"] == 2 and options["learning_rate"] == 1e-3
    assert inspect.signature(staged.calibrate_stages).parameters["gap_errors"].default == 2.0  # images rely on it


def test_conv_calibration_shapes_taps_and_standardised_features():
    keras.utils.set_random_seed(0)
    given = _given_discriminator()
    assert conv_models.tap_layer_names(given) == [given.layers[1].name, given.layers[3].name]
    reference = _tiny_images(200)
    model = conv_models.conv_calibration_discriminator((16, 16, 3), given=given, given_loss="logistic",
                                                       reference=reference, filters=(8, 16), head=16)
    taps = model.get_layer("given_discriminator")
    assert taps.n_features == 8 + 16 + 1 and not taps.discriminator.trainable
    features = np.asarray(taps(reference))
    # standardised on (a subset of) these very samples: mean 0 and std 1 per feature, up to float32 round-off
    np.testing.assert_allclose(features.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(features.std(0), 1.0, atol=1e-3)
    output = model([reference[:5], np.full((5, 1), 0.3, np.float32)])
    assert tuple(output.shape) == (5, 1)
    given_weights = [np.array(w) for w in given.get_weights()]
    assert all(w.name.startswith("given") is False for w in model.trainable_weights)  # the given D is frozen
    assert len(model.trainable_weights) < len(model.weights)
    without = conv_models.conv_calibration_discriminator((16, 16, 3), given=given, taps=False, filters=(8,))
    assert without.get_layer("given_discriminator").n_features == 1
    for a, b in zip(given_weights, given.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_conv_calibration_round_trips_and_gives_an_sd_field(tmp_path):
    keras.utils.set_random_seed(1)
    model = conv_models.calibration_model((16, 16, 3), given=_given_discriminator(), reference=_tiny_images(50),
                                          hidden=(16,))
    x, sigma = _tiny_images(6, seed=2), np.full((6, 1), 0.2, np.float32)
    path = str(tmp_path / "calibration.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded([x, sigma])), np.asarray(model([x, sigma])))
    estimator = gan2flow.DiscriminatorScoreDifference(model, loss="logistic", sigma_conditioned=True)
    v = estimator(x, 0.2)
    assert v.dtype == tf.float32 and tuple(v.shape) == x.shape
    assert np.all(np.isfinite(v)) and np.max(np.abs(v)) > 0
    # per-sample: a batch split changes nothing (float32 round-off of batched convolutions: 1e-5 relative)
    np.testing.assert_allclose(np.asarray(estimator(x[:3], 0.2)), np.asarray(v)[:3], rtol=1e-4, atol=1e-6)


def test_conv_calibration_names_bad_shapes():
    with pytest.raises(ValueError, match="sample_shape"):
        conv_models.conv_calibration_discriminator((16, 16))
    with pytest.raises(ValueError, match="filters"):
        conv_models.conv_calibration_discriminator((16, 16, 3), filters=())


# --------------------------------------------------------------------------------------------------
# End to end (slow): a briefly trained image zoo GAN converts with a conv calibration, saves and reloads


@pytest.mark.slow
def test_image_zoo_gan_converts_with_the_conv_calibration(tmp_path):
    pytest.importorskip("skimage")
    from gan2flow.experiments import zoo

    member = zoo.train("faces25_dcgan", steps=20)
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss, steps=30,
                            verbose=0, stage_options={"n_particles": 128, "heldout_particles": 32, "train_steps": 5,
                                                      "sigma_ratio": 0.5})
    assert "down_0" in [layer.name for layer in flow.discriminator.layers]
    assert "down_0" in [layer.name for layer in flow.stage_discriminator.layers]
    x = np.asarray(flow.sample(40, seed=0, batch_size=16))
    assert x.shape == (40, 25, 25, 1) and np.all(np.isfinite(x))
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # projected onto the data's range
    path = str(tmp_path / "flow.keras")
    flow.save(path)
    np.testing.assert_array_equal(np.asarray(gan2flow.load(path).sample(40, seed=0, batch_size=16)), x)


@pytest.mark.parametrize("cmap, dark", [("gray", True), ("gray_r", False)])
def test_image_grid_grey_levels(tmp_path, cmap, dark):
    # A grey image at the bottom of the value range: "gray" (photographs: low = dark) must draw it black, the
    # digits' "gray_r" white, i.e. no pixel of the PNG darker than the axes-free white figure background.
    import matplotlib.image

    from gan2flow import plotting

    images = np.full((2, 6, 6, 1), -1.0, np.float32)
    path = plotting.image_grid(images, str(tmp_path / "grid.png"), columns=2, value_range=(-1, 1), cmap=cmap)
    pixels = matplotlib.image.imread(path)[..., :3]
    assert (pixels.max(-1) < 0.1).any() == dark
