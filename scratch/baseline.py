import sys, time, numpy as np
from common import *
name = sys.argv[1]
G, D, data = load(name)
ev = eval_digits if name == "digits" else eval_ring
n = 2000 if name == "digits" else 5000
train = data["train"] if name == "digits" else data["gan_train"]
if name != "digits":
    print("iid floor", fmt(ev(data["train"][:n], data)))
    print("nn held-out", float(np.median(image_metrics.nearest_distances(data["heldout"], data["train"]))))
else:
    print("held-out real", fmt(ev(data["heldout"], data)))
print("raw", fmt(ev(raw_samples(G, n), data)))
t = time.time()
flow = gan2flow.convert(G, D, data["train"], verbose=0)
tc = time.time() - t; t = time.time()
x = np.asarray(flow.sample(n, seed=0)); ts = time.time() - t
print("default", fmt(ev(x, data)), f"convert_s={tc:.1f} sample_s={ts:.1f}")
