"""Supplement to ``gan2flow compare --refiners`` (docs/refiners.md): the gradient peers (DGflow, DDLS, DOT) at
a smoother σ than the shared ``flow.check_sigma()`` — the largest calibrated σ and the geometric middle of the
calibrated range — on the flows the comparison cached, seed 0; and the time of ``convert(..., stages=False)``
(what the peers alone would need) on ring_dropped_hinge.

    python benchmarks/refiners_sigma.py [OUT]      # OUT: the comparison's folder (default gan2flow-out/refiners)
"""
import json
import os
import sys
import time

import numpy as np


def main(out="gan2flow-out/refiners"):
    import keras

    import gan2flow
    from gan2flow import refiners
    from gan2flow.experiments import measures, zoo

    rows = []
    for name in ["ring_dropped_hinge", "grid_unequal_lsgan", "moons_wgangp", "mixture16d_bce"]:
        member = zoo.load(name)
        flow = gan2flow.load(os.path.join(out, "flows", f"{name}.keras"))
        reference = measures.Reference(member, 1000)
        low, high = flow.sigma_range
        for label, sigma in (("sigma_max", high), ("geometric_middle", float(np.sqrt(low * high)))):
            for method in ["dgflow", "ddls", "dot"]:
                start = time.perf_counter()
                samples = refiners.get(method)(flow, 1000, seed=0, sigma=sigma)
                seconds = time.perf_counter() - start
                metrics = reference.evaluate(samples)
                row = {"member": name, "method": method, "sigma_name": label, "sigma": sigma, "seconds": seconds,
                       **{key: metrics.get(key) for key in ("sw", "modes", "hq", "min_share", "nn_ratio", "out")}}
                print(row, flush=True)
                rows.append(row)
    member = zoo.load("ring_dropped_hinge")
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    gan2flow.convert(member.generator, member.discriminator, member.train, loss=member.loss, verbose=0, stages=False)
    timing = {"convert_without_stages_seconds": time.perf_counter() - start}
    print(timing)
    with open(os.path.join(out, "sigma_supplement.json"), "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, **timing}, handle, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
