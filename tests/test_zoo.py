"""The zoo of foreign GANs (gan2flow.experiments.zoo): training, seeds, the cache, and the properties each
member exists to have. The conversion test at the end is issue 13's acceptance test for the defaults."""
import os

import numpy as np
import pytest

from gan2flow import metrics
from gan2flow.experiments import zoo

FAST = zoo.names(fast=True)
TINY_STEPS = 20  # a tiny budget: enough to move every weight, seconds per member


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One zoo cache for the module: each member is trained at most once per test run."""
    return str(tmp_path_factory.mktemp("zoo"))


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def _mode_stats(member, x):
    info = member.info
    return metrics.mode_stats(x, np.asarray(info["centers"]), np.asarray(info["stds"]), info["mode_threshold"],
                              weights=np.asarray(info["weights"]))


def test_names_and_recipes():
    assert len(zoo.names()) >= 7
    assert set(zoo.names(fast=True)) | set(zoo.names(fast=False)) == set(zoo.names())
    assert {zoo.recipe(name).loss for name in zoo.names()} == {"bce", "hinge", "least_squares", "wgan_gp"}
    assert {zoo.recipe(name).architecture for name in zoo.names()} == {"mlp", "conv"}
    with pytest.raises(ValueError, match="ring_dropped_hinge"):
        zoo.recipe("no_such_member")


@pytest.mark.parametrize("name", zoo.names())
def test_data_is_seeded_and_described(name):
    recipe = zoo.recipe(name)
    first, second = zoo.make_data(recipe, seed=3), zoo.make_data(recipe, seed=3)
    for key in ("train", "heldout", "gan_train"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["train"].dtype == np.float32 and first["train"].shape[1:] == first["heldout"].shape[1:]
    low, high = first["info"]["data_range"]
    assert low <= first["train"].min() and first["train"].max() <= high
    if "centers" in first["info"]:
        info = first["info"]
        assert len(info["centers"]) == len(info["stds"]) == len(info["weights"])
        assert np.isclose(sum(info["weights"]), 1.0)
        # exact mixture samples are high quality at about the 2-D rate P(chi2_2 <= 9) = 0.989 in any dimension
        stats = metrics.mode_stats(first["heldout"], np.asarray(info["centers"]), np.asarray(info["stds"]),
                                   info["mode_threshold"], weights=np.asarray(info["weights"]))
        assert stats["modes"] == stats["n_modes"] and stats["high_quality"] > 0.97


# Every member trains deterministically; the slow ones (XLA compiles of larger steps) only under -m slow.
_ALL = [pytest.param(name, marks=[] if zoo.recipe(name).fast else [pytest.mark.slow]) for name in zoo.names()]


@pytest.mark.parametrize("name", _ALL)
def test_members_train_deterministically(name):
    first = zoo.train(name, seed=0, steps=TINY_STEPS)
    second = zoo.train(name, seed=0, steps=TINY_STEPS)
    for a, b in zip(_weights(first.generator) + _weights(first.discriminator),
                    _weights(second.generator) + _weights(second.discriminator), strict=False):
        np.testing.assert_array_equal(a, b)
    assert first.generate(16).shape == (16,) + first.train.shape[1:]
    assert first.info["recipe"]["steps"] == TINY_STEPS


def test_another_seed_gives_another_member():
    first, other = zoo.train(FAST[0], seed=0, steps=TINY_STEPS), zoo.train(FAST[0], seed=1, steps=TINY_STEPS)
    assert not np.array_equal(first.train, other.train)
    assert not np.array_equal(_weights(first.generator)[0], _weights(other.generator)[0])


def test_cache_round_trip(cache, monkeypatch):
    name = "ring_dropped_hinge"
    trained = zoo.load(name, cache_dir=cache)
    folder = zoo.entry_dir(name, cache_dir=cache)
    assert trained.info["cache_dir"] == folder
    assert sorted(os.listdir(folder)) == ["data.npz", "discriminator.keras", "generator.keras", "meta.json"]
    assert not [entry for entry in os.listdir(cache) if entry.startswith(".tmp")]

    def no_training(*args, **kwargs):
        raise AssertionError("load() retrained a cached member")

    monkeypatch.setattr(zoo, "train", no_training)
    loaded = zoo.load(name, cache_dir=cache)
    for key in ("train", "heldout", "gan_train"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(trained, key))
    np.testing.assert_array_equal(loaded.generate(64), trained.generate(64))
    x = trained.heldout[:64]
    np.testing.assert_array_equal(np.asarray(loaded.discriminator(x)), np.asarray(trained.discriminator(x)))
    assert (loaded.loss, loaded.latent_dim, loaded.info["recipe"]) == (trained.loss, trained.latent_dim,
                                                                       trained.info["recipe"])
    assert zoo.entry_dir(name, seed=1, cache_dir=cache) != folder  # the seed is part of the key


def test_dropped_mode_is_missing_from_the_raw_generator(cache):
    member = zoo.load("ring_dropped_hinge", cache_dir=cache)
    dropped = member.info["recipe"]["drop_mode"]
    assert _mode_stats(member, member.gan_train)["counts"][dropped] == 0  # the GAN never saw it
    assert _mode_stats(member, member.train)["covered"][dropped]          # the user's data has it
    stats = _mode_stats(member, member.generate(5000, seed=1))
    assert not stats["covered"][dropped]
    assert stats["modes"] >= stats["n_modes"] - 2  # a GAN that works elsewhere, not a broken one


def test_overfit_discriminator_loses_more_on_heldout_data(cache):
    member = zoo.load("ring_overfit_bce", cache_dir=cache)
    assert len(member.train) == 32

    def real_loss(x):  # BCE of the real class, -log sigmoid(D(x)), on logits
        return float(np.mean(np.logaddexp(0.0, -np.asarray(member.discriminator(x)))))

    # The fake term is the same for both, so comparing the real terms compares the two BCE losses.
    assert real_loss(member.heldout) > real_loss(member.train) + 0.5


@pytest.mark.slow
def test_collapsed_generator_covers_few_modes(cache):
    member = zoo.load("ring_collapsed_bce", cache_dir=cache)
    stats = _mode_stats(member, member.generate(5000, seed=1))
    assert stats["modes"] <= 2 < stats["n_modes"]


def _refine_with_defaults(member, n=1000):
    import keras

    import gan2flow

    keras.utils.set_random_seed(0)  # convert's calibrator draws its initial weights from Keras's global generator
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss, verbose=0)
    return np.asarray(flow.sample(n, refine=False, seed=0)), np.asarray(flow.sample(n, seed=0))


def _headline(member, x):
    return metrics.sliced_wasserstein(x.reshape(len(x), -1), member.heldout.reshape(len(member.heldout), -1))


# One fast member converts in the default suite (about 100 s on 2 busy cores today); the others are `slow`.
_CONVERTED = [pytest.param(name, marks=[] if name == "ring_dropped_hinge" else [pytest.mark.slow]) for name in FAST]


@pytest.mark.parametrize("name", _CONVERTED)
def test_issue13_defaults_refine_fast_member_better_than_raw_and_in_range(name, cache):
    """Issue 13's acceptance test: convert with the defaults only, then refined samples beat the raw
    generator's on the headline metric (sliced W2 to held-out data) and no value leaves the data's range
    by more than 10 % of it (with the dropped-mode member: the issue's W2 and mode targets too)."""
    member = zoo.load(name, cache_dir=cache)
    raw, refined = _refine_with_defaults(member, n=2000)
    assert np.all(np.isfinite(refined))
    assert _headline(member, refined) < _headline(member, raw)
    if name == "ring_dropped_hinge":
        # The issue's targets on the member in the default suite (measured 2026-12-02 with the current defaults:
        # sliced W2 0.354 → 0.101, the dropped mode 0 → 0.81 of its true share, every mode present; with the
        # previous ones 0.160 and 0.56): W2 at least 40 % lower, and every
        # mode, the dropped one included, with at least half its true share.
        assert _headline(member, refined) <= 0.6 * _headline(member, raw)
        stats = _mode_stats(member, refined)
        shares = stats["counts"] / len(refined) / np.asarray(member.info["weights"])
        assert shares.min() >= 0.5, shares
    low, high = member.info["data_range"]
    margin = 0.1 * (high - low)
    outside = (refined < low - margin) | (refined > high + margin)
    assert not outside.any(), (f"{outside.sum()} refined values beyond [{low - margin:.3g}, {high + margin:.3g}] "
                               f"(refined range [{refined.min():.3g}, {refined.max():.3g}])")
