"""Issue 17: convert the image zoo GANs with the defaults, refine 10 000 samples in chunks, measure and time it.

    python benchmarks/images.py                                   # both image members, 10 000 refined samples
    python benchmarks/images.py --members patches32_dcgan --n 10000 --out images-benchmark/
    python benchmarks/images.py --n 2000 --no-grids               # a shorter run

For each member of :mod:`gan2flow.experiments.zoo` marked as an image GAN (``patches32_dcgan``: 32×32 RGB
patches of scikit-learn's sample photos; ``faces25_dcgan``: skimage's 25×25 lfw_subset):

    flow = gan2flow.convert(G, D, member.train, loss=member.loss)          # defaults (timed: "convert s")
    raw = flow.sample(n, refine=False, seed=0)
    refined = flow.sample(n, seed=0, batch_size=chunk)                     # streamed in chunks ("refine s")

and measures the first ``--n-eval`` (2 000) raw and refined samples with
:func:`gan2flow.image_metrics.image_report` in the features of the self-trained, cached auto-encoder
(:func:`gan2flow.image_metrics.feature_encoder`, trained on ``member.train``):

- ``fd``, ``precision``, ``recall`` against a reference set: for the patches, 2 000 further patches from the
  training tiles (``zoo.make_data(...)["reference"]``, never given to the GAN or to ``convert``); for the faces,
  all 200 real images (train ∪ held-out: the 40 held-out images alone are too few for a 128-feature Fréchet
  distance), which a copying refiner would flatter — hence the next number;
- ``nn_ratio``: median distance to the nearest training image over the same for the held-out real images
  (held-out tiles for the patches), < 0.75 means copying; ``out``: share of values beyond [−1, 1] by more than
  0.2; ``sw`` (pixel sliced W2) and ``spectrum`` (log power-spectrum distance) against the reference.

When the held-out set is smaller than ``--n-eval`` (the faces: 40), its FD carries a far larger small-sample bias
than the 2 000 samples' and is no floor: :func:`small_sample_floor` adds matched-size comparisons (``matched`` in
``images.json``, a line in ``images.md``). ``--save-samples`` also writes the measured samples
(``<member>_samples.npz``); ``--stage-options '<JSON>'`` (experiments only) overrides the stage defaults.

Targets (issue 17): FD ≥ 25 % lower than raw, recall not lower, nn ratio ≥ 0.75, nothing out of range; and for
the 32×32×3 member, convert + refining 10 000 samples within 600 s on 2 cores. The peak resident memory of the
process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is reported after each member, and the process's CPU
seconds (user + system) over convert and refinement beside the wall-clock seconds: on a shared machine the CPU
seconds divided by the cores used say what an idle machine would take. Writes ``images.json``,
``images.md`` and sample grids (raw / refined, ``<member>_raw.png``, ``<member>_refined.png``) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MEMBERS = ("patches32_dcgan", "faces25_dcgan")
TIME_LIMIT = 600.0


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_member(name, *, n, n_eval, chunk, seed=0, out=None, grids=True, save_samples=False, stage_options=None,
               verbose=1):
    import keras

    import gan2flow
    from gan2flow import image_metrics, metrics, plotting
    from gan2flow.experiments import zoo

    member = zoo.load(name, seed=seed, verbose=verbose)
    data = zoo.make_data(zoo.recipe(name), seed)
    reference = data["reference"] if "reference" in data else np.concatenate([member.train, member.heldout])
    # about 2 000 updates of 64 images however small the data (the faces: 160 images, 3 batches an epoch)
    epochs = max(10, -(-2000 * 64 // len(member.train)))
    encoder = image_metrics.feature_encoder(member.train, name=name, epochs=epochs, verbose=verbose)
    reference_features = image_metrics.encoder_features(reference, encoder)
    heldout_nn = float(np.median(image_metrics.nearest_distances(member.heldout, member.train)))
    keras.utils.set_random_seed(seed)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss,
                            stage_options=stage_options, verbose=verbose)
    convert_seconds = time.perf_counter() - start
    raw = np.asarray(flow.sample(n, refine=False, seed=0))
    report = {}
    start = time.perf_counter()
    refined = np.asarray(flow.sample(n, seed=0, batch_size=chunk, report=report))
    refine_seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    row = {"member": name, "n": n, "n_eval": n_eval, "chunk": chunk, "n_train": len(member.train),
           "sample_shape": list(member.train.shape[1:]), "convert_seconds": round(convert_seconds, 1),
           "refine_seconds": round(refine_seconds, 1), "total_seconds": round(convert_seconds + refine_seconds, 1),
           "cpu_seconds": round(cpu_seconds, 1),
           "peak_rss_mib": round(_peak_mib(), 1), "heldout_nn": heldout_nn,
           "stages_used": len((flow.stages or {}).get("sigmas", [])),
           "stages_calibrated": len(flow.diagnostics.get("stages", [])),
           "fell_back": bool(report.get("fell_back")), "projected": report.get("projected"),
           "gan_train_seconds": member.info.get("train_seconds"), "stage_options": stage_options or {},
           "stage_report": [{key: entry.get(key) for key in ("sigma", "train_loss", "heldout_loss", "gap", "accuracy",
                                                             "trusted", "moves", "step_scale", "why")}
                            for entry in (flow.diagnostics.get("stages") or [])]}
    kwargs = dict(reference_features=reference_features, heldout_nn=heldout_nn, data_range=member.info["data_range"],
                  out_margin=0.1)
    for key, images in (("raw", raw[:n_eval]), ("refined", refined[:n_eval]), ("floor", member.heldout[:n_eval])):
        row[key] = image_metrics.image_report(images, reference, member.train, encoder, **kwargs)
        row[key]["sw"] = metrics.sliced_wasserstein(images, reference, seed=seed)
    if len(member.heldout) < n_eval:  # the held-out FD is no floor at n_eval: matched-size comparisons
        features = {key: image_metrics.encoder_features(images, encoder) for key, images in
                    (("raw", raw[:n_eval]), ("refined", refined[:n_eval]), ("train", member.train),
                     ("heldout", member.heldout))}
        row["matched"] = small_sample_floor(features["raw"], features["refined"], features["train"],
                                            features["heldout"], reference_features, seed=seed)
    raw_m, ref_m = row["raw"], row["refined"]
    row["targets"] = {"fd_-25%": ref_m["fd"] <= 0.75 * raw_m["fd"], "recall_kept": ref_m["recall"] >= raw_m["recall"],
                      "no_copy": ref_m["nn_ratio"] >= 0.75, "in_range": ref_m["out"] == 0.0}
    if name == "patches32_dcgan" and n >= 10000:
        row["targets"]["time_600s"] = row["total_seconds"] <= TIME_LIMIT
    if save_samples and out:
        np.savez_compressed(os.path.join(out, f"{name}_samples.npz"), raw=raw[:n_eval], refined=refined[:n_eval])
    if grids and out:
        for label, images in (("raw", raw), ("refined", refined)):
            plotting.image_grid(images[:40], os.path.join(out, f"{name}_{label}.png"), columns=10,
                                title=f"{name}: {label}", value_range=(-1, 1), cmap="gray")
    return row


def small_sample_floor(raw, refined, train, heldout, reference, *, repeats=200, gaussian_draws=20, seed=0):
    """What real data would score in the same measurement, at matched sample sizes (features [n, d] each).

    The Fréchet distance of n samples is biased upwards by roughly a/n (Chong & Forsyth 2020), so the held-out
    images' FD with m = len(heldout) samples is no floor for n_eval samples. Three matched comparisons:

    - ``at_m``: FD to ``reference`` of ``repeats`` random m-subsets of ``raw``, of ``refined`` and of ``train``
      (training images lie inside the reference as the held-out ones do: the like-for-like real comparison),
      beside the held-out images' one value;
    - ``halves``: ``repeats`` random splits of the real images (train ∪ held-out) into halves A, B: FD(A, B)
      and FD of as many random raw / refined samples to B: a reference disjoint from the measured real set;
    - ``gaussian``: a generator equal to the real data, if the features were Gaussian N(μ, Σ) with the
      reference's mean and covariance: FD of n_eval draws to len(reference) independent draws (what a perfect
      generator would score at the benchmark's sizes, the reference's own sampling noise included), and the same
      with m draws (its n = m value, to compare with ``at_m``'s real rows).

    Returns:
        dict of {name: {"mean", "std", "p05", "p95"}} summaries, plus "n_small" and "heldout".
    """
    from gan2flow import image_metrics

    rng = np.random.default_rng(seed)
    fd = image_metrics.frechet_distance

    def summary(values):
        values = np.asarray(values, np.float64)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                "p05": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95))}

    m = len(heldout)
    result = {"n_small": m, "heldout": fd(heldout, reference)}
    for key, pool in (("raw", raw), ("refined", refined), ("train", train)):
        result[f"at_m_{key}"] = summary([fd(pool[rng.choice(len(pool), m, replace=False)], reference)
                                         for _ in range(repeats)])
    real = np.concatenate([train, heldout])
    half = len(real) // 2
    halves = {"real": [], "raw": [], "refined": []}
    for _ in range(repeats):
        order = rng.permutation(len(real))
        a, b = real[order[:half]], real[order[half:2 * half]]
        halves["real"].append(fd(a, b))
        for key, pool in (("raw", raw), ("refined", refined)):
            halves[key].append(fd(pool[rng.choice(len(pool), half, replace=False)], b))
    result["half"] = half
    result.update({f"halves_{key}": summary(values) for key, values in halves.items()})
    mean, cov = reference.mean(0), np.cov(reference, rowvar=False)
    # (name, generated draws, reference draws)
    for key, n, n_reference in (("gaussian_n_eval", len(raw), len(reference)), ("gaussian_m", m, len(reference)),
                                ("gaussian_half", half, half)):
        draws = [(rng.multivariate_normal(mean, cov, n), rng.multivariate_normal(mean, cov, n_reference))
                 for _ in range(gaussian_draws)]
        result[key] = summary([fd(x, y) for x, y in draws])
    return result


def markdown(rows, machine):
    lines = [f"Measured {machine['date']} on {machine['cores']} × {machine['cpu']} (load average "
             f"{', '.join(map(str, machine['load_average']))}), TensorFlow {machine['tensorflow']}, "
             f"intra-op threads {machine['intra_op_threads']}.", "",
             "| member | n | FD raw → refined | precision | recall | SW2 pixels | spectrum | nn ratio | out of range "
             "| convert s | refine s | CPU s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pair(row, key, digits=3):
        return f"{row['raw'][key]:.{digits}g} → {row['refined'][key]:.{digits}g}"

    for row in rows:
        lines.append(f"| {row['member']} | {row['n']} | {pair(row, 'fd')} (held-out {row['floor']['fd']:.3g}) | "
                     f"{pair(row, 'precision', 2)} | {pair(row, 'recall', 2)} | {pair(row, 'sw')} | "
                     f"{pair(row, 'spectrum')} | {pair(row, 'nn_ratio', 2)} | {pair(row, 'out', 2)} | "
                     f"{row['convert_seconds']} | {row['refine_seconds']} | {row.get('cpu_seconds', '–')} | "
                     f"{row['peak_rss_mib']:.0f} |")
    lines += ["", "| member | " + " | ".join(rows[0]["targets"]) + " |", "|---|" + "---|" * len(rows[0]["targets"])]
    for row in rows:
        lines.append(f"| {row['member']} | " + " | ".join("yes" if v else "**no**" for v in row["targets"].values())
                     + " |")
    for row in rows:
        if "matched" in row:
            floor = row["matched"]

            def stat(key, floor=floor):
                return f"{floor[key]['mean']:.3g} ± {floor[key]['std']:.2g}"

            lines += ["", f"{row['member']}, matched sample sizes (mean ± sd over random subsets; Gaussian: a perfect "
                      f"generator if the features were Gaussian): n = {floor['n_small']} against the reference: "
                      f"held-out {floor['heldout']:.3g}, training subsets {stat('at_m_train')}, raw "
                      f"{stat('at_m_raw')}, refined {stat('at_m_refined')}, Gaussian {stat('gaussian_m')}; "
                      f"disjoint halves of {floor['half']} real images: real {stat('halves_real')}, raw "
                      f"{stat('halves_raw')}, refined {stat('halves_refined')}, Gaussian {stat('gaussian_half')}; "
                      f"n = {row['n_eval']}: Gaussian perfect generator {stat('gaussian_n_eval')}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default=",".join(MEMBERS), help="comma-separated image members")
    parser.add_argument("--n", type=int, default=10000, help="samples refined per member (default 10 000)")
    parser.add_argument("--n-eval", type=int, default=2000, help="samples measured (default 2 000)")
    parser.add_argument("--chunk", type=int, default=2000, help="samples refined at a time (default 2 000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="images-benchmark", help="folder for images.json, images.md, grids")
    parser.add_argument("--no-grids", action="store_true", help="do not write sample grids")
    parser.add_argument("--stage-options", type=json.loads, default=None,
                        help="experiments only: JSON of calibrate_stages options overriding the defaults")
    parser.add_argument("--save-samples", action="store_true",
                        help="also write the measured raw and refined samples (<member>_samples.npz)")
    args = parser.parse_args(argv)
    from gan2flow.experiments import measures

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.members.split(","):
        print(f"== {name}", flush=True)
        rows.append(run_member(name, n=args.n, n_eval=args.n_eval, chunk=args.chunk, seed=args.seed, out=args.out,
                               grids=not args.no_grids, save_samples=args.save_samples,
                               stage_options=args.stage_options))
        machine = measures.machine()
        print(markdown(rows[-1:], machine), flush=True)
        with open(os.path.join(args.out, "images.json"), "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "rows": rows}, handle, indent=1, default=float)
        with open(os.path.join(args.out, "images.md"), "w", encoding="utf-8") as handle:
            handle.write(markdown(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
