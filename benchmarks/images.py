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


def run_member(name, *, n, n_eval, chunk, seed=0, out=None, grids=True, verbose=1):
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
                            verbose=verbose)
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
           "gan_train_seconds": member.info.get("train_seconds")}
    kwargs = dict(reference_features=reference_features, heldout_nn=heldout_nn, data_range=member.info["data_range"],
                  out_margin=0.1)
    for key, images in (("raw", raw[:n_eval]), ("refined", refined[:n_eval]), ("floor", member.heldout[:n_eval])):
        row[key] = image_metrics.image_report(images, reference, member.train, encoder, **kwargs)
        row[key]["sw"] = metrics.sliced_wasserstein(images, reference, seed=seed)
    raw_m, ref_m = row["raw"], row["refined"]
    row["targets"] = {"fd_-25%": ref_m["fd"] <= 0.75 * raw_m["fd"], "recall_kept": ref_m["recall"] >= raw_m["recall"],
                      "no_copy": ref_m["nn_ratio"] >= 0.75, "in_range": ref_m["out"] == 0.0}
    if name == "patches32_dcgan" and n >= 10000:
        row["targets"]["time_600s"] = row["total_seconds"] <= TIME_LIMIT
    if grids and out:
        for label, images in (("raw", raw), ("refined", refined)):
            plotting.image_grid(images[:40], os.path.join(out, f"{name}_{label}.png"), columns=10,
                                title=f"{name}: {label}", value_range=(-1, 1), cmap="gray")
    return row


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
    args = parser.parse_args(argv)
    from gan2flow.experiments import measures

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.members.split(","):
        print(f"== {name}", flush=True)
        rows.append(run_member(name, n=args.n, n_eval=args.n_eval, chunk=args.chunk, seed=args.seed, out=args.out,
                               grids=not args.no_grids))
        machine = measures.machine()
        print(markdown(rows[-1:], machine), flush=True)
        with open(os.path.join(args.out, "images.json"), "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "rows": rows}, handle, indent=1, default=float)
        with open(os.path.join(args.out, "images.md"), "w", encoding="utf-8") as handle:
            handle.write(markdown(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
