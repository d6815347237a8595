"""The zoo of foreign GANs: small GANs trained the way keras-io examples train them, never by gan2flow.

Each member is a named :class:`Recipe`: a data set drawn with NumPy / scikit-learn from a seed, a
generator and a discriminator built from plain Keras layers, and a GAN loss. Training is one
``keras.Model`` subclass with a ``train_step`` (:class:`KerasGAN`, the pattern of keras-io's "DCGAN
overriding train_step" and "WGAN-GP" examples) run by ``fit``; nothing here imports gan2flow's own
training, models or toy data. The members are the test bed of issue 13: ``gan2flow.convert(G, D, data)``
with the defaults must improve every one of them (``benchmarks/zoo.py`` measures it; docs/zoo.md).

=================== ============= ======= ================================================================
member              loss          arch    what is special
=================== ============= ======= ================================================================
ring_dropped_hinge  hinge         MLP     10-mode ring; the GAN never saw mode 0 (dropped by construction)
grid_unequal_lsgan  least squares MLP     3×3 grid with unequal mode weights (3 % … 30 %)
moons_wgangp        WGAN-GP       MLP     two moons (non-Gaussian shape), 5 critic steps per G step
mixture16d_bce      BCE (NS)      MLP     8 Gaussian modes in 16 dimensions
digits_dcgan        BCE (NS)      conv    8×8 digits in [−1, 1], keras-io DCGAN layout, 1 200 steps
ring_overfit_bce    BCE (NS)      MLP     8-mode ring (std 0.25), only 32 training points, wide D, 2 D steps
ring_collapsed_bce  BCE (NS)      MLP     8-mode ring, 5 G steps per D step: the generator collapses
patches32_dcgan     BCE (NS)      conv    32×32 RGB patches of scikit-learn's sample photos, DCGAN 32×32
faces25_dcgan       BCE (NS)      conv    the 200 25×25 images of skimage's lfw_subset, DCGAN 25×25
=================== ============= ======= ================================================================

A class-conditional member, ``ring_classes_cgan`` (9-Gaussian ring, std 0.1, three classes each owning three
modes 120° apart; generator ``[z, label]`` with a label embedding, projection discriminator ``[x, label]``
(Miyato & Koyama 2018), BCE non-saturating, as keras-io's conditional GAN trains one), is listed by
``names(conditional=True)`` only, so that the unconditional members' loops and benchmarks stay as they were;
its ``train_labels``/``heldout_labels`` hold the classes and ``info["mode_classes"]`` the class of each mode.

The members marked ``fast`` train in ≲ 20 s on 2 CPU cores (the default test suite uses them):
ring_dropped_hinge, grid_unequal_lsgan, mixture16d_bce and ring_overfit_bce. moons_wgangp (5 critic
steps with a gradient penalty, 15–30 s), digits_dcgan (25 s) and ring_collapsed_bce (25 s) are slow, and
so are the image members of issue 17 (patches32_dcgan, faces25_dcgan: minutes), which the zoo benchmark's
``--quick`` and the default test suite leave out.

Every member records what an evaluation needs: the real data split into ``train`` (what a user would
pass to ``convert``) and ``heldout`` (what metrics compare with), the data's value range, and for
mixtures the mode centres, per-mode std, true weights and the high-quality radius in stds for
:func:`gan2flow.metrics.mode_stats`.

Trained members are cached under ``<cache>/zoo/<name>-<hash>/`` (``generator.keras``,
``discriminator.keras``, ``data.npz``, ``meta.json``), where ``<cache>`` is ``$GAN2FLOW_CACHE``, else
``$XDG_CACHE_HOME/gan2flow``, else ``~/.cache/gan2flow``, and ``<hash>`` is a short hash of the recipe,
the seed and :data:`ZOO_VERSION`. An entry is written into a temporary folder and renamed into place,
so a crash never leaves half an entry. The same seed gives the same models on one machine and
TensorFlow build (tests/test_zoo.py checks it on CPU with one intra-op thread).

Example::

    from gan2flow.experiments import zoo
    zoo.names()                                    # all members; zoo.names(fast=True) the quick ones
    member = zoo.load("ring_dropped_hinge")        # trained once (seconds), then from the cache
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

__all__ = ["ZOO_VERSION", "Recipe", "ZooGAN", "KerasGAN", "names", "recipe", "make_data", "train", "load",
           "default_cache_dir", "entry_dir"]

#: Bumped whenever data generation, architectures or the training loop change (part of the cache key).
ZOO_VERSION = 1

# GAN loss names used by the recipes -> the name gan2flow.losses knows the discriminator's loss by (its
# link maps the raw output to log p/q where one exists). BCE on logits is gan2flow's "logistic"; the
# WGAN-GP critic is a "wasserstein" one (no link).
_GAN2FLOW_LOSS = {"bce": "logistic", "hinge": "hinge", "least_squares": "least_squares", "wgan_gp": "wasserstein"}


# ----------------------------------------------------------------------------------------------------
# Recipes


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One zoo member: data, networks, loss and training budget (all that the cache hash covers).

    Attributes:
        name: the member's name.
        description: one line for tables.
        data: ``"ring"``, ``"grid"``, ``"moons"``, ``"mixture"``, ``"digits"``, ``"patches"``, ``"faces"`` or
            ``"ring_classes"`` (a ring whose modes are dealt to ``classes`` classes; see :func:`make_data`).
        data_options: keyword arguments of that data set (modes, radius, std, weights, sizes, ...).
        loss: ``"bce"`` (non-saturating generator loss), ``"hinge"``, ``"least_squares"`` or ``"wgan_gp"``.
        architecture: ``"mlp"``, ``"conv"`` (keras-io DCGAN layout: the 8×8 one for 8×8 images, a three-stage
            one for larger images) or ``"conditional_mlp"`` (G takes ``[z, label]``, D ``[x, label]`` with a
            projection term; a class-conditional member).
        latent_dim: size of z ~ N(0, I).
        width: hidden units (MLP) or base filters (conv) of the generator.
        d_width, d_depth: hidden units and hidden layers of the MLP discriminator.
        steps: generator updates (``fit`` steps).
        batch_size: real samples per step (at most the GAN's training set).
        d_steps, g_steps: discriminator / generator updates per step.
        d_learning_rate, g_learning_rate: Adam learning rates.
        beta_1, beta_2: Adam moments (keras-io: 0.5 / 0.9 for WGAN-GP, 0.5 / 0.999 for DCGAN).
        drop_mode: index of a mixture mode removed from the GAN's training data (None: none).
        fast: trains in ≲ 20 s on 2 CPU cores (used by the default test suite).
    """

    name: str
    description: str
    data: str
    data_options: tuple
    loss: str
    architecture: str = "mlp"
    latent_dim: int = 8
    width: int = 128
    d_width: int = 128
    d_depth: int = 2
    steps: int = 2000
    batch_size: int = 256
    d_steps: int = 1
    g_steps: int = 1
    d_learning_rate: float = 1e-3
    g_learning_rate: float = 1e-3
    beta_1: float = 0.5
    beta_2: float = 0.999
    drop_mode: int | None = None
    fast: bool = True

    @property
    def conditional(self):
        """Whether the member is a class-conditional GAN (generator ``[z, label]``)."""
        return self.architecture == "conditional_mlp"

    @property
    def options(self):
        """``data_options`` as a dict."""
        return dict(self.data_options)

    def to_dict(self):
        return dataclasses.asdict(self) | {"data_options": self.options}

    def digest(self, seed):
        """Short hash of what makes the models (the recipe without ``description`` and ``fast``), the seed and
        ZOO_VERSION: the cache folder's suffix."""
        made_by = {key: value for key, value in self.to_dict().items() if key not in ("description", "fast")}
        text = json.dumps({"recipe": made_by, "seed": int(seed), "version": ZOO_VERSION}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def _options(**kwargs):
    return tuple(sorted(kwargs.items()))


_RING10 = dict(modes=10, radius=2.0, std=0.1, n_train=4000, n_heldout=4000)
_RING8 = dict(modes=8, radius=2.0, std=0.1, n_train=4000, n_heldout=4000)

_RECIPES = {recipe.name: recipe for recipe in (
    Recipe("ring_dropped_hinge", "10-Gaussian ring, mode 0 removed from the GAN's data; hinge, MLP",
           "ring", _options(**_RING10), "hinge", drop_mode=0),
    Recipe("grid_unequal_lsgan", "3x3 Gaussian grid, mode weights 3 %..30 %; least squares, MLP",
           "grid", _options(side=3, spacing=2.0, std=0.1, n_train=4000, n_heldout=4000,
                            weights=(0.30, 0.18, 0.12, 0.10, 0.08, 0.07, 0.06, 0.06, 0.03)),
           "least_squares"),
    Recipe("moons_wgangp", "two moons; WGAN-GP (5 critic steps, lr 1e-4, betas 0.5/0.9), MLP",
           "moons", _options(noise=0.05, n_train=4000, n_heldout=4000), "wgan_gp",
           steps=1000, d_steps=5, d_learning_rate=1e-4, g_learning_rate=1e-4, beta_2=0.9, fast=False),
    Recipe("mixture16d_bce", "8 Gaussian modes in 16-D (std 0.2); BCE non-saturating, MLP",
           "mixture", _options(modes=8, dim=16, scale=1.5, std=0.2, n_train=4000, n_heldout=4000), "bce",
           latent_dim=16, width=256, d_width=256),
    Recipe("digits_dcgan", "sklearn 8x8 digits in [-1, 1]; BCE non-saturating, keras-io DCGAN conv G and D",
           "digits", _options(n_heldout=360), "bce", architecture="conv", latent_dim=32, width=32,
           steps=1200, batch_size=64, d_learning_rate=2e-4, g_learning_rate=2e-4, fast=False),
    Recipe("ring_overfit_bce", "8-Gaussian ring (std 0.25), 32 training points, wide D (256x3), 2 D steps per G "
           "step; BCE", "ring", _options(**(_RING8 | dict(std=0.25, n_train=32))), "bce", d_width=256, d_depth=3,
           d_steps=2, steps=1000, batch_size=32),
    Recipe("ring_collapsed_bce", "8-Gaussian ring, 5 G steps per D step (G lr 5x D's): collapsed; BCE, MLP",
           "ring", _options(**_RING8), "bce", g_steps=5, d_learning_rate=2e-4, g_learning_rate=1e-3, fast=False),
    Recipe("ring_classes_cgan", "9-Gaussian ring, 3 classes of 3 modes each; conditional G [z, label] (embedding), "
           "projection D [x, label]; BCE non-saturating", "ring_classes",
           _options(modes=9, classes=3, radius=2.0, std=0.1, n_train=4500, n_heldout=4500), "bce",
           architecture="conditional_mlp", steps=1500),
    Recipe("patches32_dcgan", "32x32 RGB patches of scikit-learn's sample photos in [-1, 1]; BCE non-saturating, "
           "keras-io DCGAN conv G and D (3 stride-2 stages)", "patches",
           _options(size=32, n_train=10000, n_heldout=2000), "bce", architecture="conv", latent_dim=64, width=8,
           steps=1500, batch_size=64, d_learning_rate=2e-4, g_learning_rate=2e-4, fast=False),
    Recipe("faces25_dcgan", "the 200 25x25 images of skimage's lfw_subset (100 faces, 100 non-faces) in [-1, 1]; BCE "
           "non-saturating, keras-io DCGAN conv G and D (3 stride-2 stages)", "faces",
           _options(n_heldout=40), "bce", architecture="conv", latent_dim=32, width=8,
           steps=1000, batch_size=32, d_learning_rate=2e-4, g_learning_rate=2e-4, fast=False),
)}


def names(fast=None, conditional=False):
    """Member names in zoo order; ``fast=True`` only the quick ones, ``False`` only the slow ones. The
    class-conditional members are listed with ``conditional=True`` (only them) or ``None`` (all members)."""
    return [name for name, recipe in _RECIPES.items() if (fast is None or recipe.fast == bool(fast))
            and (conditional is None or recipe.conditional == bool(conditional))]


def recipe(name):
    """The :class:`Recipe` of a member (``ValueError`` naming the members for an unknown name)."""
    if name not in _RECIPES:
        raise ValueError(f"unknown zoo member {name!r}; the members are {', '.join(_RECIPES)}.")
    return _RECIPES[name]


# ----------------------------------------------------------------------------------------------------
# Data (NumPy / scikit-learn, seeded)


def _ring_centers(modes, radius):
    angles = 2.0 * np.pi * np.arange(modes) / modes
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _mixture_sample(rng, centers, std, weights, n):
    labels = rng.choice(len(centers), size=n, p=weights)
    return (centers[labels] + std * rng.normal(size=(n, centers.shape[1]))).astype(np.float32), labels


def _mode_threshold(dim):
    """HQ radius in stds: 3 in 2-D (VEEGAN's convention, P ≈ 0.989 for exact samples); in d dimensions the
    radius with the same χ²_d probability, so exact samples are HQ at the same rate in any dimension."""
    from scipy import stats

    return float(np.sqrt(stats.chi2.ppf(stats.chi2.cdf(9.0, 2), dim)))


def make_data(recipe_, seed=0):
    """The member's data, drawn from ``seed``: a dict with

    - ``train``, ``heldout``: float32 real samples from the full distribution (all modes);
    - ``gan_train``: what the GAN is trained on (``train`` without ``drop_mode``'s samples, else ``train``);
    - ``train_labels``, ``heldout_labels``, ``gan_train_labels``: the classes of a conditional member's samples
      (``ring_classes``: mode m belongs to class m mod ``classes``), else None;
    - ``info``: JSON-able: ``data_range`` [low, high] over train ∪ held-out, and for mixtures ``centers``,
      ``stds``, ``weights`` (true, normalised) and ``mode_threshold`` (HQ radius in stds);
    - patches only: ``reference``, more patches from the training tiles (not in ``train``; for distribution
      metrics, see :func:`gan2flow.datasets.load_image_patches`); not cached, redrawn from the seed.
    """
    options = recipe_.options
    rng = np.random.default_rng([seed, 1])
    info, extra = {}, {}
    train_labels = None
    classes = None
    if recipe_.data == "ring_classes":  # a ring whose modes are dealt round-robin to the classes
        centers = _ring_centers(options["modes"], options["radius"])
        weights = np.full(len(centers), 1.0 / len(centers))
        train, train_modes = _mixture_sample(rng, centers, options["std"], weights, options["n_train"])
        heldout, heldout_modes = _mixture_sample(rng, centers, options["std"], weights, options["n_heldout"])
        mode_classes = np.arange(len(centers)) % options["classes"]
        classes = {"train_labels": mode_classes[train_modes].astype(np.int32),
                   "heldout_labels": mode_classes[heldout_modes].astype(np.int32)}
        info.update(centers=centers.tolist(), stds=[float(options["std"])] * len(centers), weights=weights.tolist(),
                    mode_threshold=_mode_threshold(2), mode_classes=mode_classes.tolist(),
                    n_classes=int(options["classes"]))
    elif recipe_.data in ("ring", "grid", "mixture"):
        if recipe_.data == "ring":
            centers = _ring_centers(options["modes"], options["radius"])
        elif recipe_.data == "grid":
            side = np.arange(options["side"]) - (options["side"] - 1) / 2.0
            centers = options["spacing"] * np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
        else:  # fixed centres (from the recipe, not the seed): the member's target does not move with the seed
            centers = options["scale"] * np.random.default_rng(1234).normal(size=(options["modes"], options["dim"]))
        weights = np.asarray(options.get("weights", np.full(len(centers), 1.0 / len(centers))), np.float64)
        weights = weights / weights.sum()
        train, train_labels = _mixture_sample(rng, centers, options["std"], weights, options["n_train"])
        heldout, _ = _mixture_sample(rng, centers, options["std"], weights, options["n_heldout"])
        info.update(centers=centers.tolist(), stds=[float(options["std"])] * len(centers), weights=weights.tolist(),
                    mode_threshold=_mode_threshold(centers.shape[1]))
    elif recipe_.data == "moons":
        from sklearn.datasets import make_moons

        n = options["n_train"] + options["n_heldout"]
        points, _ = make_moons(n, noise=options["noise"], random_state=int(rng.integers(2**31 - 1)))
        points = (points - np.array([0.5, 0.25])).astype(np.float32)  # centred, range about [-1.6, 1.6]
        train, heldout = points[:options["n_train"]], points[options["n_train"]:]
    elif recipe_.data == "digits":
        from sklearn.datasets import load_digits

        images = (load_digits().images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
        order = rng.permutation(len(images))
        heldout, train = images[order[:options["n_heldout"]]], images[order[options["n_heldout"]:]]
        info["data_range"] = [-1.0, 1.0]
    elif recipe_.data == "patches":  # held-out patches come from held-out tiles (gan2flow.datasets)
        from gan2flow import datasets

        patches = datasets.load_image_patches(options["size"], options["n_train"], options["n_heldout"],
                                              seed=int(rng.integers(2**31 - 1)))
        train, heldout = patches["train"], patches["test"]
        info["data_range"] = [-1.0, 1.0]
        extra["reference"] = patches["reference"]
    elif recipe_.data == "faces":
        from skimage.data import lfw_subset

        images = (np.asarray(lfw_subset(), np.float32) * 2.0 - 1.0)[..., None]  # [200, 25, 25, 1]
        order = rng.permutation(len(images))
        heldout, train = images[order[:options["n_heldout"]]], images[order[options["n_heldout"]:]]
        info["data_range"] = [-1.0, 1.0]
    else:
        raise ValueError(f"unknown data set {recipe_.data!r} in recipe {recipe_.name!r}.")
    info.setdefault("data_range", [float(min(train.min(), heldout.min())), float(max(train.max(), heldout.max()))])
    gan_train = train if recipe_.drop_mode is None else train[train_labels != recipe_.drop_mode]
    data = {"train": train, "heldout": heldout, "gan_train": gan_train, "info": info, **extra}
    if classes is not None:
        data.update(classes, gan_train_labels=classes["train_labels"])
    return data


# ----------------------------------------------------------------------------------------------------
# Networks (plain Keras layers)


def _networks(recipe_, sample_shape):
    layers = keras.layers

    if recipe_.architecture == "mlp":
        dim = int(np.prod(sample_shape))
        generator = keras.Sequential(
            [keras.Input((recipe_.latent_dim,)), layers.Dense(recipe_.width, activation="relu"),
             layers.Dense(recipe_.width, activation="relu"), layers.Dense(dim)], name="generator")
        discriminator = keras.Sequential(
            [keras.Input((dim,))]
            + [layers.Dense(recipe_.d_width, activation=layers.LeakyReLU(0.2)) for _ in range(recipe_.d_depth)]
            + [layers.Dense(1)], name="discriminator")
    elif recipe_.architecture == "conv" and tuple(sample_shape) != (8, 8, 1):
        # keras-io DCGAN (dcgan_overriding_train_step) with three stride-2 stages, for 25×25 to 32×32 images
        width, (height, width_px, channels) = recipe_.width, tuple(sample_shape)
        start = (-(-height // 8), -(-width_px // 8))
        crop = (start[0] * 8 - height, start[1] * 8 - width_px)
        generator = keras.Sequential(
            [keras.Input((recipe_.latent_dim,)), layers.Dense(start[0] * start[1] * 8 * width),
             layers.Reshape(start + (8 * width,)),
             layers.Conv2DTranspose(4 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2DTranspose(2 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2DTranspose(width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2)]
            + ([layers.Cropping2D(((crop[0] // 2, crop[0] - crop[0] // 2), (crop[1] // 2, crop[1] - crop[1] // 2)))]
               if any(crop) else [])
            + [layers.Conv2D(channels, 3, padding="same", activation="tanh")], name="generator")
        discriminator = keras.Sequential(
            [keras.Input(sample_shape), layers.Conv2D(2 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2D(4 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2D(4 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Flatten(), layers.Dropout(0.2), layers.Dense(1)], name="discriminator")
    elif recipe_.architecture == "conv":  # keras-io DCGAN (dcgan_overriding_train_step), scaled to 8×8×1
        width = recipe_.width
        generator = keras.Sequential(
            [keras.Input((recipe_.latent_dim,)), layers.Dense(2 * 2 * 2 * width), layers.Reshape((2, 2, 2 * width)),
             layers.Conv2DTranspose(2 * width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2DTranspose(width, 4, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2D(1, 3, padding="same", activation="tanh")], name="generator")
        discriminator = keras.Sequential(
            [keras.Input(sample_shape), layers.Conv2D(width, 3, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Conv2D(2 * width, 3, strides=2, padding="same"), layers.LeakyReLU(0.2),
             layers.Flatten(), layers.Dropout(0.2), layers.Dense(1)], name="discriminator")
    elif recipe_.architecture == "conditional_mlp":  # keras-io conditional GAN, labels as a second input
        dim, n_classes = int(np.prod(sample_shape)), int(recipe_.options["classes"])
        z, label = keras.Input((recipe_.latent_dim,), name="z"), keras.Input((1,), dtype="int32", name="label")
        h = layers.Concatenate()([z, layers.Flatten()(layers.Embedding(n_classes, recipe_.latent_dim)(label))])
        h = layers.Dense(recipe_.width, activation="relu")(layers.Dense(recipe_.width, activation="relu")(h))
        generator = keras.Model([z, label], layers.Dense(dim)(h), name="generator")
        x, label = keras.Input((dim,), name="x"), keras.Input((1,), dtype="int32", name="label")
        h = x
        for _ in range(recipe_.d_depth):
            h = layers.Dense(recipe_.d_width, activation=layers.LeakyReLU(0.2))(h)
        projection = layers.Flatten()(layers.Embedding(n_classes, recipe_.d_width)(label))  # Miyato & Koyama 2018
        output = layers.Add()([layers.Dense(1)(h), layers.Dot(axes=1)([h, projection])])
        discriminator = keras.Model([x, label], output, name="discriminator")
    else:
        raise ValueError(f"unknown architecture {recipe_.architecture!r} in recipe {recipe_.name!r}.")
    return generator, discriminator


# ----------------------------------------------------------------------------------------------------
# Training: one keras.Model with a train_step, as in the keras-io GAN examples


def _discriminator_loss(loss, real, fake):
    if loss == "bce":  # -log σ(D(x)) - log(1 - σ(D(G(z)))), on logits
        return tf.reduce_mean(tf.nn.softplus(-real)) + tf.reduce_mean(tf.nn.softplus(fake))
    if loss == "hinge":
        return tf.reduce_mean(tf.nn.relu(1.0 - real)) + tf.reduce_mean(tf.nn.relu(1.0 + fake))
    if loss == "least_squares":  # LSGAN with targets 1 (real) and 0 (fake)
        return tf.reduce_mean(tf.square(real - 1.0)) + tf.reduce_mean(tf.square(fake))
    return tf.reduce_mean(fake) - tf.reduce_mean(real)  # wgan_gp (the penalty is added by the caller)


def _generator_loss(loss, fake):
    if loss == "bce":  # non-saturating: -log σ(D(G(z)))
        return tf.reduce_mean(tf.nn.softplus(-fake))
    if loss == "least_squares":
        return tf.reduce_mean(tf.square(fake - 1.0))
    return -tf.reduce_mean(fake)  # hinge, wgan_gp


class KerasGAN(keras.Model):
    """A GAN trained by ``fit``: ``d_steps`` discriminator updates, then ``g_steps`` generator updates
    per batch of real samples (keras-io's pattern; WGAN-GP adds the gradient penalty of Gulrajani et
    al. 2017 at random interpolates, weight 10)."""

    def __init__(self, generator, discriminator, *, loss, latent_dim, d_steps=1, g_steps=1, seed=0,
                 gp_weight=10.0):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.loss_name, self.latent_dim = loss, latent_dim
        self.d_steps, self.g_steps, self.gp_weight = d_steps, g_steps, gp_weight
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compile(self, d_optimizer, g_optimizer):
        super().compile()
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def _latents(self, batch):
        return keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)

    def _gradient_penalty(self, real, fake):
        shape = tf.concat([tf.shape(real)[:1], tf.ones([tf.rank(real) - 1], tf.int32)], 0)
        alpha = keras.random.uniform(shape, seed=self.seed_generator)
        mixed = real + alpha * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch(mixed)
            output = self.discriminator(mixed, training=True)
        gradient = tf.reshape(tape.gradient(output, mixed), [tf.shape(real)[0], -1])
        return tf.reduce_mean(tf.square(tf.norm(gradient, axis=1) - 1.0))

    def train_step(self, real):
        batch = tf.shape(real)[0]
        for _ in range(self.d_steps):
            z = self._latents(batch)
            with tf.GradientTape() as tape:
                fake = self.generator(z, training=True)
                d_loss = _discriminator_loss(self.loss_name, self.discriminator(real, training=True),
                                             self.discriminator(fake, training=True))
                if self.loss_name == "wgan_gp":
                    d_loss += self.gp_weight * self._gradient_penalty(real, fake)
            weights = self.discriminator.trainable_weights
            self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, weights), weights, strict=False))
        for _ in range(self.g_steps):
            z = self._latents(batch)
            with tf.GradientTape() as tape:
                g_loss = _generator_loss(self.loss_name,
                                         self.discriminator(self.generator(z, training=True), training=True))
            weights = self.generator.trainable_weights
            self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, weights), weights, strict=False))
        return {"d_loss": d_loss, "g_loss": g_loss}


class ConditionalKerasGAN(keras.Model):
    """A class-conditional GAN trained by ``fit`` on (samples, labels) batches, as keras-io's conditional GAN:
    each fake is drawn with its real partner's label, D sees [x, label]; BCE with the non-saturating G loss."""

    def __init__(self, generator, discriminator, *, latent_dim, seed=0):
        super().__init__()
        self.generator, self.discriminator, self.latent_dim = generator, discriminator, latent_dim
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compile(self, d_optimizer, g_optimizer):
        super().compile()
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def train_step(self, data):
        real, labels = data
        labels = tf.reshape(labels, [-1, 1])
        z = keras.random.normal((tf.shape(real)[0], self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake = self.generator([z, labels], training=True)
            d_loss = _discriminator_loss("bce", self.discriminator([real, labels], training=True),
                                         self.discriminator([fake, labels], training=True))
        weights = self.discriminator.trainable_weights
        self.d_optimizer.apply_gradients(zip(tape.gradient(d_loss, weights), weights, strict=False))
        z = keras.random.normal((tf.shape(real)[0], self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake = self.generator([z, labels], training=True)
            g_loss = _generator_loss("bce", self.discriminator([fake, labels], training=True))
        weights = self.generator.trainable_weights
        self.g_optimizer.apply_gradients(zip(tape.gradient(g_loss, weights), weights, strict=False))
        return {"d_loss": d_loss, "g_loss": g_loss}




@dataclasses.dataclass
class ZooGAN:
    """A trained zoo member.

    Attributes:
        name: the member's name.
        generator: Keras model z [n, latent_dim] -> samples.
        discriminator: Keras model samples -> raw output [n, 1] (logits for BCE; critic values for WGAN-GP).
        train: real training samples, all modes (what to pass to ``gan2flow.convert``).
        heldout: held-out real samples from the same full distribution (what metrics compare with).
        gan_train: what the GAN was trained on (``train`` without a dropped mode, else ``train``).
        loss: the discriminator's loss as :mod:`gan2flow.losses` names it (``logistic``, ``hinge``,
            ``least_squares``, ``wasserstein``), or None.
        latent_dim: size of z ~ N(0, I).
        info: JSON-able: the recipe, seed, data range, mixture modes (``centers``, ``stds``, ``weights``,
            ``mode_threshold``), ``train_seconds``, the cache folder when loaded from or saved to one; for a
            conditional member ``n_classes`` and ``mode_classes`` (the class of each mode).
        train_labels, heldout_labels: a conditional member's integer classes of ``train`` and ``heldout``
            (what to pass to ``gan2flow.convert(..., labels=member.train_labels)``); None otherwise.
    """

    name: str
    generator: object
    discriminator: object
    train: np.ndarray
    heldout: np.ndarray
    gan_train: np.ndarray
    loss: str | None
    latent_dim: int
    info: dict
    train_labels: np.ndarray | None = None
    heldout_labels: np.ndarray | None = None

    def generate(self, n, seed=0, labels=None):
        """n raw generator samples, z ~ N(0, I) drawn from ``numpy.random.default_rng(seed)``; float32 NumPy.
        A conditional member needs ``labels`` (an int or n integer classes)."""
        z = np.random.default_rng(seed).normal(size=(n, self.latent_dim)).astype(np.float32)
        if self.train_labels is None:
            return np.asarray(self.generator.predict(z, batch_size=1024, verbose=0), np.float32)
        if labels is None:
            raise ValueError(f"`labels` must be given: {self.name} is class-conditional (an int or {n} classes).")
        labels = np.broadcast_to(np.asarray(labels, np.int32), (n,)).reshape(-1, 1)
        return np.asarray(self.generator.predict([z, labels], batch_size=1024, verbose=0), np.float32)


def train(name, seed=0, *, steps=None, verbose=0):
    """Train a member from scratch (no cache): data from ``seed``, weights and noise from ``seed``.

    Args:
        name: a member of :func:`names`.
        seed: int ≥ 0; the same seed gives the same models.
        steps: override the recipe's generator updates (tiny budgets for tests); None: the recipe's.
        verbose: passed to ``fit``.

    Returns:
        :class:`ZooGAN`.
    """
    recipe_ = recipe(name)
    if steps is not None:
        recipe_ = dataclasses.replace(recipe_, steps=int(steps))
    data = make_data(recipe_, seed)
    keras.utils.set_random_seed(seed)
    generator, discriminator = _networks(recipe_, data["train"].shape[1:])
    if recipe_.conditional:
        gan = ConditionalKerasGAN(generator, discriminator, latent_dim=recipe_.latent_dim, seed=seed)
    else:
        gan = KerasGAN(generator, discriminator, loss=recipe_.loss, latent_dim=recipe_.latent_dim,
                       d_steps=recipe_.d_steps, g_steps=recipe_.g_steps, seed=seed)
    gan.compile(d_optimizer=keras.optimizers.Adam(recipe_.d_learning_rate, beta_1=recipe_.beta_1,
                                                  beta_2=recipe_.beta_2),
                g_optimizer=keras.optimizers.Adam(recipe_.g_learning_rate, beta_1=recipe_.beta_1,
                                                  beta_2=recipe_.beta_2))
    gan_train = data["gan_train"]
    batch = min(recipe_.batch_size, len(gan_train))
    slices = gan_train if not recipe_.conditional else (gan_train, data["gan_train_labels"])
    dataset = (tf.data.Dataset.from_tensor_slices(slices).shuffle(len(gan_train), seed=seed)
               .repeat().batch(batch, drop_remainder=True))
    start = time.perf_counter()
    gan.fit(dataset, steps_per_epoch=recipe_.steps, epochs=1, verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    info = dict(data["info"], recipe=recipe_.to_dict(), seed=int(seed), train_seconds=round(seconds, 2),
                zoo_version=ZOO_VERSION)
    return ZooGAN(name, generator, discriminator, data["train"], data["heldout"], gan_train,
                  _GAN2FLOW_LOSS.get(recipe_.loss), recipe_.latent_dim, info, data.get("train_labels"),
                  data.get("heldout_labels"))


# ----------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir():
    """``$GAN2FLOW_CACHE/zoo``, else ``$XDG_CACHE_HOME/gan2flow/zoo``, else ``~/.cache/gan2flow/zoo``."""
    root = os.environ.get("GAN2FLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gan2flow")
    return os.path.join(root, "zoo")


def entry_dir(name, seed=0, cache_dir=None):
    """The cache folder of a member: ``<cache_dir>/<name>-<hash of recipe, seed and ZOO_VERSION>``."""
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    return os.path.join(cache_dir, f"{name}-{recipe(name).digest(seed)}")


def _save(member, folder):
    """Write a member into a temporary sibling folder, then rename it into place (atomic on one file system)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(folder) + "-")
    try:
        member.generator.save(os.path.join(temporary, "generator.keras"))
        member.discriminator.save(os.path.join(temporary, "discriminator.keras"))
        labels = {} if member.train_labels is None else {"train_labels": member.train_labels,
                                                          "heldout_labels": member.heldout_labels}
        np.savez(os.path.join(temporary, "data.npz"), train=member.train, heldout=member.heldout,
                 gan_train=member.gan_train, **labels)
        meta = {"name": member.name, "loss": member.loss, "latent_dim": member.latent_dim, "info": member.info}
        with open(os.path.join(temporary, "meta.json"), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o755)  # mkdtemp makes 0700 folders
        if os.path.isdir(folder):  # a concurrent writer finished first, or retrain: replace the old entry
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(temporary, folder)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


def _load_entry(folder):
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    with np.load(os.path.join(folder, "data.npz")) as arrays:
        train_, heldout, gan_train = arrays["train"], arrays["heldout"], arrays["gan_train"]
        labels = ((arrays["train_labels"], arrays["heldout_labels"]) if "train_labels" in arrays.files
                  else (None, None))
    generator = keras.saving.load_model(os.path.join(folder, "generator.keras"), compile=False)
    discriminator = keras.saving.load_model(os.path.join(folder, "discriminator.keras"), compile=False)
    info = dict(meta["info"], cache_dir=folder)
    return ZooGAN(meta["name"], generator, discriminator, train_, heldout, gan_train, meta["loss"],
                  int(meta["latent_dim"]), info, *labels)


def load(name, *, seed=0, cache_dir=None, retrain=False, verbose=0):
    """A trained member: from the cache when it holds this recipe and seed, else trained and cached.

    Args:
        name: a member of :func:`names`.
        seed: int ≥ 0 (part of the cache key).
        cache_dir: the zoo's cache folder (default :func:`default_cache_dir`).
        retrain: train again and replace the cached entry.
        verbose: print where the member comes from.

    Returns:
        :class:`ZooGAN` (``info["cache_dir"]`` is its folder).
    """
    folder = entry_dir(name, seed, cache_dir)
    if not retrain and os.path.isfile(os.path.join(folder, "meta.json")):
        if verbose:
            print(f"zoo: loading {name} from {folder}")
        return _load_entry(folder)
    if verbose:
        print(f"zoo: training {name} (seed {seed}) -> {folder}")
    member = train(name, seed)
    member.info["cache_dir"] = folder
    _save(member, folder)
    return member
