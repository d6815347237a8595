"""What the zoo benchmarks measure, shared by ``benchmarks/zoo.py`` and :mod:`gan2flow.experiments.refiners`.

:class:`Reference` holds what every evaluation of one zoo member reuses (held-out features, the i.i.d.
floor, the moons threshold, the held-out nearest-training distance); ``Reference(member, n).evaluate(x)``
gives sliced W2, nearest-training distance ratio, out-of-range share and, per kind of member, modes and
high-quality share (mixtures), the nearest-neighbour high-quality share (moons), Fréchet distance,
precision and recall in digit-classifier features (digits; other image sizes: the features of the
self-trained auto-encoder, :func:`gan2flow.image_metrics.feature_encoder`). See benchmarks/zoo.py's docstring for each
metric's definition.
"""
from __future__ import annotations

import datetime
import os
import platform

import numpy as np

__all__ = ["OUT_MARGIN", "PR_K", "Reference", "flat", "out_of_range", "machine"]

OUT_MARGIN = 0.1  # a value is out of range beyond [lo − 0.1·(hi − lo), hi + 0.1·(hi − lo)]
PR_K = 3


def flat(x):
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def out_of_range(x, data_range):
    low, high = data_range
    margin = OUT_MARGIN * (high - low)
    x = np.asarray(x)
    return float(np.mean((x < low - margin) | (x > high + margin)))


class Reference:
    """What every evaluation of one member reuses: held-out features, moons thresholds, nn of held-out."""

    def __init__(self, member, n, seed=0):
        from gan2flow import metrics

        self.member = member
        self.info = member.info
        self.images = member.train.ndim > 2
        self.heldout = flat(member.heldout)
        self.train = flat(member.train)
        from gan2flow import image_metrics as images

        self.nearest = images.nearest_distances
        self.heldout_nn = float(np.median(self.nearest(self.heldout, self.train)))
        rng = np.random.default_rng(seed)
        floor_train = self.train[rng.choice(len(self.train), min(n, len(self.train)), replace=False)]
        self.floor = {"sw": metrics.sliced_wasserstein(floor_train, self.heldout)}
        if self.images:
            self.images_module = images
            if tuple(member.train.shape[1:]) == (8, 8, 1):
                classifier = images.digit_classifier() if hasattr(images, "digit_classifier") else None
                self.features = lambda x: images.image_features(x, classifier)
            else:  # other image sizes (issue 17): the self-trained auto-encoder of the member's training images
                encoder = images.feature_encoder(member.train, name=member.name,
                                                 epochs=max(10, -(-2000 * 64 // len(member.train))))
                self.features = lambda x: images.encoder_features(x, encoder)
            self.heldout_features = self.features(member.heldout)
            floor_images = member.train[rng.choice(len(member.train), min(n, len(member.train)), replace=False)]
            floor_features = self.features(floor_images)
            self.floor["fd"] = images.frechet_distance(floor_features, self.heldout_features)
            self.floor.update(images.precision_recall(self.heldout_features,
                                                      floor_features[:len(self.heldout_features)], k=PR_K))
        elif "centers" not in self.info:  # a shape without modes (moons): nearest-neighbour quality
            half = len(self.heldout) // 2
            self.half_a, self.half_b = self.heldout[:half], self.heldout[half:]
            self.hq_radius = float(np.quantile(self.nearest(self.half_a, self.half_b), 0.95))

    def evaluate(self, samples):
        from gan2flow import metrics

        samples = np.asarray(samples)
        if not np.all(np.isfinite(samples)):
            return {"error": f"{int(np.sum(~np.isfinite(samples)))} non-finite values"}
        rows = flat(samples)
        nn = float(np.median(self.nearest(rows, self.train)))
        result = {"sw": metrics.sliced_wasserstein(rows, self.heldout), "nn": nn, "nn_ratio": nn / self.heldout_nn,
                  "out": out_of_range(samples, self.info["data_range"]),
                  "min": float(samples.min()), "max": float(samples.max())}
        if self.images:
            images = self.images_module
            features = self.features(samples)
            result["fd"] = images.frechet_distance(features, self.heldout_features)
            result.update(images.precision_recall(self.heldout_features, features[:len(self.heldout_features)],
                                                  k=PR_K))
        elif "centers" in self.info:
            weights = np.asarray(self.info["weights"])
            stats = metrics.mode_stats(rows, np.asarray(self.info["centers"]), np.asarray(self.info["stds"]),
                                       self.info["mode_threshold"], weights=weights)
            result.update(modes=stats["modes"], n_modes=stats["n_modes"], hq=stats["high_quality"],
                          min_share=float(np.min(stats["counts"] / len(rows) / weights)),
                          counts=stats["counts"].tolist())
        else:
            result["hq"] = float(np.mean(self.nearest(rows, self.half_b) <= self.hq_radius))
        return result


def machine():
    """Where and when a measurement ran: date, CPU model, cores, load average, TensorFlow and Python versions,
    and the intra-op thread setting (benchmark tables print it beside their numbers)."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "tensorflow": tf.__version__, "python": platform.python_version(),
            "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default")}
