"""Shared loading and evaluation for the staged-calibration experiments."""
import os, time
import numpy as np
import keras
import tensorflow as tf
import gan2flow
from gan2flow import image_metrics, metrics

HERE = os.path.dirname(os.path.abspath(__file__))
GANS = os.path.join(HERE, "gans")


def load(name):
    G = keras.models.load_model(os.path.join(GANS, f"{name}_generator.keras"))
    D = keras.models.load_model(os.path.join(GANS, f"{name}_discriminator.keras"))
    data = dict(np.load(os.path.join(GANS, f"{name}_data.npz")))
    return G, D, data


def raw_samples(G, n, seed=0):
    z = tf.random.stateless_normal((n,) + tuple(G.input_shape[1:]), seed=[seed, 0], alg="philox")
    return np.asarray(G(z, training=False), np.float32)


def out_of_range(x, lo, hi, margin=0.1):
    """Share of coordinates beyond the data range by more than margin·(hi − lo)."""
    span = hi - lo
    x = x.reshape(len(x), -1)
    return float(np.mean((x < lo.reshape(-1) - margin * span.reshape(-1)) | (x > hi.reshape(-1) + margin * span.reshape(-1))))


_clf = {}


def eval_digits(x, data):
    if "c" not in _clf:
        _clf["c"] = image_metrics.digit_classifier()
        _clf["ref"] = image_metrics.image_features(data["heldout"], _clf["c"])
    x = np.asarray(x, np.float32)
    lo, hi = np.float32(-1.0), np.float32(1.0)
    finite = np.isfinite(x).all(axis=(1, 2, 3))
    xs = np.clip(np.nan_to_num(x), -50, 50)
    s = image_metrics.image_summary(xs, data["heldout"], data["train"], classifier=_clf["c"], reference_features=_clf["ref"])
    return {"fd": s["fd"], "precision": s["precision"], "recall": s["recall"], "nn_median": s["nn_median"],
            "out_of_range": out_of_range(xs, np.array(lo), np.array(hi)), "min": float(xs.min()), "max": float(xs.max()),
            "nonfinite": int((~finite).sum())}


def eval_ring(x, data):
    x = np.asarray(x, np.float32)
    held = data["heldout"]
    d = x.shape[1]
    from scipy.stats import chi2
    threshold = 3.0 if d == 2 else float(np.sqrt(chi2.ppf(0.99, d)))   # the 2-D figure stays VEEGAN's 3 std
    st = metrics.mode_stats(x, data["centers"], float(data["std"]), threshold)
    share = st["counts"] / len(x) * len(data["centers"])
    lo, hi = data["train"].min(0), data["train"].max(0)
    nn = image_metrics.nearest_distances(x, data["train"])
    return {"sw2": metrics.sliced_wasserstein(x, held), "modes": int(st["modes"]), "hq": st["high_quality"],
            "dropped_share": float(share[0]), "min_share": float(share.min()),
            "nn_median": float(np.median(nn)), "out_of_range": out_of_range(x, lo, hi)}


def fmt(d):
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
