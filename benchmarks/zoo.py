"""Convert every zoo GAN with gan2flow's defaults and compare raw and refined samples (issue 13's targets).

    python benchmarks/zoo.py                         # all members, 2 000 samples each
    python benchmarks/zoo.py --quick                 # the fast members, 1 000 samples
    python benchmarks/zoo.py --members ring_dropped_hinge,digits_dcgan --n 5000 --out results/

For each member of :mod:`gan2flow.experiments.zoo` (trained once and cached, see docs/zoo.md):

    flow = gan2flow.convert(G, D, member.train, loss=member.loss, verbose=0)   # defaults otherwise
    raw = flow.sample(n, refine=False, seed=0)                                 # the generator's samples
    refined = flow.sample(n, seed=0)                                           # the same latents, refined

and measures, against the member's held-out real data (never seen by the GAN or by ``convert``):

- ``sw``: sliced W2 (:func:`gan2flow.metrics.sliced_wasserstein`, 256 directions) to held-out data;
  ``floor`` is the same between as many training samples and held-out data (the i.i.d. floor).
- mixtures: ``modes`` covered, ``hq`` (high-quality share) and ``min_share`` (the smallest mode's
  high-quality share divided by its true weight; 1 for exact samples up to the HQ rate ≈ 0.99) from
  :func:`gan2flow.metrics.mode_stats` with the member's centres, stds, weights and HQ radius.
- moons: ``hq``: the share of samples whose distance to the nearest point of one half B of the held-out
  data is at most the 95th percentile of the same distance for the other half A (so held-out data
  itself scores 0.95 up to sampling noise).
- digits: ``fd`` (Fréchet distance), ``precision`` and ``recall`` (k = 3, the first 360 samples against
  the 360 held-out digits) in the toolkit's digit-classifier features.
- every member: ``nn`` the median distance from samples to their nearest training sample, and
  ``nn_ratio`` = that over the same median for held-out real data (< 0.75: copying); ``out`` the share of
  sample values outside the data's range [lo, hi] by more than 0.1·(hi − lo); seconds for convert and
  for sampling (refined).

Targets (pass/fail per member): low-dimensional members: sliced W2 ≥ 40 % lower than raw
(``sw_-40%``) and every mode at least half its true share (``modes_half``, mixtures); digits: FD ≥ 30 %
lower (``fd_-30%``) and recall not lower (``recall_kept``); ``in_range``: no refined value out of range;
``not_worse``: the headline metric (sliced W2; FD on digits) not worse than raw; ``no_copy``: nn_ratio ≥ 0.75.
A convert or sample that raises is reported with its error and fails every target.

Conditional members (``--conditional``; issue 16), converted with ``convert(G, D, train, loss=..., labels=...)``
and sampled per class (``flow.sample(n, labels=k, ...)``, the same latents raw and refined), are measured per
class against that class's held-out data: ``sw`` (floor: the class's training against its held-out data),
``own`` (the share of samples within the HQ radius of one of the class's own modes), ``other`` (within it
of another class's mode), the class's modes covered and its smallest mode's share over its true share, ``out``
and ``nn_ratio`` (nearest *class* training sample, over the same for the class's held-out data). Targets per
class: ``sw_-40%``, ``own_kept`` (own share not lower than raw), ``in_range``, ``no_copy``. Written to
``zoo_conditional.json`` / ``zoo_conditional.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

_NO_COPY = 0.75  # refined nn median ≥ 75 % of held-out's


def _reference(member, n, seed=0):
    from gan2flow.experiments import measures

    return measures.Reference(member, n, seed)


def _targets(raw, refined, images, mixture):
    """Issue 13's targets as booleans (None where a target does not apply)."""
    if refined is None or "error" in refined or "error" in raw:
        failed = {"sw_-40%": False, "modes_half": False if mixture else None, "fd_-30%": False, "recall_kept": False,
                  "in_range": False, "not_worse": False, "no_copy": False}
        if images:
            failed.update({"sw_-40%": None, "modes_half": None})
        else:
            failed.update({"fd_-30%": None, "recall_kept": None})
        return failed
    headline = "fd" if images else "sw"
    return {
        "sw_-40%": None if images else refined["sw"] <= 0.6 * raw["sw"],
        "modes_half": refined["min_share"] >= 0.5 if mixture else None,
        "fd_-30%": refined["fd"] <= 0.7 * raw["fd"] if images else None,
        "recall_kept": refined["recall"] >= raw["recall"] if images else None,
        "in_range": refined["out"] == 0.0,
        "not_worse": refined[headline] <= raw[headline],
        "no_copy": refined["nn_ratio"] >= _NO_COPY,
    }


def run_member(name, *, n, seed=0, cache_dir=None, verbose=True):
    """Load (or train) one member, convert it with the defaults, sample raw and refined, measure both."""
    import keras

    import gan2flow
    from gan2flow.experiments import zoo

    start = time.perf_counter()
    member = zoo.load(name, seed=seed, cache_dir=cache_dir, verbose=int(verbose))
    load_seconds = time.perf_counter() - start
    reference = _reference(member, n, seed)
    row = {"member": name, "loss": member.info["recipe"]["loss"], "gan2flow_loss": member.loss,
           "architecture": member.info["recipe"]["architecture"], "n": n, "n_train": len(member.train),
           "n_heldout": len(member.heldout), "train_seconds": member.info.get("train_seconds"),
           "load_seconds": round(load_seconds, 2), "floor": reference.floor}
    mixture = "centers" in member.info
    refined = None
    # convert draws the calibrator's initial weights from Keras's global generator: seed it, so a row does not
    # depend on what the process did before (training a member first, or the members before it).
    keras.utils.set_random_seed(seed)
    try:
        start = time.perf_counter()
        flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss, verbose=0)
        row["convert_seconds"] = round(time.perf_counter() - start, 2)
        row["diagnostics"] = _jsonable(flow.diagnostics)
        raw = np.asarray(flow.sample(n, refine=False, seed=0))
        row["raw"] = reference.evaluate(raw)
        start = time.perf_counter()
        refined_samples = np.asarray(flow.sample(n, seed=0))
        row["sample_seconds"] = round(time.perf_counter() - start, 2)
        refined = reference.evaluate(refined_samples)
    except Exception as error:  # noqa: BLE001  (a failed conversion is a row of the table, not a crash)
        row["error"] = f"{type(error).__name__}: {error}"
        if verbose:
            traceback.print_exc()
        if "raw" not in row:
            row["raw"] = reference.evaluate(member.generate(n, seed=0))
    row["refined"] = refined
    row["targets"] = _targets(row["raw"], refined, reference.images, mixture)
    applicable = [value for value in row["targets"].values() if value is not None]
    row["pass"] = bool(applicable) and all(applicable)
    return row


def _class_stats(samples, label, member, held, train_class):
    """One class's measurements of ``samples`` (see the module docstring)."""
    from gan2flow import image_metrics, metrics
    from gan2flow.experiments import measures

    centers, classes = np.asarray(member.info["centers"]), np.asarray(member.info["mode_classes"])
    std, threshold = np.asarray(member.info["stds"]), member.info["mode_threshold"]
    distance = np.linalg.norm(samples[:, None] - centers[None], axis=2)
    nearest = distance.argmin(1)
    close = distance[np.arange(len(samples)), nearest] <= threshold * std[nearest]
    own = close & (classes[nearest] == label)
    counts = np.bincount(nearest[own], minlength=len(centers))[classes == label]
    share = counts / len(samples) * len(counts)  # each own mode's share over its true share (1 / modes of class)
    heldout_nn = float(np.median(image_metrics.nearest_distances(held, train_class)))
    nn = float(np.median(image_metrics.nearest_distances(samples, train_class)))
    covered = int(np.sum(counts >= 0.2 * len(samples) / len(counts)))  # PacGAN's rule, as metrics.mode_stats
    return {"sw": metrics.sliced_wasserstein(samples, held), "own": float(own.mean()),
            "other": float((close & (classes[nearest] != label)).mean()), "modes": covered,
            "n_modes": int(len(counts)), "min_share": float(share.min()), "counts": counts.tolist(),
            "out": measures.out_of_range(samples, member.info["data_range"]), "nn_ratio": nn / heldout_nn}


def run_conditional_member(name, *, n, seed=0, cache_dir=None, verbose=True):
    """Convert a conditional member with the defaults (and its labels); measure raw and refined per class."""
    import keras

    import gan2flow
    from gan2flow import metrics
    from gan2flow.experiments import zoo

    member = zoo.load(name, seed=seed, cache_dir=cache_dir, verbose=int(verbose))
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    flow = gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss,
                            labels=member.train_labels, verbose=0)
    row = {"member": name, "n": n, "convert_seconds": round(time.perf_counter() - start, 2),
           "train_seconds": member.info.get("train_seconds"), "diagnostics": _jsonable(flow.diagnostics),
           "classes": []}
    for label in range(member.info["n_classes"]):
        held = member.heldout[member.heldout_labels == label]
        train_class = member.train[member.train_labels == label]
        raw = np.asarray(flow.sample(n, refine=False, seed=0, labels=label))
        start = time.perf_counter()
        refined = np.asarray(flow.sample(n, seed=0, labels=label))
        seconds = round(time.perf_counter() - start, 2)
        entry = {"label": label, "floor": metrics.sliced_wasserstein(train_class[:n], held),
                 "raw": _class_stats(raw, label, member, held, train_class),
                 "refined": _class_stats(refined, label, member, held, train_class), "sample_seconds": seconds}
        raw_, refined_ = entry["raw"], entry["refined"]
        entry["targets"] = {"sw_-40%": refined_["sw"] <= 0.6 * raw_["sw"], "own_kept": refined_["own"] >= raw_["own"],
                            "in_range": refined_["out"] == 0.0, "no_copy": refined_["nn_ratio"] >= _NO_COPY}
        entry["pass"] = all(entry["targets"].values())
        row["classes"].append(entry)
    row["pass"] = all(entry["pass"] for entry in row["classes"])
    return row


def conditional_markdown(rows, machine):
    """The per-class tables of the conditional members as Markdown."""
    lines = [f"Measured {machine['date']} on {machine['cores']} × {machine['cpu']} (load average "
             f"{', '.join(map(str, machine['load_average']))}), TensorFlow {machine['tensorflow']}.", "",
             "| member | class | SW2 (raw → refined) | change | floor | own-class modes | other class | modes | "
             "min share | nn ratio | out of range | sample s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for entry in row["classes"]:
            raw, refined = entry["raw"], entry["refined"]
            lines.append(
                f"| {row['member']} | {entry['label']} | {raw['sw']:.3g} → {refined['sw']:.3g} | "
                f"{100 * (refined['sw'] / raw['sw'] - 1):+.0f} % | {entry['floor']:.3g} | {raw['own']:.3f} → "
                f"{refined['own']:.3f} | {raw['other']:.3f} → {refined['other']:.3f} | {raw['modes']}/{raw['n_modes']} "
                f"→ {refined['modes']}/{refined['n_modes']} | {raw['min_share']:.2f} → {refined['min_share']:.2f} | "
                f"{raw['nn_ratio']:.2f} → {refined['nn_ratio']:.2f} | {raw['out']:.2g} → {refined['out']:.2g} | "
                f"{entry['sample_seconds']} |")
    keys = ["sw_-40%", "own_kept", "in_range", "no_copy"]
    lines += ["", "| member | class | " + " | ".join(keys) + " | all | convert s |",
              "|---|---|" + "---|" * (len(keys) + 2)]
    for row in rows:
        for entry in row["classes"]:
            lines.append(f"| {row['member']} | {entry['label']} | "
                         + " | ".join(_number(entry["targets"][k]) for k in keys)
                         + f" | {_number(entry['pass'])} | {row['convert_seconds']} |")
    return "\n".join(lines) + "\n"


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _number(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _pair(row, key, digits=3):
    raw, refined = row["raw"].get(key), (row["refined"] or {}).get(key)
    if raw is None and refined is None:
        return "–"
    return f"{_number(raw, digits)} → {_number(refined, digits) if row['refined'] else 'error'}"


def markdown(rows, machine):
    """The two tables (measurements, targets) as Markdown."""
    lines = [f"Measured {machine['date']} on {machine['cores']} × {machine['cpu']} (load average "
             f"{', '.join(map(str, machine['load_average']))}), TensorFlow {machine['tensorflow']}.", "",
             "| member | loss | headline (raw → refined) | floor | modes | min share | HQ | nn ratio | out of range "
             "| convert s | sample s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        images = "fd" in row["raw"]
        headline = ("FD " + _pair(row, "fd") + f"; precision {_pair(row, 'precision', 2)}; "
                    f"recall {_pair(row, 'recall', 2)}"
                    if images else "SW2 " + _pair(row, "sw"))
        floor = _number(row["floor"]["fd" if images else "sw"])
        modes = (f"{row['raw']['modes']}/{row['raw']['n_modes']} → "
                 f"{row['refined']['modes'] if row['refined'] else 'error'}/{row['raw']['n_modes']}"
                 if "modes" in row["raw"] else "–")
        lines.append(f"| {row['member']} | {row['loss']} | {headline} | {floor} | {modes} | "
                     f"{_pair(row, 'min_share', 2)} "
                     f"| {_pair(row, 'hq', 2)} | {_pair(row, 'nn_ratio', 2)} | {_pair(row, 'out', 2)} "
                     f"| {_number(row.get('convert_seconds'))} | {_number(row.get('sample_seconds'))} |")
    keys = list(rows[0]["targets"]) if rows else []
    lines += ["", "| member | " + " | ".join(keys) + " | all |", "|---|" + "---|" * (len(keys) + 1)]
    for row in rows:
        lines.append(f"| {row['member']} | " + " | ".join(_number(row["targets"][k]) for k in keys)
                     + f" | {_number(row['pass'])} |")
    errors = [row for row in rows if "error" in row]
    if errors:
        lines += [""] + [f"- {row['member']}: {row['error']}" for row in errors]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from gan2flow.experiments import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fast members only, 1 000 samples")
    parser.add_argument("--members", help="comma-separated member names (default: all, or the fast ones with --quick)")
    parser.add_argument("--n", type=int, help="samples per member (default 2 000; 1 000 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="the zoo's training seed")
    parser.add_argument("--cache-dir",
                        help="the zoo's cache folder (default ~/.cache/gan2flow/zoo or $GAN2FLOW_CACHE/zoo)")
    parser.add_argument("--out", default="zoo-benchmark", help="folder for zoo.json and zoo.md")
    parser.add_argument("--conditional", action="store_true",
                        help="the class-conditional members, measured per class (zoo_conditional.json / .md)")
    args = parser.parse_args(argv)
    if args.conditional:
        return _main_conditional(args)
    members = args.members.split(",") if args.members else zoo.names(fast=True if args.quick else None)
    for name in members:
        zoo.recipe(name)  # unknown names fail before any work
    n = args.n or (1000 if args.quick else 2000)
    from gan2flow.experiments import measures

    machine = measures.machine()
    rows = []
    for name in members:
        print(f"== {name}", flush=True)
        row = run_member(name, n=n, seed=args.seed, cache_dir=args.cache_dir)
        rows.append(row)
        print(markdown([row], machine).split("\n", 2)[2], flush=True)
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = markdown(rows, machine)
    print(text)
    return _write(args.out, "zoo", machine, rows, text)


def _write(out, stem, machine, rows, text):
    """``<stem>.json`` (machine, argv, rows) and ``<stem>.md`` (the table) in ``out``; exit status 0 iff all pass."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{stem}.json"), os.path.join(out, f"{stem}.md")]
    with open(paths[0], "w", encoding="utf-8") as handle:
        json.dump({"machine": machine, "argv": sys.argv[1:], "rows": _jsonable(rows)}, handle, indent=2)
    with open(paths[1], "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0 if all(row["pass"] for row in rows) else 1


def _main_conditional(args):
    from gan2flow.experiments import measures, zoo

    members = args.members.split(",") if args.members else zoo.names(conditional=True)
    for name in members:
        if not zoo.recipe(name).conditional:
            raise SystemExit(f"--conditional: {name} is not a class-conditional member ({zoo.names(conditional=True)})")
    n = args.n or (1000 if args.quick else 2000)
    machine = measures.machine()
    rows = []
    for name in members:
        print(f"== {name}", flush=True)
        rows.append(run_conditional_member(name, n=n, seed=args.seed, cache_dir=args.cache_dir))
    machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = conditional_markdown(rows, machine)
    print(text)
    return _write(args.out, "zoo_conditional", machine, rows, text)


if __name__ == "__main__":
    sys.exit(main())
