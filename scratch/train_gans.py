"""Train the two foreign test GANs with plain Keras loops (never gan2flow's training code).

(a) 8x8 digits DCGAN, BCE non-saturating, 1200 steps batch 64, Adam 2e-4 b1 0.5.
(b) 2-D hinge MLP GAN on a 10-Gaussian ring (radius 2, std 0.08) with mode 0 removed from its training data.
Writes scratch/gans/{digits,ring}_{generator,discriminator}.keras and the data splits as .npz.
"""
import os, sys, time
import numpy as np
import keras
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.join(os.path.dirname(__file__), "gans")
os.makedirs(OUT, exist_ok=True)


def digits_gan(steps=1200, batch=64, latent=32, seed=0):
    keras.utils.set_random_seed(seed)
    d = load_digits()
    x = (d.images / 16.0 * 2 - 1).astype(np.float32)[..., None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=seed)
    np.savez(os.path.join(OUT, "digits_data.npz"), train=xtr, heldout=xte, ytrain=ytr, yheldout=yte)
    G = keras.Sequential([keras.Input((latent,)), keras.layers.Dense(4 * 4 * 128), keras.layers.LeakyReLU(0.2),
                          keras.layers.Reshape((4, 4, 128)),
                          keras.layers.Conv2DTranspose(128, 4, strides=2, padding="same"), keras.layers.LeakyReLU(0.2),
                          keras.layers.Conv2D(1, 3, padding="same", activation="tanh")], name="generator")
    D = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(64, 3, strides=2, padding="same"),
                          keras.layers.LeakyReLU(0.2), keras.layers.Conv2D(128, 3, strides=2, padding="same"),
                          keras.layers.LeakyReLU(0.2), keras.layers.Flatten(), keras.layers.Dropout(0.2),
                          keras.layers.Dense(1)], name="discriminator")
    return G, D, xtr, latent, steps, batch, "bce"


def ring_gan(steps=3000, batch=256, latent=8, seed=0, n=5000):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(10) / 10
    centers = 2 * np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    std = 0.08
    def draw(m):
        k = rng.integers(0, 10, m)
        return (centers[k] + std * rng.normal(size=(m, 2))).astype(np.float32), k
    full_train, ktr = draw(n)
    heldout, _ = draw(n)
    train = full_train[ktr != 0]   # the GAN never sees mode 0
    np.savez(os.path.join(OUT, "ring_data.npz"), train=full_train, gan_train=train, heldout=heldout,
             centers=centers, std=std)
    G = keras.Sequential([keras.Input((latent,)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(128, activation="relu"), keras.layers.Dense(2)], name="generator")
    D = keras.Sequential([keras.Input((2,)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(128, activation="relu"), keras.layers.Dense(1)], name="discriminator")
    return G, D, train, latent, steps, batch, "hinge"


def mix16_gan(steps=3000, batch=256, latent=16, seed=0, n=6000):
    """(c) 16-D mixture of 8 Gaussians (centres uniform in [-2, 2]^16, std 0.15), BCE, MLP: a typical partial collapse."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-2, 2, size=(8, 16)).astype(np.float32)
    std = 0.15
    def draw(m):
        k = rng.integers(0, 8, m)
        return (centers[k] + std * rng.normal(size=(m, 16))).astype(np.float32)
    train, heldout = draw(n), draw(n)
    np.savez(os.path.join(OUT, "mix16_data.npz"), train=train, gan_train=train, heldout=heldout, centers=centers, std=std)
    G = keras.Sequential([keras.Input((latent,)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(128, activation="relu"), keras.layers.Dense(16)], name="generator")
    D = keras.Sequential([keras.Input((16,)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(128, activation="relu"), keras.layers.Dense(1)], name="discriminator")
    return G, D, train, latent, steps, batch, "bce"


def train(G, D, data, latent, steps, batch, loss, lr=2e-4):
    gopt, dopt = keras.optimizers.Adam(lr, beta_1=0.5), keras.optimizers.Adam(lr, beta_1=0.5)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def step(real):
        z = tf.random.normal((tf.shape(real)[0], latent))
        with tf.GradientTape() as tape:
            fake = G(z, training=True)
            rl, fl = D(real, training=True), D(fake, training=True)
            if loss == "bce":
                dl = bce(tf.ones_like(rl), rl) + bce(tf.zeros_like(fl), fl)
            else:
                dl = tf.reduce_mean(tf.nn.relu(1 - rl)) + tf.reduce_mean(tf.nn.relu(1 + fl))
        dopt.apply_gradients(zip(tape.gradient(dl, D.trainable_weights), D.trainable_weights))
        z = tf.random.normal((tf.shape(real)[0], latent))
        with tf.GradientTape() as tape:
            fl = D(G(z, training=True), training=True)
            gl = bce(tf.ones_like(fl), fl) if loss == "bce" else -tf.reduce_mean(fl)
        gopt.apply_gradients(zip(tape.gradient(gl, G.trainable_weights), G.trainable_weights))
        return dl, gl

    rng = np.random.default_rng(1)
    for i in range(steps):
        dl, gl = step(data[rng.integers(0, len(data), batch)])
        if i % 300 == 0:
            print(i, float(dl), float(gl), flush=True)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        t = time.time()
        G, D, data, latent, steps, batch, loss = {"digits": digits_gan, "ring": ring_gan, "mix16": mix16_gan}[name]()
        train(G, D, data, latent, steps, batch, loss, lr=2e-4 if name == "digits" else 1e-3)
        G.save(os.path.join(OUT, f"{name}_generator.keras"))
        D.save(os.path.join(OUT, f"{name}_discriminator.keras"))
        print(name, "trained in", round(time.time() - t, 1), "s")
