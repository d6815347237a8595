import numpy as np, tensorflow as tf, keras
from common import *
from gan2flow import staged as st, models
G, D, data = load("ring")
real = data["train"]
fake = raw_samples(G, 4000)
m = models.calibration_discriminator((2,), hidden=(128,128))
opt = keras.optimizers.Adam(1e-3, beta_1=0.5)
step, ev = st._step_functions(m, opt)
rng = np.random.default_rng(0)
s = tf.constant(0.1)
for i in range(600):
    l = step(real[rng.integers(0, len(real), 256)], fake[rng.integers(0, 4000, 256)], s)
    if i % 100 == 0: print(i, float(l), [float(a) for a in ev(real[:1000], fake[:1000], s)])
print(len(m.trainable_variables), opt.iterations)
