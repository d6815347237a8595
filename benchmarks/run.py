"""gan2flow benchmarks: one entry point, every figure measured in the same run.

    python benchmarks/run.py             # full run (about 10 minutes on 2 CPU cores)
    python benchmarks/run.py --quick     # smaller sizes and fewer repeats (about 2 minutes)
    python benchmarks/run.py --sections mlp,kernel --json results.json

Sections (docs/performance.md explains each table):

- ``machine``: CPU, instruction sets, library versions, thread defaults, load average.
- ``matmul``: the float32 (and bfloat16) matrix-product rate of this machine, measured now; the
  reference every "% of matmul" figure divides by.
- ``mlp``: sample·steps/s of ``gan2flow.flow`` along an MLP discriminator (784→512×3→1, batch 1024 and
  2→128×3→1, batch 4096) against a plain eager TensorFlow loop, a per-step ``tf.function`` loop and an
  eager PyTorch loop (one autograd call per step; skipped with a note when torch is missing).
- ``threads``: the same flows under TensorFlow's default thread pools and tuned ones, each in a child
  process (thread pools are fixed once TensorFlow starts; the library never sets them).
- ``kernel``: ``KernelScoreDifference`` at N = M = 16 384, d = 64: time per step against its roofline
  (the two matrix products and the exponentials, each timed alone) and peak memory per block size.
- ``scale``: 10⁴, 10⁵, 10⁶ particles through a discriminator with ``batch_size`` streaming.
- ``compile``: first-call (trace + XLA compile) cost and the steady-state trace count.

Every timing is the median of repeats run round-robin (all competitors of a table take turns, so a
busy machine slows them alike). Speeds are wall-clock; "per CPU-s" columns divide by the process's
CPU time instead, which stays meaningful when other processes share the cores.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

THREAD_CONFIGS = {
    # name: (intra_op_threads, inter_op_threads, extra XLA_FLAGS); 0 = TensorFlow's default.
    "TF defaults": (0, 0, ""),
    "intra=2 inter=1": (2, 1, ""),
    "intra=1 inter=1": (1, 1, ""),
    "defaults + XLA XNNPACK": (0, 0, "--xla_cpu_use_xnnpack=true"),
    "defaults + XLA fast math": (0, 0, "--xla_cpu_enable_fast_math=true"),
}

MLP_SIZES = {
    # name: (input dim, hidden width, hidden layers, batch)
    "large 784→512×3→1": (784, 512, 3, 1024),
    "small 2→128×3→1": (2, 128, 3, 4096),
}


# ---------------------------------------------------------------------------------------------------
# Measuring


def _rss_bytes():
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the high-water mark (monotonic, so deltas are upper bounds)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread.

    TensorFlow's CPU allocator keeps no statistics (``tf.config.experimental.get_memory_info`` raises
    on CPU), so the process's resident set is the honest measure; large buffers are returned to the
    system when freed, so the peak above the baseline is the working set of what ran inside.
    """

    def __enter__(self):
        gc.collect()
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mib(self):
        return (self.peak - self.baseline) / 2**20


def round_robin(cases, repeats, warmup=1):
    """Time every case ``repeats`` times, taking turns; returns {name: {"wall", "cpu"}} medians (s)."""
    for _ in range(warmup):
        for function in cases.values():
            function()
    walls = {name: [] for name in cases}
    cpus = {name: [] for name in cases}
    for _ in range(repeats):
        for name, function in cases.items():
            time.sleep(0.1)  # let the previous engine's worker threads stop spinning before timing the next
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: {"wall": float(np.median(walls[name])), "cpu": float(np.median(cpus[name])),
                   "best_wall": float(np.min(walls[name])), "best_cpu": float(np.min(cpus[name]))}
            for name in cases}


def table(title, header, rows, note=None):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    if note:
        print(f"\n{note}")
    sys.stdout.flush()


def _fmt(value, digits=3):
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


# ---------------------------------------------------------------------------------------------------
# Sections


def section_machine(results):
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # per-shape traces in the scale section are expected, not a warning

    flags = set()
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    try:
        import torch

        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "not installed (PyTorch columns skipped)"
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    rows = [
        ["CPU", f"{model}, {os.cpu_count()} logical cores"],
        ["instruction sets", ", ".join(f"{flag}: {'yes' if flag in flags else 'no'}" for flag in wanted)],
        ["TensorFlow", f"{tf.__version__}; intra-op threads {intra or 'default'}, inter-op {inter or 'default'}"],
        ["PyTorch", torch_version],
        ["XLA_FLAGS", os.environ.get("XLA_FLAGS", "") or "(unset)"],
        ["load average at start (1, 5, 15 min)", ", ".join(f"{v:.2f}" for v in os.getloadavg())],
    ]
    table("Machine", ["what", "value"], rows)
    results["machine"] = {row[0]: row[1] for row in rows}
    results["machine"]["flags"] = sorted(flags & set(wanted))


def _matmul_size(quick):
    """Side of the square float32 matrices of every matmul reference."""
    return 1024 if quick else 2048


def section_matmul(results, quick):
    import tensorflow as tf

    n = _matmul_size(quick)
    rng = np.random.default_rng(0)
    a_np = rng.normal(size=(n, n)).astype(np.float32)
    b_np = rng.normal(size=(n, n)).astype(np.float32)
    a, b = tf.constant(a_np), tf.constant(b_np)
    xla = tf.function(lambda left, right: tf.matmul(left, right), jit_compile=True)
    graph = tf.function(lambda first, second: tf.matmul(first, second))
    a16, b16 = tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)
    cases = {
        "float32, TF + XLA": lambda: xla(a, b).numpy(),
        "float32, TF graph (oneDNN)": lambda: graph(a, b).numpy(),
        "bfloat16, TF + XLA": lambda: xla(a16, b16).numpy(),
    }
    torch = _torch()
    if torch is not None:
        ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)
        cases["float32, PyTorch"] = lambda: ta @ tb
    timings = round_robin(cases, repeats=3 if quick else 7)
    flops = 2.0 * n**3
    rows = []
    for name, timing in timings.items():
        rows.append([name, f"{n}³", _fmt(flops / timing["wall"] / 1e9), _fmt(flops / timing["cpu"] / 1e9)])
    float32 = {name: t for name, t in timings.items() if name.startswith("float32")}
    reference = max(flops / t["wall"] for t in float32.values()) / 1e9
    reference_cpu = max(flops / t["cpu"] for t in float32.values()) / 1e9
    table("Matrix-product rates by engine and precision", ["product", "shape", "GFLOP/s", "GFLOP per CPU-s"], rows,
          note=f"Best float32: {reference:.1f} GFLOP/s ({reference_cpu:.1f} GFLOP per CPU-second). bfloat16 only "
               "pays where the CPU has bfloat16 dot-product instructions (avx512_bf16 / AMX) or on a GPU. The MLP "
               "tables time their float32 reference again in their own rounds.")
    results["matmul"] = {"n": n, "rates": {k: flops / t["wall"] / 1e9 for k, t in timings.items()},
                         "reference": reference, "reference_cpu": reference_cpu}
    return reference, reference_cpu


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _mlp(input_dim, width, depth, seed=0, dtype=None):
    """The benchmark discriminator; ``dtype="mixed_bfloat16"`` computes in bfloat16 (float32 weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(width, activation="swish", dtype=dtype) for _ in range(depth)]
    layers += [keras.layers.Dense(1, dtype=dtype)]
    return keras.Sequential(layers)


def _torch_copy(model, torch):
    modules = []
    dense = [layer for layer in model.layers if layer.weights]
    for index, layer in enumerate(dense):
        kernel, bias = (w.numpy() for w in layer.weights)
        linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if index < len(dense) - 1:
            modules.append(torch.nn.SiLU())
    return torch.nn.Sequential(*modules).eval()


def _forward_flops(input_dim, width, depth):
    """Multiply-adds ×2 of one forward pass of one sample (biases and activations not counted)."""
    return 2.0 * (input_dim * width + (depth - 1) * width * width + width)


def _matmul_cases(quick):
    """Square float32 matrix products (TF + XLA, and PyTorch when installed); returns (cases, flops)."""
    import tensorflow as tf

    n = _matmul_size(quick)
    rng = np.random.default_rng(0)
    a_np = rng.normal(size=(n, n)).astype(np.float32)
    a = tf.constant(a_np)
    xla = tf.function(lambda left, right: tf.matmul(left, right), jit_compile=True)
    products = 4  # per timed call, so one call lasts about as long as a flow

    def tf_products():
        for _ in range(products):
            xla(a, a).numpy()

    cases = {"matmul, TF + XLA": tf_products}
    torch = _torch()
    if torch is not None:
        ta = torch.from_numpy(a_np)

        def torch_products():
            for _ in range(products):
                ta @ ta

        cases["matmul, PyTorch"] = torch_products
    return cases, 2.0 * n**3 * products


def section_mlp(results, quick):
    import tensorflow as tf

    import gan2flow

    torch = _torch()
    steps = 5 if quick else 10
    repeats = 2 if quick else 5
    sigmas = gan2flow.sigmas.geometric(1.0, 0.1, steps)
    step_scale = 0.5
    etas = (step_scale * sigmas**2).numpy()
    sigma_list = [float(s) for s in sigmas.numpy()]
    reference_cases, matmul_flops = _matmul_cases(quick)  # one matrix and one compiled product for all sizes
    reference_cases_n = _matmul_size(quick)
    results["mlp"] = {}
    for size, (input_dim, width, depth, batch) in MLP_SIZES.items():
        model = _mlp(input_dim, width, depth)
        estimator = gan2flow.DiscriminatorScoreDifference(model, loss="logistic", sigma_conditioned=False)
        x_np = np.random.default_rng(1).normal(size=(batch, input_dim)).astype(np.float32)
        x = tf.constant(x_np)
        outputs = {}

        def keep(name, value):
            outputs[name] = np.asarray(value)

        def run_flow(jit):
            return lambda: keep("gan2flow.flow (XLA loop)" if jit else "gan2flow.flow (graph loop)",
                                gan2flow.flow(x, estimator, sigmas, step_scale=step_scale, jit_compile=jit))

        def eager_loop():
            state = x
            for sigma, eta in zip(sigma_list, etas, strict=False):
                state = state + float(eta) * estimator(state, sigma)
            keep("(a) eager TF loop", state)

        step = tf.function(lambda state, sigma, eta: state + eta * estimator(state, sigma))
        sigma_tensors = [tf.constant(s) for s in sigma_list]
        eta_tensors = [tf.constant(float(e)) for e in etas]

        def function_loop():
            state = x
            for sigma, eta in zip(sigma_tensors, eta_tensors, strict=False):
                state = step(state, sigma, eta)
            keep("(b) per-step tf.function loop", state)

        mixed = _mlp(input_dim, width, depth, dtype="mixed_bfloat16")
        mixed.set_weights(model.get_weights())
        mixed_estimator = gan2flow.DiscriminatorScoreDifference(mixed, loss="logistic", sigma_conditioned=False)
        mixed_name = "gan2flow.flow (XLA loop), mixed_bfloat16 model"

        def run_mixed():
            keep(mixed_name, gan2flow.flow(x, mixed_estimator, sigmas, step_scale=step_scale))

        cases = {
            "gan2flow.flow (XLA loop)": run_flow(True),
            "gan2flow.flow (graph loop)": run_flow(False),
            mixed_name: run_mixed,
            "(a) eager TF loop": eager_loop,
            "(b) per-step tf.function loop": function_loop,
        }
        torch_names = []
        if torch is not None:
            net = _torch_copy(model, torch)
            x_torch = torch.from_numpy(x_np)

            def torch_loop(threads):
                def run():
                    previous = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    state = x_torch
                    for eta in etas:
                        leaf = state.detach().requires_grad_(True)
                        (gradient,) = torch.autograd.grad(net(leaf).sum(), leaf)
                        state = state + float(eta) * gradient
                    torch.set_num_threads(previous)
                    keep(name, state.detach().numpy())
                name = f"(c) eager PyTorch loop, {threads} thread{'s' if threads > 1 else ''}"
                return name, run

            thread_options = [torch.get_num_threads()] + ([] if quick or torch.get_num_threads() == 1 else [1])
            for threads in thread_options:
                name, run = torch_loop(threads)
                cases[name] = run
                torch_names.append(name)
        timings = round_robin({**cases, **reference_cases}, repeats=repeats)
        # The reference: the best float32 matrix product, timed in the same rounds as the flows; its
        # fastest repeat (not the median), so the "% of matmul" figures err against gan2flow.
        reference_timings = {name: timings.pop(name) for name in reference_cases}
        reference = max(matmul_flops / t["best_wall"] for t in reference_timings.values()) / 1e9
        reference_cpu = max(matmul_flops / t["best_cpu"] for t in reference_timings.values()) / 1e9
        flops = 2.0 * _forward_flops(input_dim, width, depth) * batch * steps  # forward + input-gradient
        speed = {name: batch * steps / t["wall"] for name, t in timings.items()}
        ours = speed["gan2flow.flow (XLA loop)"]
        best_torch = max((speed[n] for n in torch_names), default=None)
        reference_out = outputs["gan2flow.flow (XLA loop)"]
        # Accuracy: how far each engine's end point is from gan2flow.flow's, relative to how far the flow
        # moved the samples (a relative error of the displacement, L2 over the whole batch).
        scale = float(np.linalg.norm(reference_out - x_np)) or 1.0
        rows = []
        for name, timing in timings.items():
            gflops = flops / timing["wall"] / 1e9
            gflops_cpu = flops / timing["cpu"] / 1e9
            difference = float(np.linalg.norm(outputs[name] - reference_out)) / scale
            rows.append([
                name, _fmt(speed[name]), _fmt(ours / speed[name], 3), _fmt(gflops),
                f"{100 * gflops / reference:.0f} %", f"{100 * gflops_cpu / reference_cpu:.0f} %",
                f"{difference:.1e}",
            ])
        note = (f"{steps} Euler steps; {flops / steps / batch / 1e6:.2f} MFLOP per sample·step "
                f"(forward + input gradient = 2 × forward). ")
        if best_torch is None:
            note += "PyTorch not installed: its rows are skipped (pip install gan2flow[bench])."
        else:
            note += f"gan2flow.flow / best PyTorch loop = {ours / best_torch:.2f}×."
        note += (f" Matmul reference (float32 {reference_cases_n}³, same rounds, fastest repeat): "
                 + ", ".join(f"{name} {matmul_flops / t['best_wall'] / 1e9:.1f} GFLOP/s "
                             f"({matmul_flops / t['best_cpu'] / 1e9:.1f} per CPU-s)"
                             for name, t in reference_timings.items()) + ".")
        table(f"MLP discriminator flow, {size}, batch {batch}",
              ["engine", "sample·steps/s", "gan2flow.flow speed-up", "GFLOP/s", "% of matmul rate",
               "% of matmul rate per CPU-s", "‖x − x_flow‖ / ‖x_flow − x₀‖"], rows, note=note)
        results["mlp"][size] = {
            "speed": speed, "gflops": {n: flops / t["wall"] / 1e9 for n, t in timings.items()},
            "gflops_cpu": {n: flops / t["cpu"] / 1e9 for n, t in timings.items()},
            "speedup_vs_best_torch": None if best_torch is None else ours / best_torch,
            "fraction_of_matmul": flops / timings["gan2flow.flow (XLA loop)"]["wall"] / 1e9 / reference,
            "fraction_of_matmul_cpu": flops / timings["gan2flow.flow (XLA loop)"]["cpu"] / 1e9 / reference_cpu,
        }


def _child_threads(config, quick):
    """Runs in a child process: thread pools are set before TensorFlow runs anything."""
    intra, inter, _ = THREAD_CONFIGS[config]
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    import gan2flow

    steps = 5 if quick else 10
    sigmas = gan2flow.sigmas.geometric(1.0, 0.1, steps)
    cases, flops = {}, {}
    for size, (input_dim, width, depth, batch) in MLP_SIZES.items():
        estimator = gan2flow.DiscriminatorScoreDifference(_mlp(input_dim, width, depth), sigma_conditioned=False)
        x = tf.constant(np.random.default_rng(1).normal(size=(batch, input_dim)).astype(np.float32))
        cases[size] = lambda x=x, estimator=estimator: gan2flow.flow(x, estimator, sigmas).numpy()
        flops[size] = (2.0 * _forward_flops(input_dim, width, depth) * batch * steps, batch * steps)
    n = _matmul_size(quick)
    a = tf.random.normal([n, n])
    matmul = tf.function(lambda left, right: tf.matmul(left, right), jit_compile=True)
    cases["matmul"] = lambda: matmul(a, a).numpy()
    flops["matmul"] = (2.0 * n**3, None)
    timings = round_robin(cases, repeats=2 if quick else 3)
    report = {name: {"gflops": flops[name][0] / t["wall"] / 1e9,
                     "speed": None if flops[name][1] is None else flops[name][1] / t["wall"]}
              for name, t in timings.items()}
    print("CHILD-RESULT " + json.dumps(report))


def section_threads(results, quick):
    rounds = 1 if quick else 2
    collected = {name: [] for name in THREAD_CONFIGS}
    for _ in range(rounds):
        for name, (_, _, xla_flags) in THREAD_CONFIGS.items():
            env = dict(os.environ)
            if xla_flags:
                env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
            command = [sys.executable, os.path.abspath(__file__), "--child-threads", name]
            command += ["--quick"] if quick else []
            completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("CHILD-RESULT ")]
            if completed.returncode != 0 or not lines:
                print(f"(thread config {name!r} failed: {completed.stderr.strip().splitlines()[-1:] })")
                continue
            collected[name].append(json.loads(lines[-1][len("CHILD-RESULT "):]))
    rows = []
    summary = {}
    base = None
    for name, reports in collected.items():
        if not reports:
            continue
        medians = {key: {field: float(np.median([r[key][field] for r in reports if r[key][field] is not None]))
                         if reports[0][key][field] is not None else None for field in ("gflops", "speed")}
                   for key in reports[0]}
        summary[name] = medians
        if base is None:
            base = medians
        large, small = (medians[size] for size in MLP_SIZES)
        rows.append([
            name, _fmt(large["speed"]), _fmt(small["speed"]), _fmt(medians["matmul"]["gflops"]),
            f"{100 * large['gflops'] / medians['matmul']['gflops']:.0f} %",
            f"{large['speed'] / base[list(MLP_SIZES)[0]]['speed']:.2f}×",
            f"{small['speed'] / base[list(MLP_SIZES)[1]]['speed']:.2f}×",
        ])
    table("Thread pools and XLA options (gan2flow.flow, XLA loop; one child process per row and round)",
          ["configuration", "large sample·steps/s", "small sample·steps/s", "matmul GFLOP/s (XLA)",
           "large: % of its matmul", "large vs defaults", "small vs defaults"], rows,
          note=f"Median over {rounds} round(s). The library never changes these settings; set them yourself "
               "with tf.config.threading.set_intra_op_parallelism_threads / ..._inter_op_... before "
               "TensorFlow runs anything, or XLA_FLAGS in the environment.")
    results["threads"] = summary


def _kernel_primitives(samples, n_queries, block):
    """The roofline pieces of one kernel_denoise pass at one block size, each alone in an XLA loop.

    matmul 1: [block, d] @ [d, M]; matmul 2: [block, M] @ [M, d]; exp over [block, M]. Each loop
    iteration perturbs its input so nothing is hoisted; the last result is returned so nothing is
    dropped. Each runs over ceil(N / block) blocks: a full pass over N queries.
    """
    import tensorflow as tf

    m, dim = int(samples.shape[0]), int(samples.shape[1])
    n_blocks = -(-n_queries // block)
    rng = np.random.default_rng(2)
    queries = tf.constant(rng.normal(size=(block, dim)).astype(np.float32))
    weights = tf.constant(rng.uniform(size=(block, m)).astype(np.float32))

    def looped(body, initial):
        def run():
            return tf.while_loop(lambda i, _: i < n_blocks,
                                 lambda i, value: (i + 1, body(tf.cast(i, tf.float32) * 1e-30)),
                                 (tf.constant(0), initial))[1]
        compiled = tf.function(run, jit_compile=True)
        return lambda: compiled().numpy()

    return {
        f"matmul x·yᵀ @{block}": looped(lambda e: tf.matmul(queries + e, samples, transpose_b=True),
                                       tf.zeros([block, m])),
        f"matmul w·y @{block}": looped(lambda e: tf.matmul(weights, samples + e), tf.zeros([block, dim])),
        f"exp @{block}": looped(lambda e: tf.exp(weights + e), tf.zeros([block, m])),
    }


def section_kernel(results, quick):
    import tensorflow as tf

    import gan2flow
    from gan2flow import estimators

    n = m = 4096 if quick else 16384
    dim = 64
    repeats = 2 if quick else 3
    rng = np.random.default_rng(3)
    target = rng.normal(size=(m, dim)).astype(np.float32) + 0.5
    x = tf.constant(rng.normal(size=(n, dim)).astype(np.float32))
    sigmas = [0.8]
    auto = estimators.auto_block_size(n, m)
    samples = tf.constant(target)
    flops = 2 * 2 * 2.0 * n * m * dim  # two passes (target, particles) × two products

    def step_case(block):
        estimator = gan2flow.KernelScoreDifference(target, source=None, block_size=block)
        return lambda: gan2flow.flow(x, estimator, sigmas).numpy()

    # 1. The default (auto) step and the roofline pieces, in the same rounds. A step with source=None
    #    makes two denoising passes (target and particles), each over N queries and M samples; the
    #    roofline takes each piece at its fastest block size.
    candidates = [auto] if quick else sorted({max(16, auto // 2), auto, 2 * auto})
    cases = {"step": step_case("auto")}
    for block in candidates:
        cases.update(_kernel_primitives(samples, n, block))
    timings = round_robin(cases, repeats=repeats)
    pieces = {}
    for name, timing in timings.items():
        if name == "step":
            continue
        piece, block = name.rsplit(" @", 1)
        if piece not in pieces or timing["wall"] < pieces[piece]["wall"]:
            pieces[piece] = {"wall": timing["wall"], "cpu": timing["cpu"], "block": int(block)}
    roofline = 2 * sum(p["wall"] for p in pieces.values())
    roofline_cpu = 2 * sum(p["cpu"] for p in pieces.values())
    step = timings["step"]
    pieces_text = ", ".join(f"{name} {p['wall']:.3f} s (block {p['block']})" for name, p in pieces.items())
    summary = {"auto": {"block": auto, "step_s": step["wall"], "vs_roofline": step["wall"] / roofline,
                        "vs_roofline_cpu": step["cpu"] / roofline_cpu}}
    # 2. Memory (and time) against the block size, one block size at a time.
    rows = []
    for block in [auto] + [b for b in (1024, 4096, None) if b != auto]:
        run = step_case(block)
        with PeakRSS() as memory:
            run()  # includes compiling
            timing = round_robin({"step": run}, repeats=repeats, warmup=0)["step"]
        if block == auto:
            label, timing = f"auto ({auto}); same rounds as the roofline", step
        else:
            label = "None (one block)" if block is None else str(block)
        block_rows = n if block is None else block
        rows.append([label, f"{timing['wall']:.3f}", f"{timing['wall'] / roofline:.2f}×",
                     f"{timing['cpu'] / roofline_cpu:.2f}×", _fmt(flops / timing["wall"] / 1e9),
                     f"{memory.delta_mib:.0f}", f"{block_rows * m * 4 / 2**20:.0f}"])
        summary[label] = {"step_s": timing["wall"], "peak_mib": memory.delta_mib}
    table(f"Kernel estimator, N = M = {n:,}, d = {dim}, source = the particles (one flow step)",
          ["block_size", "s / step", "vs roofline", "vs roofline (CPU-s)", "matmul GFLOP/s",
           "peak Δ memory (MiB)", "one [block, M] float32 (MiB)"], rows,
          note=f"Roofline {roofline:.3f} s per step ({roofline_cpu:.3f} CPU-s) = 2 passes × ({pieces_text}), "
               f"timed in the same rounds as the first row. N·M float32 = {n * m * 4 / 2**20:.0f} MiB. Peak Δ "
               "memory: the process's resident set above its level before the first call of that block size "
               "(compiling included; TensorFlow keeps no CPU allocator statistics).")
    results["kernel"] = {"n": n, "roofline_s": roofline, "roofline_cpu_s": roofline_cpu, "pieces": pieces,
                         "rows": summary}


def section_scale(results, quick):
    import tensorflow as tf

    import gan2flow

    sizes = [10**3, 10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    batch_size = 16384 if quick else 65536
    steps = 3 if quick else 5
    input_dim, width, depth, _ = MLP_SIZES["small 2→128×3→1"]
    estimator = gan2flow.DiscriminatorScoreDifference(_mlp(input_dim, width, depth), sigma_conditioned=False)
    sigmas = gan2flow.sigmas.geometric(1.0, 0.1, steps)
    rows, summary = [], {}
    runs = [(n, batch_size) for n in sizes] + ([] if quick else [(sizes[-1], None)])
    base_time = None
    for n, chunk in runs:
        x = tf.constant(np.random.default_rng(4).normal(size=(n, input_dim)).astype(np.float32))
        start = time.perf_counter()
        gan2flow.flow(x, estimator, sigmas, batch_size=chunk).numpy()
        first = time.perf_counter() - start
        with PeakRSS() as memory:
            timing = round_robin({"flow": lambda: gan2flow.flow(x, estimator, sigmas, batch_size=chunk).numpy()},
                                 repeats=1 if n >= 10**6 else 2, warmup=0)["flow"]
        if base_time is None:
            base_time = timing["wall"] / n
        rows.append([
            f"{n:,}", "None (one chunk)" if chunk is None else f"{chunk:,}", f"{timing['wall']:.2f}",
            _fmt(n * steps / timing["wall"]), f"{timing['wall'] / n / base_time:.2f}",
            f"{memory.delta_mib:.0f}", f"{n * input_dim * 4 * 2 / 2**20:.1f}", f"{first:.2f}",
        ])
        summary[f"{n}/{chunk}"] = {"seconds": timing["wall"], "speed": n * steps / timing["wall"],
                                   "peak_mib": memory.delta_mib, "first_call_s": first}
    table(f"Scale: particles through the small discriminator ({steps} steps, batch_size streaming)",
          ["N", "batch_size", "s", "sample·steps/s", "time per sample vs smallest N", "peak Δ memory (MiB)",
           "input + output arrays (MiB)", "first call (s, incl. compile)"], rows,
          note="Memory is bounded by batch_size (activations of one chunk), plus the input and output arrays; "
               "the last row shows the same N without streaming.")
    results["scale"] = summary


def section_compile(results, quick):
    import tensorflow as tf

    import gan2flow
    from gan2flow import flows

    rows, summary = [], {}
    steps = 10
    for size, (input_dim, width, depth, batch) in MLP_SIZES.items():
        estimator = gan2flow.DiscriminatorScoreDifference(_mlp(input_dim, width, depth), sigma_conditioned=False)
        x = tf.constant(np.random.default_rng(5).normal(size=(batch, input_dim)).astype(np.float32))
        traces = flows.trace_count()
        start = time.perf_counter()
        gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(1.0, 0.1, steps)).numpy()
        first = time.perf_counter() - start
        first_traces = flows.trace_count() - traces
        steady = []
        for sigma_max in (2.0, 1.5, 0.9, 0.7, 0.5):
            schedule = gan2flow.sigmas.geometric(sigma_max, 0.05, steps)
            start = time.perf_counter()
            gan2flow.flow(x, estimator, schedule, step_scale=0.3).numpy()
            steady.append(time.perf_counter() - start)
        retraces = flows.trace_count() - traces - first_traces
        rows.append([size, f"{first:.2f}", f"{np.median(steady):.3f}", str(first_traces), str(retraces)])
        summary[size] = {"first_s": first, "steady_s": float(np.median(steady)), "retraces": retraces}
    table(f"Compilation: first call vs steady state ({steps}-step flow; then 5 calls with new σ values)",
          ["discriminator", "first call (s)", "later calls (s, median)", "traces on first call",
           "traces in steady state"], rows)
    results["compile"] = summary


SECTIONS = {
    "matmul": None, "mlp": None, "threads": section_threads, "kernel": section_kernel, "scale": section_scale,
    "compile": section_compile,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--sections", default="matmul,mlp,threads,kernel,scale,compile",
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--child-threads", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_threads:
        _child_threads(args.child_threads, args.quick)
        return 0
    wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {sorted(SECTIONS)}")
    results = {"quick": args.quick}
    started = time.perf_counter()
    print(f"# gan2flow benchmarks ({'quick' if args.quick else 'full'} run)")
    if "threads" in wanted:  # children first, while this process has not started TensorFlow's pools
        section_threads(results, args.quick)
    section_machine(results)
    if "matmul" in wanted:
        section_matmul(results, args.quick)
    if "mlp" in wanted:
        section_mlp(results, args.quick)
    for name in ("kernel", "scale", "compile"):
        if name in wanted:
            SECTIONS[name](results, args.quick)
    elapsed = time.perf_counter() - started
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nTotal {elapsed:.0f} s; load average at end (1, 5, 15 min): {load}.")
    results["elapsed_s"] = elapsed
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
