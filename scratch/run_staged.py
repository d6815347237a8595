"""python run_staged.py NAME key=value ...  (settings passed to calibrate_stages)."""
import sys, time, json, numpy as np
from common import *
from gan2flow import staged as st
name = sys.argv[1]
kw = {}
for a in sys.argv[2:]:
    k, v = a.split("=", 1); kw[k] = eval(v)
n_eval = kw.pop("n_eval", 2000 if name == "digits" else 5000)
use_given = kw.pop("use_given", False)
prefix_eval = kw.pop("prefix_eval", False)
G, D, data = load(name)
ev = eval_digits if name == "digits" else eval_ring
rng = np.random.default_rng(0)
real = data["train"]
if name != "digits":   # the user's real data: split off a held-out part for the calibration check
    order = rng.permutation(len(real)); real_heldout, real_train = real[order[:1000]], real[order[1000:]]
else:
    order = rng.permutation(len(real)); nh = len(real) // 5; real_heldout, real_train = real[order[:nh]], real[order[nh:]]
t = time.time()
cal = st.calibrate_stages(G, real_train, real_heldout, latent_shape=G.input_shape[1:], verbose=1,
                          given=D if use_given else None, **kw)
tc = time.time() - t
print(st.format_report(cal))
x0 = raw_samples(G, n_eval, seed=123)
if prefix_eval:
    for k in range(1, len(cal.report) + 1):
        print("PREFIX", k, cal.report[k-1]["sigma"], fmt(ev(np.asarray(st.refine_stages(x0, cal, stages=k)), data)), flush=True)
t = time.time(); x = np.asarray(st.refine_stages(x0, cal)); ts = time.time() - t
res = ev(x, data)
print("RESULT", name, json.dumps({k: v for k, v in kw.items()}, default=str), "use_given=%s" % use_given, fmt(res), f"convert_s={tc:.1f} sample_s={ts:.1f}", flush=True)
