"""Stage-wise calibration on the particles the flow holds (shared/SD_FLOW.md §9.2, §9.5).

A discriminator calibrated once against the generator's distribution q₀ gives ∇log p_σ − ∇log q₀,σ; once
samples move it drifts (§7), and it is asked about points its training never saw (§9.2). Here the
calibration follows the flow instead. At convert time, N generator samples (the particles) are drawn, and
for stages k = 1 … K over a decreasing schedule σ_1 > … > σ_K:

1. train a σ-conditioned logistic discriminator T_k (warm-started from T_{k−1}) on noised real samples
   y + σ_k n versus noised *current* particles x + σ_k n'. At its optimum T_k(x, σ_k) = log p_σk(x) − log q_k,σk(x),
   where q_k is the particles' distribution at stage k;
2. check it on held-out real samples and held-out particles (which move too, never trained on): a stage
   is trusted while held-out loss − training loss ≤ ``max_gap`` and held-out accuracy ≤ ``max_accuracy``
   (otherwise the field is an overfit or saturated extrapolation, §9.1, §9.3). The flow stops before the
   first untrusted stage;
3. move the particles ``flow_steps`` times

       x ← Π_[lo, hi]( x + ε σ_k² ∇ₓT_k(x, σ_k) )

   with Π the projection onto the real data's per-coordinate range [lo, hi]. By Tweedie
   σ²∇(log p_σ − log q_σ) = D_p(x, σ) − D_q(x, σ) is a displacement in data units, so ε is scale-free.

Each stage's weights are kept. Its gradient is the exact score difference ∇log p_σ − ∇log q_k,σ (no drift
correction), and *new* generator samples passed through the same stages follow the same marginals q_k, so
the saved family applies to them unchanged: :func:`refine_stages` does that at sample time, with no training.

Trust and σ range. σ_max starts at twice the data's RMS spread and doubles while noised real and generated
samples still separate (probe accuracy > 0.6); σ_min is the largest of σ_max/100, an eighth of the data's
nearest-neighbour spacing per coordinate and half its quantisation step. Each stage reports its signal, (log 2 −
held-out loss) in standard errors; ``min_signal`` can skip stages without one (off by default: measured
worse). No noise is added: the particles' own distribution is the explicit source, and
Langevin noise would temper the target (§9.4).

Defaults, as measured on foreign GANs (scratch/ in the proto branch): σ ratio 0.9 between stages, 100
updates per stage (300 for the first), 2 moves of ε = 0.5 per stage, a 128×128 swish MLP with 64 σ-damped
Fourier features, warm start, no reuse of the GAN's own discriminator. Fewer, finer stages beat many moves per
stage: the field is calibrated to the particles as they were at the start of the stage, and five moves of
ε = 0.5 overshoot (digits: Fréchet distance oscillating 12 → 6 → 10 → 6 → 8 across stages; ring: modes
scattered mid-flow).

Cost: convert time ≈ K × (``train_steps`` discriminator updates + ``flow_steps`` gradient steps on N
particles); sample time ≈ K × ``flow_steps`` gradient evaluations per sample.

Example::

    staged = gan2flow.staged.calibrate_stages(G, real_train, real_heldout, latent_shape=(32,))
    x = gan2flow.staged.refine_stages(G(z), staged)
    print(gan2flow.staged.format_report(staged))
"""
from __future__ import annotations

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, conv_models, image_metrics, metrics
from gan2flow.estimators import DiscriminatorScoreDifference
from gan2flow.flows import make_plan, run

__all__ = [
    "StagedCalibration",
    "calibrate_stages",
    "refine_stages",
    "default_sigmas",
    "trusted_prefix",
    "format_report",
    "load_stages",
]


class StagedCalibration:
    """The saved family of stage discriminators and how to flow through them.

    Attributes:
        model: the σ-conditioned discriminator ``[x, sigma] -> logit`` (one architecture for all stages).
        weights: list of K weight lists, ``model.set_weights(weights[k])`` gives stage k's T_k.
        sigmas: float64 [K], decreasing.
        step_sizes: float64 [K], η_k = ε σ_k².
        flow_steps: steps taken at each stage.
        bounds: (lo, hi), float32 arrays shaped like one sample: the real data's per-coordinate range.
        report: list of K dicts (sigma, train_loss, heldout_loss, gap, accuracy, saturated, trusted, why).
        n_trusted: stages used by :func:`refine_stages` (the trusted prefix of the schedule).
        sigma_search: the σ_max probes of :func:`calibrate_stages` (σ, held-out accuracy), when it chose σ_max.
    """

    def __init__(self, model, weights, sigmas, step_sizes, flow_steps, bounds, report, n_trusted):
        self.model = model
        self.weights = list(weights)
        self.sigmas = np.asarray(sigmas, np.float64)
        self.step_sizes = np.asarray(step_sizes, np.float64)
        self.flow_steps = int(flow_steps)
        self.bounds = (np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32))
        self.report = list(report)
        self.n_trusted = int(n_trusted)
        self.sigma_search = []
        self._estimator = None

    def discriminator(self, k):
        """Stage k's discriminator as its own Keras model (a clone carrying the stage's weights)."""
        clone = keras.models.clone_model(self.model)
        clone.set_weights(self.weights[k])
        return clone

    def estimator(self, k):
        """``DiscriminatorScoreDifference`` of stage k (the shared model set to stage k's weights)."""
        if self._estimator is None:
            self._estimator = DiscriminatorScoreDifference(self.model, loss="logistic", sigma_conditioned=True)
        self.model.set_weights(self.weights[k])
        return self._estimator

    def save(self, directory):
        """Write ``model.keras``, ``stage_weights.npz`` and ``stages.json`` into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        self.model.save(os.path.join(directory, "model.keras"))
        arrays = {f"stage{k}_w{i}": w for k, ws in enumerate(self.weights) for i, w in enumerate(ws)}
        arrays["lo"], arrays["hi"] = self.bounds
        np.savez(os.path.join(directory, "stage_weights.npz"), **arrays)
        with open(os.path.join(directory, "stages.json"), "w") as handle:
            json.dump({"sigmas": self.sigmas.tolist(), "step_sizes": self.step_sizes.tolist(),
                       "flow_steps": self.flow_steps, "n_trusted": self.n_trusted, "n_weights": len(self.weights[0]),
                       "report": self.report}, handle, indent=1)


def load_stages(directory):
    """Read a :class:`StagedCalibration` written by :meth:`StagedCalibration.save`."""
    with open(os.path.join(directory, "stages.json")) as handle:
        meta = json.load(handle)
    model = keras.models.load_model(os.path.join(directory, "model.keras"))
    arrays = np.load(os.path.join(directory, "stage_weights.npz"))
    weights = [[arrays[f"stage{k}_w{i}"] for i in range(meta["n_weights"])] for k in range(len(meta["sigmas"]))]
    return StagedCalibration(model, weights, meta["sigmas"], meta["step_sizes"], meta["flow_steps"],
                             (arrays["lo"], arrays["hi"]), meta["report"], meta["n_trusted"])


def default_sigmas(real, *, ratio=0.8, max_factor=2.0, min_factor=0.125, max_span=100.0):
    """A geometric σ schedule from the data: σ_{k+1} = ``ratio`` · σ_k from σ_max down to σ_min.

    σ_max = ``max_factor`` × s, s the RMS per-coordinate std of ``real``: noise of twice the data's own spread
    makes noised real and generated samples overlap (a calibrated accuracy near chance), so mass can move
    between modes (§7). σ_min = max(σ_max / ``max_span``, ``min_factor`` × m / √d, quantum / 2), m the median
    nearest-neighbour distance of ``real`` (below it a discriminator sees isolated points), d the dimension,
    quantum the smallest gap between distinct values of one coordinate (the data's quantisation; 0 for
    continuous data). The trust rule of :func:`calibrate_stages` may stop the flow earlier.

    Returns:
        float64 [K], decreasing, K = ⌈log(σ_max/σ_min) / log(1/ratio)⌉ + 1.
    """
    real = np.asarray(real, np.float32)
    flat = real.reshape(len(real), -1)
    spread = float(np.sqrt(np.mean(np.var(flat, axis=0)))) or 1.0
    neighbour = metrics.median_neighbour_distance(flat) / math.sqrt(flat.shape[1])
    sigma_max = max_factor * spread
    sigma_min = min(max(sigma_max / max_span, min_factor * neighbour, 0.5 * _quantum(flat)), sigma_max)
    n_stages = int(math.ceil(math.log(sigma_max / sigma_min) / math.log(1.0 / ratio) - 1e-9)) + 1
    return np.geomspace(sigma_max, sigma_min, max(n_stages, 1))


def _quantum(flat, max_values=64):
    """Smallest gap between distinct values of a coordinate when every coordinate takes few values, else 0."""
    gaps = []
    for column in flat.T[: min(flat.shape[1], 256)]:
        values = np.unique(column)
        if len(values) > max_values:
            return 0.0
        if len(values) > 1:
            gaps.append(np.min(np.diff(values)))
    return float(min(gaps)) if gaps else 0.0


def trusted_prefix(report):
    """Number of leading stages whose report says ``trusted`` (the flow stops before the first that is not)."""
    count = 0
    for entry in report:
        if not entry["trusted"]:
            break
        count += 1
    return count


def _judge(train_loss, heldout_loss, accuracy, saturated, *, max_gap, max_accuracy, max_saturated):
    """(trusted, why) for one stage's calibration numbers."""
    reasons = []
    if heldout_loss - train_loss > max_gap:
        reasons.append(f"held-out loss exceeds training loss by {heldout_loss - train_loss:.3f} > {max_gap}")
    if accuracy > max_accuracy:
        reasons.append(f"held-out accuracy {accuracy:.3f} > {max_accuracy} (classes separate: saturated)")
    if saturated > max_saturated:
        reasons.append(f"{saturated:.1%} of logits beyond ±10 (saturated)")
    return (not reasons), ("; ".join(reasons) if reasons else "ok")


def _move(x, estimator, sigma, step_scale, flow_steps, bounds):
    """``flow_steps`` Euler steps of ε σ² ∇T at one σ, each projected onto ``bounds``: one plan of the flow engine
    (the same arithmetic as a step-by-step loop with a clip after every step)."""
    plan = make_plan(x, estimator, [float(sigma)], step_scale=step_scale, steps_per_sigma=flow_steps, box=bounds)
    return run(plan, x, jit_compile=False).x


def calibrate_stages(generator, real_train, real_heldout, *, latent_shape, sigmas=None, sigma_ratio=0.9,
                     n_particles=4096, heldout_particles=None, train_steps=100, batch_size=256, learning_rate=3e-3,
                     flow_steps=2, step_scale=0.5, hidden=(128, 128), fourier_features=64, given=None,
                     given_loss=None, warm_start=True, max_gap=0.15, max_accuracy=0.95, max_saturated=0.05,
                     min_signal=None, start_accuracy=0.6, max_doublings=3, stop_untrusted=True, min_copy_ratio=0.75,
                     seed=0, verbose=0):
    """Calibrate one discriminator per σ stage on the particles the flow holds, moving them as it goes.

    For k = 1 … K: fit T_k (logistic loss, ``train_steps`` Adam updates of ``batch_size`` real and
    ``batch_size`` particle rows, both noised with σ_k) so that T_k ≈ log p_σk − log q_k,σk; measure it on
    held-out reals vs held-out particles; then move all particles ``flow_steps`` times by
    x ← clip(x + ε σ_k² ∇ₓT_k(x, σ_k), lo, hi).

    Args:
        generator: Keras model z -> x with z ~ N(0, I) shaped [batch, *latent_shape].
        real_train: real samples [n, ...] the discriminators are trained on (also give the bounds).
        real_heldout: real samples [m, ...] for the held-out check (never trained on).
        latent_shape: the generator's latent shape (tuple).
        sigmas: explicit decreasing schedule; None: :func:`default_sigmas` (real_train, ratio=sigma_ratio).
        sigma_ratio: σ_{k+1}/σ_k of the default schedule.
        n_particles: particles trained on; ``heldout_particles`` (default len(real_heldout)) more are
            flowed for the held-out check.
        train_steps: discriminator updates per stage (the first stage gets 3× as many, from scratch).
        flow_steps, step_scale: moves per stage and ε.
        hidden, fourier_features: the calibration MLP (``gan2flow.models.calibration_discriminator``).
        given, given_loss: the GAN's own discriminator, fed (frozen) as a feature; None: not used.
        warm_start: continue from the previous stage's weights (False: re-initialise every stage).
        max_gap, max_accuracy, max_saturated: the trust rule (see :func:`trusted_prefix`). ``max_gap`` 0.15:
            0.05 sits inside the held-out noise, and with the copying check (``min_copy_ratio``) guarding
            against an overfit field's worst effect, the zoo's digits DCGAN refines to σ 0.28 instead of
            0.31 (Fréchet distance −33 % instead of −30 %; 0.25: −36 %, σ 0.23).
        min_signal: None (default): every trusted stage moves the particles. A number: a trusted stage moves
            them only when its held-out loss lies more than this many standard errors below log 2. Measured
            on the dropped-mode ring, skipping such stages *hurt* (sliced W2 0.13–0.19 with 2, 0.11–0.14 without):
            their moves spread the particles at large σ and the later stages re-gather them with the right
            mode weights. The report's ``signal`` says which stages had one.
        start_accuracy, max_doublings: with the default schedule, σ_max is doubled (stages added at the same
            ratio) while a probe discriminator at σ_max still reaches a held-out accuracy above
            ``start_accuracy``, at most ``max_doublings`` times; ``StagedCalibration.sigma_search`` records it.
        stop_untrusted: stop calibrating at the first untrusted stage (its weights are kept, unused).
        min_copy_ratio: the copying check (shared/SD_FLOW.md §8, §9.5). After each stage's moves, the held-out
            particles' median distance to their nearest *training* sample, divided by the same for held-out
            real samples, must stay ≥ this ratio (or not fall, if the generator started below it); a stage
            that pulls particles onto training samples is not trusted.
        seed: seeds latents, noise, batches and initialisation.
        verbose: 1 prints one line per stage.

    Returns:
        A :class:`StagedCalibration`.

    Raises:
        ValueError: mismatched shapes or an empty / increasing schedule.
    """
    real_train = np.asarray(real_train, np.float32)
    real_heldout = np.asarray(real_heldout, np.float32)
    _checks.same_trailing_shape(real_train, real_heldout, "real_train", "real_heldout")
    latent_shape = tuple(int(s) for s in latent_shape)
    sample_shape = real_train.shape[1:]
    automatic = sigmas is None
    sigmas = default_sigmas(real_train, ratio=sigma_ratio) if automatic else np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or len(sigmas) == 0 or np.any(np.diff(sigmas) > 0) or np.any(sigmas <= 0):
        raise ValueError(f"`sigmas` must be a non-empty decreasing 1-D sequence of positive levels, got {sigmas!r}.")
    bounds = (real_train.min(0), real_train.max(0))
    n_heldout = int(heldout_particles or len(real_heldout))
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    z = tf.random.stateless_normal((n_particles + n_heldout,) + latent_shape, seed=[seed, 1], alg="philox")
    particles = tf.concat([tf.cast(generator(z[i:i + 1024], training=False), tf.float32)
                           for i in range(0, n_particles + n_heldout, 1024)], 0)
    if tuple(particles.shape[1:]) != sample_shape:
        raise ValueError(f"`generator` returns samples of shape {tuple(particles.shape[1:])}, `real_train` holds "
                         f"{sample_shape}.")

    def build():
        return conv_models.calibration_model(  # convolutional for images ≥ 16×16, else the MLP
            sample_shape, given=given, given_loss=given_loss, reference=real_train if given is not None else None,
            hidden=hidden, fourier_features=fourier_features, fourier_scales=(float(sigmas[-1]), 2 * float(sigmas[0])))

    model = build()
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
    step_fn, eval_fn = _step_functions(model, optimizer)
    estimator = DiscriminatorScoreDifference(model, loss="logistic", sigma_conditioned=True)
    weights, report, sizes = [], [], []
    m = min(len(real_heldout), n_heldout)
    started = time.time()
    search = []
    if automatic:
        # σ_max must let noised real and generated samples overlap: double it while a probe discriminator still
        # tells them apart (held-out accuracy above `start_accuracy`), at most `max_doublings` times.
        fake_train, fake_heldout = particles[:n_particles], particles[n_particles:]
        initial = [np.array(w) for w in model.get_weights()]
        for attempt in range(max_doublings + 1):
            sigma_t = tf.constant(sigmas[0], tf.float32)
            for _ in range(train_steps * 3):
                step_fn(real_train[rng.integers(0, len(real_train), batch_size)],
                        tf.gather(fake_train, rng.integers(0, n_particles, batch_size)), sigma_t)
            _, _, accuracy, _ = eval_fn(real_heldout[:m], fake_heldout[:m], sigma_t)
            search.append({"sigma": float(sigmas[0]), "accuracy": float(accuracy)})
            if verbose:
                print(f"σ_max probe {sigmas[0]:.3g}: held-out accuracy {float(accuracy):.3f}", flush=True)
            if float(accuracy) <= start_accuracy or attempt == max_doublings:
                break
            added = int(round(math.log(2) / -math.log(sigma_ratio)))
            sigmas = np.geomspace(2 * sigmas[0], sigmas[-1], len(sigmas) + added)
            model.set_weights(initial)
    copy_scale = float(np.median(image_metrics.nearest_distances(real_heldout, real_train))) or 1.0

    def copy_ratio(points):
        return float(np.median(image_metrics.nearest_distances(np.asarray(points), real_train))) / copy_scale

    ratio = copy_ratio(particles[n_particles:n_particles + m])
    for k, sigma in enumerate(sigmas):
        if k and not warm_start:
            model.set_weights(build().get_weights())
            optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
            step_fn, eval_fn = _step_functions(model, optimizer)
        fake_train, fake_heldout = particles[:n_particles], particles[n_particles:]
        sigma_t = tf.constant(sigma, tf.float32)
        for _ in range(train_steps * (3 if k == 0 or not warm_start else 1)):
            real_batch = real_train[rng.integers(0, len(real_train), batch_size)]
            fake_batch = tf.gather(fake_train, rng.integers(0, n_particles, batch_size))
            step_fn(real_batch, fake_batch, sigma_t)
        train_idx = rng.choice(len(real_train), m, replace=m > len(real_train))
        train_loss, _, _, _ = eval_fn(real_train[train_idx], tf.gather(fake_train, rng.integers(0, n_particles, m)),
                                      sigma_t)
        heldout_loss, error, accuracy, saturated = eval_fn(real_heldout[:m], fake_heldout[:m], sigma_t)
        trusted, why = _judge(float(train_loss), float(heldout_loss), float(accuracy), float(saturated),
                              max_gap=max_gap, max_accuracy=max_accuracy, max_saturated=max_saturated)
        if trusted and report and not report[-1]["trusted"]:
            trusted, why = False, "after an untrusted stage"
        # Information: held-out loss below log 2 (a constant guess) by more than `min_signal` standard errors.
        signal = (math.log(2.0) - float(heldout_loss)) / max(float(error), 1e-12)
        moves = bool(trusted and (min_signal is None or signal > min_signal))
        if trusted and not moves:
            why = f"no signal: held-out loss {float(heldout_loss):.4f} within {min_signal} s.e. of log 2, not moved"
        entry = {"stage": k, "sigma": float(sigma), "train_loss": float(train_loss),
                 "heldout_loss": float(heldout_loss),
                 "gap": float(heldout_loss - train_loss), "accuracy": float(accuracy), "saturated": float(saturated),
                 "signal": float(signal), "trusted": bool(trusted), "moves": moves, "why": why}
        weights.append([np.array(w) for w in model.get_weights()])
        sizes.append(step_scale * sigma**2)
        report.append(entry)
        if verbose:
            print(f"stage {k:2d} σ={sigma:.3g} train {entry['train_loss']:.3f} held-out {entry['heldout_loss']:.3f} "
                  f"acc {entry['accuracy']:.3f} sat {entry['saturated']:.3f} signal {signal:.1f} "
                  f"{'moves' if moves else why}"
                  f"  [{time.time() - started:.0f}s]", flush=True)
        if not trusted and stop_untrusted:
            break
        if not moves:
            continue
        particles = _move(particles, estimator, sigma, step_scale, flow_steps, bounds)
        before, ratio = ratio, copy_ratio(particles[n_particles:n_particles + m])
        entry["copy_ratio"] = ratio
        if ratio < min_copy_ratio and ratio < before:
            entry.update(trusted=False, moves=False, why=f"copies: held-out particles' distance to the nearest "
                         f"training sample fell to {ratio:.2f} of held-out real data's (< {min_copy_ratio})")
            if verbose:
                print(f"stage {k:2d}: {entry['why']}", flush=True)
            if stop_untrusted:
                break
    result = StagedCalibration(model, weights, sigmas[:len(weights)], sizes, flow_steps, bounds, report,
                               trusted_prefix(report))
    result.sigma_search = search
    return result


def _step_functions(model, optimizer):
    """A compiled logistic training step and a (loss, accuracy, saturated share) evaluation at one σ."""

    def logits(x, sigma):
        noised = x + sigma * tf.random.normal(tf.shape(x))
        column = tf.fill([tf.shape(x)[0], 1], sigma)
        return tf.reshape(model([noised, column], training=True), [-1])

    def loss_of(real_logits, fake_logits):
        return 0.5 * (tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(tf.nn.softplus(fake_logits)))

    @tf.function(reduce_retracing=True)
    def step(real, fake, sigma):
        with tf.GradientTape() as tape:
            loss = loss_of(logits(real, sigma), logits(fake, sigma))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=False))
        return loss

    @tf.function(reduce_retracing=True)
    def evaluate(real, fake, sigma, draws=4):
        per_sample, hits, saturated = [], [], []
        for _ in range(draws):
            r, f = logits(real, sigma), logits(fake, sigma)
            per_sample.append(0.5 * (tf.nn.softplus(-r) + tf.nn.softplus(f)))
            hits.append(0.5 * (tf.reduce_mean(tf.cast(r > 0, tf.float32)) + tf.reduce_mean(tf.cast(f < 0, tf.float32))))
            saturated.append(tf.reduce_mean(tf.cast(tf.abs(tf.concat([r, f], 0)) > 10.0, tf.float32)))
        per_pair = tf.reduce_mean(tf.stack(per_sample), 0)  # pairs (real_i, fake_i), averaged over the noise draws
        n = tf.cast(tf.shape(per_pair)[0], tf.float32)
        return (tf.reduce_mean(per_pair), tf.math.reduce_std(per_pair) / tf.sqrt(n), tf.reduce_mean(hits),
                tf.reduce_mean(saturated))

    return step, evaluate


def refine_stages(x, staged, *, stages=None):
    """Flow new generator samples through the trusted stages: x ← clip(x + η_k ∇ₓT_k(x, σ_k), lo, hi).

    Args:
        x: generator samples [n, ...] (the same generator the stages were calibrated on).
        staged: a :class:`StagedCalibration`.
        stages: how many leading stages to use (default ``staged.n_trusted``); stages whose report says
            ``moves: False`` (no signal) are skipped, as at calibration.

    Returns:
        float32 tensor shaped like x.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    stages = staged.n_trusted if stages is None else int(stages)
    for k in range(stages):
        if not staged.report[k].get("moves", True):
            continue
        estimator = staged.estimator(k)
        scale = staged.step_sizes[k] / staged.sigmas[k] ** 2
        x = _move(x, estimator, staged.sigmas[k], scale, staged.flow_steps, staged.bounds)
    return x


def format_report(staged):
    """The per-stage report as text, one line per stage."""
    lines = [f"{'stage':>5} {'sigma':>8} {'train':>7} {'heldout':>7} {'gap':>7} {'acc':>6} {'sat':>6}  verdict"]
    for entry in staged.report:
        lines.append(f"{entry['stage']:>5} {entry['sigma']:>8.4g} {entry['train_loss']:>7.3f} "
                     f"{entry['heldout_loss']:>7.3f} "
                     f"{entry['gap']:>7.3f} {entry['accuracy']:>6.3f} {entry['saturated']:>6.3f}  "
                     f"{'trusted' if entry['trusted'] else entry['why']}")
    lines.append(f"refinement uses the first {staged.n_trusted} of {len(staged.report)} stages")
    return "\n".join(lines)
