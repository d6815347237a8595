"""Stage-wise calibration on the particles the flow holds (shared/SD_FLOW.md §9.2, §9.5).

A discriminator calibrated once against the generator's distribution q₀ gives ∇log p_σ − ∇log q₀,σ; once
samples move it drifts (§7), and it is asked about points its training never saw (§9.2). Here the
calibration follows the flow instead. At convert time, N generator samples (the particles) are drawn, and
for stages k = 1 … K over a decreasing schedule σ_1 > … > σ_K:

1. train a σ-conditioned logistic discriminator T_k (warm-started from T_{k−1}) on noised real samples
   y + σ_k n versus noised *current* particles x + σ_k n'. At its optimum T_k(x, σ_k) = log p_σk(x) − log q_k,σk(x),
   where q_k is the particles' distribution at stage k;
2. check it on held-out real samples and held-out particles (which move too, never trained on): a stage
   is trusted while held-out loss − training loss ≤ ``max_gap`` + 2 standard errors of that gap (at least 512
   held-out particles are flowed, whatever the number of held-out reals) and held-out accuracy ≤ ``max_accuracy``
   (otherwise the field is an overfit or saturated extrapolation, §9.1, §9.3). The flow stops before the
   first untrusted stage;
3. move the particles ``flow_steps`` times

       x ← Π_[lo, hi]( x + ε σ_k² ∇ₓT_k(x, σ_k) + √(2ε) σ_k s n ),   n ~ N(0, I)

   with Π the projection onto the real data's per-coordinate range [lo, hi] and s = ``noise_scale`` (0.03,
   "Noise" below; the last stages are noise-free). By Tweedie
   σ²∇(log p_σ − log q_σ) = D_p(x, σ) − D_q(x, σ) is a displacement in data units, so ε is scale-free.
   The moves are checked without the discriminator (:func:`checked_move`): if they raise the σ-smoothed MMD
   between held-out particles and the data more than 1.5-fold, or pull the held-out particles onto the training
   samples (median nearest-training distance below ``min_copy_ratio`` of :func:`copying_scale`), ε is halved (up
   to 3 times); failing that, a stage whose moves raise the MMD does not move, and one whose moves copy is not
   trusted (the flow stops there). A discriminator's gradient at large σ can be many times too large (issue 15's
   scale fit); on a digits DCGAN the unchecked first stage doubled the Fréchet distance and the flow never recovered;
4. choose the next σ: after a stage whose held-out loss still lies more than ``fine_signal`` standard errors
   below log 2 (the particles differ from the data at that σ: the flow is short of transport) the next stage
   comes at ``fine_ratio`` σ (0.97), otherwise at ``sigma_ratio`` σ (0.9).

Each stage's weights are kept. Its gradient is the exact score difference ∇log p_σ − ∇log q_k,σ (no drift
correction), and *new* generator samples passed through the same stages follow the same marginals q_k, so
the saved family applies to them unchanged: :func:`refine_stages` does that at sample time, with no training.

Trust and σ range. σ_max starts at twice the data's RMS spread and doubles while noised real and generated
samples still separate (probe accuracy > 0.6); σ_min is the largest of σ_max/100, an eighth of the data's
nearest-neighbour spacing per coordinate and half its quantisation step. Each stage reports its signal, (log 2 −
held-out loss) in standard errors; ``min_signal`` can skip stages without one (off by default: measured
worse).

Noise (``noise_scale`` s = 0.03, then ``finish_stages`` = 3 noise-free stages). Without noise a mode the particles
hold too little of can *collapse*: where q_k is short of p, few particles lie there, the discriminator cannot
resolve their spread, and its log-ratio is a smooth bump over the whole mode whose gradient pulls every particle in
it to one point (a step of ε = 1 is a jump to the data's posterior mean there; the repulsion of ∇log q_σ is what
the discriminator misses). A deterministic map never separates points it has merged. Measured on the zoo's unequal
grid (3 × 3 modes, 30 % … 3 %), three conversion seeds: its 3 % mode ended at 0.45, 0.81 and 0.00 of its share, the
last as 82 bit-identical samples (the mode's particles merged at σ ≈ 0.4 — rms spread 0.38 → 0 within four stages —
and the merged point later drifted out of the mode). With noise the moves add √(2ε) σ_k s n, so no two particles
merge and the next stage's discriminator sees their spread; mass also diffuses over the ridges between modes while
σ is large. Seeds 0 / 2: s = 0.03 → 0.67 / 0.53 of the share; s = 0.1 → 0.55 / 0.62 (0.65 / 0.75 without the
finishing stages); s = 0.3 (no finishing stages) → 0.89 / 0.86. Larger s costs elsewhere: the source term is
implicit (each discriminator's −∇log q_σ is learned on the noised particles), so at a fixed σ the stationary law is
p_σ^{1/(1+s²)} (§9.4), and where the trusted range ends at a large σ_K the last stages leave a blur of about
√(2ε·flow_steps)·s·σ_K: with s = 0.3 throughout, the digits DCGAN (σ_K 0.17) refined to Fréchet distance 34 instead
of 4.7 and the overfit ring's weakest mode fell to 0.48; s = 0.1 with finishing: digits 8.2, 16-D mixture sliced W2
0.24 (0.185 without noise). The finishing stages (same σ_K, trained on the blurred particles, moved without noise)
take the blur out where they are trusted; on the digits and the 16-D mixture the first of them already failed the
gap test at σ_K (the schedule had just ended there for overfitting), so their remaining blur is 0.085 σ_K at s =
0.03. New samples get the same noise at sample time (seeded: ``GANFlow.sample(n, seed=...)`` repeats exactly).

Defaults, as measured on foreign GANs (the zoo, docs/zoo.md): σ ratio 0.9 between stages, 0.97 after a stage
with a signal, 100 updates per stage (300 for the first), 4 moves of ε = 1 per stage with backtracking, a
128×128 swish MLP with 64 σ-damped Fourier features, warm start, no reuse of the GAN's own discriminator; on at
most 1 000 real samples the chosen stages are calibrated again on all of them (``refit``). Without the
backtracking, more than two moves per stage overshot (digits: Fréchet distance oscillating 12 → 6 → 10 → 6 → 8
across stages with five moves); with it, four moves of ε = 1 carry the mass a 16-D mixture's missing modes need
(the smallest mode at 0.72 of its share; four moves of ε = 0.5: 0.03–0.62 over runs; two: 0.10–0.41; eight of
ε = 0.5: 0.70, with 91 of 141 stages halved).

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

from gan2flow import _checks, adapters, conv_models, image_metrics, metrics
from gan2flow.estimators import DiscriminatorScoreDifference, LabelledModel, RowLabels
from gan2flow.flows import make_plan, run

__all__ = [
    "StagedCalibration",
    "smoothed_mmd",
    "copying_scale",
    "checked_move",
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
        noise_scale: s of the moves' noise √(2η_k) s n (0: deterministic).
        noise_levels: float64 [K], stage k's noise is noise_levels[k] · noise_scale (0 for finishing stages).
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
        self.noise_scale = 0.0
        self.noise_levels = np.ones(len(self.sigmas))  # stage k's noise: noise_levels[k] · noise_scale
        self.row_labels = None  # a RowLabels for class-conditional stages (set by calibrate_stages)
        self.particle_labels = None  # the calibration particles' labels (class-conditional stages)
        self._estimator = None

    def discriminator(self, k):
        """Stage k's discriminator as its own Keras model (a clone carrying the stage's weights)."""
        clone = keras.models.clone_model(self.model)
        clone.set_weights(self.weights[k])
        return clone

    def estimator(self, k):
        """``DiscriminatorScoreDifference`` of stage k (the shared model set to stage k's weights)."""
        if self._estimator is None:
            model = self.model if self.row_labels is None else LabelledModel(self.model, self.row_labels)
            self._estimator = DiscriminatorScoreDifference(model, loss="logistic", sigma_conditioned=True)
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
                       "flow_steps": self.flow_steps, "noise_scale": self.noise_scale,
                       "noise_levels": np.asarray(self.noise_levels).tolist(), "n_trusted": self.n_trusted,
                       "n_weights": len(self.weights[0]),
                       "n_classes": None if self.row_labels is None else int(self.row_labels.n_classes),
                       "report": self.report}, handle, indent=1)


def load_stages(directory):
    """Read a :class:`StagedCalibration` written by :meth:`StagedCalibration.save`."""
    with open(os.path.join(directory, "stages.json")) as handle:
        meta = json.load(handle)
    model = keras.models.load_model(os.path.join(directory, "model.keras"))
    arrays = np.load(os.path.join(directory, "stage_weights.npz"))
    weights = [[arrays[f"stage{k}_w{i}"] for i in range(meta["n_weights"])] for k in range(len(meta["sigmas"]))]
    result = StagedCalibration(model, weights, meta["sigmas"], meta["step_sizes"], meta["flow_steps"],
                               (arrays["lo"], arrays["hi"]), meta["report"], meta["n_trusted"])
    result.noise_scale = float(meta.get("noise_scale", 0.0))  # stages saved before the noise: deterministic
    result.noise_levels = np.asarray(meta.get("noise_levels", np.ones(len(meta["sigmas"]))), np.float64)
    if meta.get("n_classes") is not None:  # class-conditional stages: labels are bound per call (RowLabels)
        result.row_labels = RowLabels(meta["n_classes"])
    return result


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


def _judge(train_loss, heldout_loss, accuracy, saturated, *, max_gap, max_accuracy, max_saturated, gap_error=0.0):
    """(trusted, why) for one stage's calibration numbers; the gap may exceed ``max_gap`` by ``gap_error`` (the
    noise allowance: ``gap_errors`` standard errors of the measured gap)."""
    reasons = []
    limit = max_gap + gap_error
    if heldout_loss - train_loss > limit:
        allowance = f" (= {max_gap} + {gap_error:.3f} noise allowance)" if gap_error else ""
        reasons.append(f"held-out loss exceeds training loss by {heldout_loss - train_loss:.3f} > {limit:.3g}"
                       f"{allowance}")
    if accuracy > max_accuracy:
        reasons.append(f"held-out accuracy {accuracy:.3f} > {max_accuracy} (classes separate: saturated)")
    if saturated > max_saturated:
        reasons.append(f"{saturated:.1%} of logits beyond ±10 (saturated)")
    return (not reasons), ("; ".join(reasons) if reasons else "ok")


def copying_scale(real_train, real_heldout, *, seed=0, max_rows=1024):
    """The copying check's unit: the median distance from a real sample to its nearest *other* training sample.

    Pooled over the held-out samples (to the training set) and up to ``max_rows`` training samples (leave one
    out: to the rest of the training set), which follow the same law: on a small data set (32 points, 7 held
    out) the held-out samples alone give a median of a handful of distances.
    """
    heldout = image_metrics.nearest_distances(real_heldout, real_train)
    rows = np.random.default_rng([seed, 11]).choice(len(real_train), min(len(real_train), max_rows), replace=False)
    leave_one_out = image_metrics.nearest_distances(np.asarray(real_train)[rows], real_train, exclude=rows)
    return float(np.median(np.concatenate([heldout, leave_one_out]))) or 1.0


def smoothed_mmd(x, y, sigma):
    """Squared MMD between samples x and y with the kernel exp(−‖u − v‖² / (4σ²)): up to a constant factor,
    ∫ (q_σ − p_σ)² for q_σ, p_σ the σ-smoothed laws of x and y. The V-statistic (all pairs, self-pairs
    included): never negative, so ratios of it stay meaningful; its bias, about (1/n + 1/m)(1 − mean kernel),
    is the same before and after a move of x (same n, m), and on small samples it makes a ratio test lenient.

    Cost: O((n + m)² d) time, blocked (:func:`gan2flow.metrics.mmd`).
    """
    # exp(−‖u − v‖²/(4σ²)) is metrics.mmd's Gaussian kernel with bandwidth h = √2 σ.
    return max(metrics.mmd(x, y, bandwidths=math.sqrt(2.0) * float(sigma), biased=True), 0.0)


def checked_move(x, estimator, sigma, step_scale, flow_steps, bounds, real, *, check_rows=slice(None),
                 max_increase=1.5, max_halvings=3, check=None, noise_scale=0.0, seed=0):
    """One stage's moves with backtracking on ε: accept the first ε in step_scale · (1, ½, ¼, …) whose moves raise
    the σ-smoothed MMD (:func:`smoothed_mmd`) between ``x[check_rows]`` and ``real`` at most ``max_increase``-fold
    and pass ``check`` (a callable: moved rows ``x[check_rows]`` -> None, or the reason they fail). Every try draws
    the same noise (``noise_scale``, ``seed``: :func:`_move`).

    Returns:
        (moved x or None when no ε passed, the accepted ε or 0.0, MMD before, MMD after the last try, None or the
        last try's failed check's reason).
    """
    before = smoothed_mmd(np.asarray(x[check_rows]), real, sigma)
    scale, after, failed = float(step_scale), before, None
    for _ in range(max_halvings + 1):
        moved = _move(x, estimator, sigma, scale, flow_steps, bounds, noise_scale=noise_scale, seed=seed)
        rows = np.asarray(moved[check_rows])
        after = smoothed_mmd(rows, real, sigma)
        if math.isinf(max_increase) or after <= max_increase * before + 1e-12:  # inf: no check (inf · 0 is NaN)
            failed = None if check is None else check(rows)
            if failed is None:
                return moved, scale, before, after, None
        scale *= 0.5
    return None, 0.0, before, after, failed


def _move(x, estimator, sigma, step_scale, flow_steps, bounds, *, noise_scale=0.0, seed=0):
    """``flow_steps`` Euler steps of ε σ² ∇T (plus the noise √(2ε) σ s n with s = ``noise_scale``, keyed by
    ``seed``) at one σ, each projected onto ``bounds``: one plan of the flow engine (the same arithmetic as a
    step-by-step loop with a clip after every step)."""
    plan = make_plan(x, estimator, [float(sigma)], step_scale=step_scale, steps_per_sigma=flow_steps, box=bounds,
                     noise_scale=noise_scale, seed=seed)
    return run(plan, x, jit_compile=False).x


MIN_HELDOUT_PARTICLES = 512  # held-out particles (and training-loss rows) in each stage's checks, at least


def calibrate_stages(generator, real_train, real_heldout, *, latent_shape, sigmas=None, sigma_ratio=0.9,
                     fine_ratio=0.97, fine_signal=1.0, max_stages=None,
                     n_particles=4096, heldout_particles=None, train_steps=100, batch_size=256, learning_rate=3e-3,
                     flow_steps=4, step_scale=1.0, hidden=(128, 128), fourier_features=64, given=None,
                     given_loss=None, warm_start=True, max_gap=0.15, gap_errors=2.0, max_accuracy=0.95,
                     max_saturated=0.05,
                     min_signal=None, start_accuracy=0.6, max_doublings=3, stop_untrusted=True, min_copy_ratio=0.8,
                     refit="auto", max_increase=1.5, max_halvings=3, copy_scale=None,
                     seed=0, verbose=0, train_labels=None, heldout_labels=None, n_classes=None,
                     particle_labels=None, noise_scale=0.03, finish_stages=3, noise_levels=None):
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
        sigma_ratio: σ_{k+1}/σ_k of the default schedule after a stage without evidence of a difference.
        fine_ratio, fine_signal: the default schedule is adaptive: after a stage whose held-out loss lies more than
            ``fine_signal`` standard errors below log 2 (the particles still differ from the data at that σ: the
            flow is transport-limited), the next σ is ``fine_ratio`` × σ instead of ``sigma_ratio`` × σ. Measured
            on the zoo: with a fixed ratio 0.9 the 16-D mixture's held-out accuracy stayed at 0.60–0.70 through all
            44 stages and two of its eight modes stayed nearly empty (14 and 3 of 250 expected); adaptive: 8/8 modes,
            the smallest at 0.41 of its share; the unequal grid's 3 % mode 0.43 → 0.53 of its share. ``fine_ratio``
            None: a fixed geometric schedule. An explicit ``sigmas`` is never adapted.
        max_stages: cap on the number of stages (default: 4 × the coarse schedule's length; explicit ``sigmas``:
            their length).
        n_particles: particles trained on; ``heldout_particles`` more are flowed for the held-out checks (default:
            the number of held-out real samples, at least ``MIN_HELDOUT_PARTICLES`` = 512). The checks use all
            held-out particles and all held-out reals (their losses averaged per side), and the training loss
            is measured on at least 512 training rows: with a 32-point data set (7 held out) the checks used to
            see 7 particles, and the copying check stopped the flow at σ 1.4–1.9 on two of three seeds.
        train_steps: discriminator updates per stage (the first stage gets 3× as many, from scratch).
        flow_steps, step_scale: moves per stage and ε.
        hidden, fourier_features: the calibration MLP (``gan2flow.models.calibration_discriminator``).
        given, given_loss: the GAN's own discriminator, fed (frozen) as a feature; None: not used.
        warm_start: continue from the previous stage's weights (False: re-initialise every stage).
        max_gap, max_accuracy, max_saturated: the trust rule (see :func:`trusted_prefix`). ``max_gap`` 0.15:
            0.05 sits inside the held-out noise, and with the copying check (``min_copy_ratio``) guarding
            against an overfit field's worst effect, the zoo's digits DCGAN refines to σ 0.28 instead of
            0.31 (Fréchet distance −33 % instead of −30 %; 0.25: −36 %, σ 0.23).
        gap_errors: noise allowance of the gap test: a stage is untrusted only when the gap exceeds ``max_gap`` by
            more than this many standard errors of the measured gap, √(s.e.(held-out loss)² + s.e.(training loss)²)
            (reported per stage as ``gap_error``). 0: the fixed ``max_gap``. With few held-out real samples (the
            25×25 faces: 32) one standard error of the gap is about 0.08, half of ``max_gap``, so a fixed
            threshold stops on noise: with 2 the faces GAN uses 6 stages instead of 3 (Fréchet distance −40 %
            instead of −20 %, docs/images.md); on large data sets the standard error is 0.01–0.02 and the rule
            hardly changes. The standard error grows as a stage overfits, so the allowance does too (the faces'
            last admitted stage had a gap of 0.32); the copying check (``min_copy_ratio``) still applies.
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
            particles' median distance to their nearest *training* sample, divided by the same for real
            samples (``copy_scale``), must stay ≥ this ratio (or not fall, if the generator started below it); a stage
            that pulls particles onto training samples is retried with a smaller ε, and not trusted when even the
            smallest copies. 0.8: a margin over the no-copying target 0.75 (docs/zoo.md) for the sampling noise
            between the 1 024 held-out particles checked here and new samples (the unequal grid: 0.752 on new
            samples after a check at 0.75).
        max_increase, max_halvings: backtracking on ε (:func:`checked_move`): a stage's moves may raise the
            σ-smoothed MMD between held-out particles and the data at most ``max_increase``-fold; ε is halved up to
            ``max_halvings`` times, then the stage does not move (its report says so, its step size is 0).
        copy_scale: what the copying check divides by (default: :func:`copying_scale`, real samples' median
            distance to their nearest other training sample; the refit passes the first pass's, its held-out data
            being trained on).
        refit: after the held-out split has chosen the stages, calibrate those stages again on training and
            held-out real samples together (:func:`_refit`); ``"auto"``: when they hold at most
            ``REFIT_MAX_REAL`` (1 000) rows, where a fifth of the data matters (the zoo's 32-point ring).
        seed: seeds latents, noise, batches and initialisation.
        verbose: 1 prints one line per stage.
        train_labels, heldout_labels, n_classes: a class-conditional generator ``[z, label] -> x``: the integer
            labels of ``real_train`` and ``real_heldout`` and the number of classes K. Each particle gets a label
            drawn from ``train_labels`` (so q(y) = p(y)) that it keeps as it moves, and every stage's
            discriminator takes ``[x, sigma, label]``: T_k ≈ log p_σk(x | y) − log q_k,σk(x | y), whose gradient
            moves each particle towards its own class (``given`` then takes ``[x, label]``). None: unconditional.
        particle_labels: the particles' labels (``n_particles`` + held-out particles of them) instead of a draw from
            ``train_labels``; the refit passes the first pass's, so that it flows the same particles.
        noise_scale: s ≥ 0 of the moves' noise √(2ε) σ_k s n (module docstring, "Noise"); stored with the stages
            (``StagedCalibration.noise_scale``, ``noise_levels``) so that new samples get the same. 0:
            deterministic moves.
        finish_stages: with noise and the default schedule, this many noise-free stages at the last trusted σ end
            the schedule (before the untrusted stage that stopped it, if any; report entries marked ``finishing``);
            they take out the blur the noise leaves where the trusted range ends at a large σ. An explicit
            ``sigmas`` gets none (give them as its last levels, with ``noise_levels`` 0).
        noise_levels: per-stage factors of ``noise_scale`` for an explicit ``sigmas`` (default: 1 at every level);
            the refit passes the first pass's.

    Returns:
        A :class:`StagedCalibration`.

    Raises:
        ValueError: mismatched shapes or an empty / increasing schedule.
    """
    real_train = np.asarray(real_train, np.float32)
    real_heldout = np.asarray(real_heldout, np.float32)
    noise_scale = _checks.positive_float(noise_scale, "noise_scale", allow_zero=True)
    finish_stages = _checks.positive_int(finish_stages, "finish_stages", allow_zero=True)
    _checks.same_trailing_shape(real_train, real_heldout, "real_train", "real_heldout")
    latent_shape = tuple(int(s) for s in latent_shape)
    sample_shape = real_train.shape[1:]
    automatic = sigmas is None
    sigmas = default_sigmas(real_train, ratio=sigma_ratio) if automatic else np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or len(sigmas) == 0 or np.any(np.diff(sigmas) > 0) or np.any(sigmas <= 0):
        raise ValueError(f"`sigmas` must be a non-empty decreasing 1-D sequence of positive levels, got {sigmas!r}.")
    if noise_levels is not None:
        noise_levels = np.asarray(noise_levels, np.float64).reshape(-1)
        if automatic or len(noise_levels) != len(sigmas) or np.any(noise_levels < 0):
            raise ValueError(f"`noise_levels` must give one factor ≥ 0 per level of an explicit `sigmas` "
                             f"({len(sigmas)} levels), got {noise_levels.tolist()}.")
    bounds = (real_train.min(0), real_train.max(0))
    n_heldout = int(heldout_particles or max(len(real_heldout), MIN_HELDOUT_PARTICLES))
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    labelled = train_labels is not None
    row_labels = particle_labels = fake_labels = heldout_fake_labels = None
    if labelled:
        if heldout_labels is None or n_classes is None:
            raise ValueError("`heldout_labels` and `n_classes` must be given with `train_labels` (a class-conditional "
                             "calibration).")
        train_labels = adapters.check_labels(train_labels, len(real_train), "train_labels", n_classes)
        heldout_labels = adapters.check_labels(heldout_labels, len(real_heldout), "heldout_labels", n_classes)
        particle_labels = (np.random.default_rng([seed, 5]).choice(train_labels, n_particles + n_heldout)
                           if particle_labels is None else np.asarray(particle_labels).reshape(-1))
        if len(particle_labels) != n_particles + n_heldout:
            raise ValueError(f"`particle_labels` must hold one label per particle ({n_particles + n_heldout}), got "
                             f"{len(particle_labels)}.")
        fake_labels, heldout_fake_labels = particle_labels[:n_particles], particle_labels[n_particles:]
        row_labels = RowLabels(n_classes).assign(particle_labels)

    def generate(rows):
        if not labelled:
            return generator(z[rows], training=False)
        return generator([z[rows], adapters.label_input(generator, particle_labels[rows], n_classes)], training=False)

    z = tf.random.stateless_normal((n_particles + n_heldout,) + latent_shape, seed=[seed, 1], alg="philox")
    particles = tf.concat([tf.cast(generate(slice(i, i + 1024)), tf.float32)
                           for i in range(0, n_particles + n_heldout, 1024)], 0)
    if tuple(particles.shape[1:]) != sample_shape:
        raise ValueError(f"`generator` returns samples of shape {tuple(particles.shape[1:])}, `real_train` holds "
                         f"{sample_shape}.")

    def build():
        return conv_models.calibration_model(  # convolutional for images ≥ 16×16, else the MLP
            sample_shape, given=given, given_loss=given_loss, reference=real_train if given is not None else None,
            hidden=hidden, fourier_features=fourier_features, fourier_scales=(float(sigmas[-1]), 2 * float(sigmas[0])),
            n_classes=n_classes if labelled else None, reference_labels=train_labels)

    model = build()
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.5)
    step_fn, eval_fn = _step_functions(model, optimizer)
    estimator = DiscriminatorScoreDifference(model if row_labels is None else LabelledModel(model, row_labels),
                                             loss="logistic", sigma_conditioned=True)
    weights, report, sizes = [], [], []
    m = min(len(real_heldout), n_heldout)  # held-out reals in the checks (all held-out particles are used)
    m_train = min(len(real_train), max(m, MIN_HELDOUT_PARTICLES))
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
                step_fn(_pick(real_train, train_labels, rng.integers(0, len(real_train), batch_size)),
                        _pick(fake_train, fake_labels, rng.integers(0, n_particles, batch_size)), sigma_t)
            _, _, accuracy, _ = eval_fn(_pick(real_heldout, heldout_labels, np.arange(m)),
                                        _pick(fake_heldout, heldout_fake_labels, np.arange(n_heldout)), sigma_t)
            search.append({"sigma": float(sigmas[0]), "accuracy": float(accuracy)})
            if verbose:
                print(f"σ_max probe {sigmas[0]:.3g}: held-out accuracy {float(accuracy):.3f}", flush=True)
            if float(accuracy) <= start_accuracy or attempt == max_doublings:
                break
            added = int(round(math.log(2) / -math.log(sigma_ratio)))
            sigmas = np.geomspace(2 * sigmas[0], sigmas[-1], len(sigmas) + added)
            model.set_weights(initial)
    if copy_scale is None:
        copy_scale = copying_scale(real_train, real_heldout, seed=seed)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-1])
    adaptive = automatic and fine_ratio is not None
    if max_stages is None:
        max_stages = 4 * len(sigmas) if adaptive else len(sigmas)
    levels = []

    def copy_ratio(points):
        return float(np.median(image_metrics.nearest_distances(np.asarray(points), real_train))) / copy_scale

    m_check = min(n_heldout, 1024)
    ratio = copy_ratio(particles[n_particles:n_particles + m_check]) if min_copy_ratio is not None else None
    check_real = real_train[rng.choice(len(real_train), min(len(real_train), 1024), replace=False)]
    state = {"particles": particles, "ratio": ratio, "step_fn": step_fn, "eval_fn": eval_fn}
    factors = []  # each stage's noise factor: its moves add √(2ε) σ (factor · noise_scale) n

    def run_stage(k, sigma, factor):
        """Train, check and move stage k at σ; its report entry, and whether the calibration stops here."""
        particles = state["particles"]
        levels.append(sigma)
        factors.append(float(factor))
        if k and not warm_start:
            model.set_weights(build().get_weights())
            state["step_fn"], state["eval_fn"] = _step_functions(model, keras.optimizers.Adam(learning_rate,
                                                                                              beta_1=0.5))
        step_fn, eval_fn = state["step_fn"], state["eval_fn"]
        fake_train, fake_heldout = particles[:n_particles], particles[n_particles:]
        sigma_t = tf.constant(sigma, tf.float32)
        for _ in range(train_steps * (3 if k == 0 or not warm_start else 1)):
            real_batch = _pick(real_train, train_labels, rng.integers(0, len(real_train), batch_size))
            fake_batch = _pick(fake_train, fake_labels, rng.integers(0, n_particles, batch_size))
            step_fn(real_batch, fake_batch, sigma_t)
        train_idx = rng.choice(len(real_train), m_train, replace=False)
        train_loss, train_error, _, _ = eval_fn(_pick(real_train, train_labels, train_idx),
                                                _pick(fake_train, fake_labels, rng.integers(0, n_particles, n_heldout)),
                                                sigma_t)
        heldout_loss, error, accuracy, saturated = eval_fn(
            _pick(real_heldout, heldout_labels, np.arange(m)),
            _pick(fake_heldout, heldout_fake_labels, np.arange(n_heldout)), sigma_t)
        gap_error = math.hypot(float(error), float(train_error))  # standard error of the measured gap
        trusted, why = _judge(float(train_loss), float(heldout_loss), float(accuracy), float(saturated),
                              max_gap=max_gap, max_accuracy=max_accuracy, max_saturated=max_saturated,
                              gap_error=gap_errors * gap_error)
        if trusted and report and not report[-1]["trusted"]:
            trusted, why = False, "after an untrusted stage"
        # Information: held-out loss below log 2 (a constant guess) by more than `min_signal` standard errors.
        signal = (math.log(2.0) - float(heldout_loss)) / max(float(error), 1e-12)
        moves = bool(trusted and (min_signal is None or signal > min_signal))
        if trusted and not moves:
            why = f"no signal: held-out loss {float(heldout_loss):.4f} within {min_signal} s.e. of log 2, not moved"
        entry = {"stage": k, "sigma": float(sigma), "train_loss": float(train_loss),
                 "heldout_loss": float(heldout_loss),
                 "gap": float(heldout_loss - train_loss), "gap_error": gap_error, "accuracy": float(accuracy),
                 "saturated": float(saturated),
                 "signal": float(signal), "trusted": bool(trusted), "moves": moves, "why": why,
                 "heldout_real": int(m), "heldout_particles": int(n_heldout), "noise": float(factor * noise_scale)}
        weights.append([np.array(w) for w in model.get_weights()])
        sizes.append(step_scale * sigma**2)
        report.append(entry)
        if verbose:
            print(f"stage {k:2d} σ={sigma:.3g} train {entry['train_loss']:.3f} held-out {entry['heldout_loss']:.3f} "
                  f"acc {entry['accuracy']:.3f} sat {entry['saturated']:.3f} signal {signal:.1f} "
                  f"{'moves' if moves else why}"
                  f"  [{time.time() - started:.0f}s]", flush=True)
        if not trusted:
            return entry, stop_untrusted
        if not moves:
            return entry, False
        # Backtracking on ε: a move must not raise the discrepancy between the σ-smoothed particles and the
        # σ-smoothed data (measured by a kernel MMD at that σ, no discriminator involved) by more than
        # `max_increase`; otherwise ε is halved (at most `max_halvings` times) and, failing that, the stage does not
        # move. Measured on a digits DCGAN: the unchecked first stage (σ 4.3) raised it 3.6× and the Fréchet
        # distance 2× (the discriminator's gradient at large σ is far too large, issue 15's "scale fit").
        # The copying check is one of the backtracking's criteria: a move that contracts the particles onto the
        # training samples is first retried with a smaller ε (at small σ a step of ε = 1 jumps to the posterior
        # mean, tighter than the data); only when even the smallest ε copies is the stage distrusted.
        tried = {}

        def copying(rows, before=state["ratio"], tried=tried):
            tried["ratio"] = copy_ratio(rows)
            if tried["ratio"] < min_copy_ratio and tried["ratio"] < before:
                return (f"copies: held-out particles' distance to the nearest training sample fell to "
                        f"{tried['ratio']:.2f} of real data's (< {min_copy_ratio})")
            return None

        moved, scale, before_mmd, after_mmd, failed = checked_move(
            particles, estimator, sigma, step_scale, flow_steps, bounds, check_real,
            check_rows=slice(n_particles, n_particles + m_check), max_increase=max_increase, max_halvings=max_halvings,
            check=None if min_copy_ratio is None else copying, noise_scale=factor * noise_scale,
            seed=_stage_seed(seed, k))
        entry.update(mmd_before=before_mmd, mmd_after=after_mmd, step_scale=scale)
        if "ratio" in tried:
            entry["copy_ratio"] = tried["ratio"]
        if moved is None and failed is not None:  # even the smallest ε copies: distrusted, the flow stops here
            entry.update(trusted=False, moves=False, why=failed)
            sizes[-1] = 0.0
            if verbose:
                print(f"stage {entry['stage']:2d}: {entry['why']}", flush=True)
            return entry, stop_untrusted
        if moved is None:
            entry.update(moves=False, why=f"not moved: even ε = {step_scale * 0.5**max_halvings:.3g} raised the "
                                          f"σ-smoothed MMD {after_mmd / max(before_mmd, 1e-300):.2f}×")
            sizes[-1] = 0.0
            return entry, False
        sizes[-1] = scale * sigma**2
        state["particles"] = moved
        state["ratio"] = tried.get("ratio", state["ratio"])
        return entry, False

    k, next_sigma = 0, sigma_max
    while k < max_stages and (adaptive or k < len(sigmas)):
        sigma = next_sigma if adaptive else float(sigmas[k])
        entry, stop = run_stage(k, sigma, 1.0 if noise_levels is None else float(noise_levels[k]))
        k += 1
        if adaptive:
            # Still a significant difference at this σ: the particles have not caught up with p_σ (the flow is
            # transport-limited), so the next stage comes sooner (fine_ratio); otherwise the coarse sigma_ratio.
            if sigma <= sigma_min * (1 + 1e-9):
                k = max_stages
            next_sigma = max(sigma * (fine_ratio if entry["signal"] > fine_signal else sigma_ratio), sigma_min)
            entry["next"] = "fine" if entry["signal"] > fine_signal else "coarse"
        if stop:
            break
    # Noise-free finishing: the stages' noise leaves the particles blurred by about √(2ε·flow_steps)·s·σ_K after
    # the last trusted stage σ_K (0.085 σ_K at s = 0.03), which no later stage removes when the trusted range
    # ends at a large σ (the digits DCGAN at σ 0.17: Fréchet distance 4.7 → 34 with s = 0.3 throughout).
    # `finish_stages` more stages at σ_K, trained on the blurred particles and moved without noise, take it out.
    # They go before the untrusted stage that ended the schedule (if any), which stays last in the report.
    used = [index for index in range(trusted_prefix(report)) if report[index]["moves"]]
    if automatic and noise_scale > 0 and finish_stages and used:
        per_stage = (report, weights, sizes, levels, factors)
        # set the stage that stopped the schedule aside, with its weights (finishing stages follow a trusted one)
        ended = [values.pop() for values in per_stage] if not report[-1]["trusted"] else None
        sigma_last = float(levels[used[-1]])
        for _ in range(int(finish_stages)):
            entry, stop = run_stage(len(report), sigma_last, 0.0)
            entry["finishing"] = True
            if stop or not entry["trusted"]:
                break
        if ended is not None:
            ended[0]["stage"] = len(report)
            for values, value in zip(per_stage, ended, strict=True):
                values.append(value)
    result = StagedCalibration(model, weights, levels, sizes, flow_steps, bounds, report,
                               trusted_prefix(report))
    result.noise_scale = float(noise_scale)
    result.noise_levels = np.asarray(factors, np.float64)
    result.sigma_search = search
    result.row_labels = row_labels
    result.particle_labels = particle_labels
    n_real = len(real_train) + len(real_heldout)
    if refit == "auto":
        refit = n_real <= REFIT_MAX_REAL
    if refit:
        result = _refit(result, generator, real_train, real_heldout, latent_shape=latent_shape,
                        n_particles=n_particles, heldout_particles=heldout_particles, train_steps=train_steps,
                        batch_size=batch_size, learning_rate=learning_rate, flow_steps=flow_steps,
                        step_scale=step_scale, hidden=hidden, fourier_features=fourier_features, given=given,
                        given_loss=given_loss, warm_start=warm_start, seed=seed, verbose=verbose,
                        min_copy_ratio=min_copy_ratio, copy_scale=copy_scale, max_increase=max_increase,
                        max_halvings=max_halvings, max_accuracy=max_accuracy, max_saturated=max_saturated,
                        train_labels=train_labels, heldout_labels=heldout_labels, n_classes=n_classes,
                        noise_scale=noise_scale)
    return result


REFIT_MAX_REAL = 1000


def _refit(first, generator, real_train, real_heldout, *, latent_shape, verbose, min_copy_ratio, copy_scale,
           **options):
    """The trusted stages of ``first`` calibrated again on all real samples (training and held-out together).

    The held-out split chose the schedule and the trusted stages; once chosen, holding real samples back only
    loses data, and on small data sets the flow follows the calibration set's *empirical* mode weights (the
    zoo's 32-point ring: 25 calibration points, one of them in a mode that holds 3 of the 32). The refit runs
    the same stages (same σ's, same particles, same seed) on the union; its report is the first pass's, each
    entry marked ``refit``: held-out checks on data the refit trained on would mean nothing.
    """
    used = [k for k in range(first.n_trusted) if first.report[k].get("moves", True)]
    if not used:
        return first
    both = np.concatenate([real_train, real_heldout], 0)
    if options.get("train_labels") is not None:
        options["train_labels"] = np.concatenate([np.asarray(options["train_labels"]).reshape(-1),
                                                  np.asarray(options["heldout_labels"]).reshape(-1)])
        options["particle_labels"] = first.particle_labels  # the same particles as the first pass
    if verbose:
        print(f"refit: the {len(used)} trusted stages on all {len(both)} real samples", flush=True)
    # The copying check stays on, against all real samples and with the first pass's scale (the held-out samples
    # are trained on now): more data lets the flow follow the data more closely, so it may copy sooner. Trust
    # otherwise comes from the first pass (a held-out gap means nothing now); how far each stage moved, from the
    # refit's own backtracking.
    second = calibrate_stages(generator, both, real_heldout, latent_shape=latent_shape, sigmas=first.sigmas[used],
                              noise_levels=first.noise_levels[used], max_gap=np.inf, min_copy_ratio=min_copy_ratio,
                              copy_scale=copy_scale, refit=False, verbose=0, **options)
    keys = ("trusted", "moves", "why", "step_scale", "mmd_before", "mmd_after", "copy_ratio")
    report = [dict({key: value for key, value in first.report[k].items() if key not in keys},
                   stage=i, refit=True, **{key: second.report[i][key] for key in keys if key in second.report[i]})
              for i, k in enumerate(used[:len(second.report)])]
    result = StagedCalibration(second.model, second.weights, second.sigmas, second.step_sizes, second.flow_steps,
                               second.bounds, report, trusted_prefix(report))
    result.sigma_search = first.sigma_search
    result.noise_scale, result.noise_levels = second.noise_scale, second.noise_levels
    result.row_labels, result.particle_labels = second.row_labels, second.particle_labels
    result.first_pass = first.report
    return result


def _pick(samples, labels, index):
    """Rows ``index`` of ``samples`` (array or tensor); with ``labels``, the pair (rows, their labels)."""
    rows = samples[index] if isinstance(samples, np.ndarray) else tf.gather(samples, index)
    return rows if labels is None else (rows, labels[index])


def _step_functions(model, optimizer):
    """A compiled logistic training step and a (loss, accuracy, saturated share) evaluation at one σ. Batches
    are samples, or (samples, labels) pairs for a class-conditional model ``[x, sigma, label]``."""

    def logits(x, sigma):
        x, labels = x if isinstance(x, tuple) else (x, None)
        noised = x + sigma * tf.random.normal(tf.shape(x))
        column = tf.fill([tf.shape(x)[0], 1], sigma)
        if labels is None:
            inputs = [noised, column]
        else:
            inputs = [noised, column, tf.reshape(tf.cast(labels, tf.int32), [-1, 1])]
        return tf.reshape(model(inputs, training=True), [-1])

    def loss_of(real_logits, fake_logits):
        return 0.5 * (tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(tf.nn.softplus(fake_logits)))

    @tf.function(reduce_retracing=True, autograph=False)  # plain Python: nothing for autograph to convert
    def step(real, fake, sigma):
        with tf.GradientTape() as tape:
            loss = loss_of(logits(real, sigma), logits(fake, sigma))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=False))
        return loss

    @tf.function(reduce_retracing=True, autograph=False)  # plain Python: nothing for autograph to convert
    def evaluate(real, fake, sigma, draws=4):
        real_losses, fake_losses, hits, saturated = [], [], [], []
        for _ in range(draws):
            r, f = logits(real, sigma), logits(fake, sigma)
            real_losses.append(tf.nn.softplus(-r))
            fake_losses.append(tf.nn.softplus(f))
            hits.append(0.5 * (tf.reduce_mean(tf.cast(r > 0, tf.float32)) + tf.reduce_mean(tf.cast(f < 0, tf.float32))))
            saturated.append(tf.reduce_mean(tf.cast(tf.abs(tf.concat([r, f], 0)) > 10.0, tf.float32)))
        # Per sample, averaged over the noise draws; real and fake rows may differ in number (few held-out reals,
        # many held-out particles): loss ½(mean real + mean fake), standard error ½ √(var_r/n_r + var_f/n_f).
        real_loss, fake_loss = tf.reduce_mean(tf.stack(real_losses), 0), tf.reduce_mean(tf.stack(fake_losses), 0)

        def variance_of_mean(values):
            return tf.math.reduce_variance(values) / tf.cast(tf.shape(values)[0], tf.float32)

        error = 0.5 * tf.sqrt(variance_of_mean(real_loss) + variance_of_mean(fake_loss))
        return (0.5 * (tf.reduce_mean(real_loss) + tf.reduce_mean(fake_loss)), error, tf.reduce_mean(hits),
                tf.reduce_mean(saturated))

    return step, evaluate


def refine_stages(x, staged, *, stages=None, labels=None, seed=0):
    """Flow new generator samples through the trusted stages:
    x ← clip(x + η_k ∇ₓT_k(x, σ_k) + √(2η_k) s_k n, lo, hi) with s_k = ``staged.noise_scale`` ·
    ``staged.noise_levels[k]``.

    Args:
        x: generator samples [n, ...] (the same generator the stages were calibrated on).
        staged: a :class:`StagedCalibration`.
        stages: how many leading stages to use (default ``staged.n_trusted``); stages whose report says
            ``moves: False`` (no signal) are skipped, as at calibration.
        labels: the rows' integer classes, for class-conditional stages (required then).
        seed: integer seed of the noise (stage k draws with its own key derived from it).

    Returns:
        float32 tensor shaped like x.
    """
    x = _checks.as_float_tensor(x, "x", min_rank=2)
    if staged.row_labels is not None:
        if labels is None:
            raise ValueError("`labels` must be given: these stages are class-conditional (one integer class per row "
                             "of x).")
        staged.row_labels.assign(adapters.check_labels(labels, int(x.shape[0]), "labels", staged.row_labels.n_classes))
    stages = staged.n_trusted if stages is None else int(stages)
    for k in range(stages):
        if not staged.report[k].get("moves", True) or staged.step_sizes[k] <= 0:
            continue
        estimator = staged.estimator(k)
        scale = staged.step_sizes[k] / staged.sigmas[k] ** 2
        x = _move(x, estimator, staged.sigmas[k], scale, staged.flow_steps, staged.bounds,
                  noise_scale=staged.noise_scale * float(staged.noise_levels[k]), seed=_stage_seed(seed, k))
    return x


def _stage_seed(seed, k):
    """The noise seed of stage k (an int31) for a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(k)) % (2**31 - 1)


def format_report(staged):
    """The per-stage report as text, one line per stage."""
    lines = [f"{'stage':>5} {'sigma':>8} {'train':>7} {'heldout':>7} {'gap':>7} {'acc':>6} {'sat':>6}  verdict"]
    for entry in staged.report:
        lines.append(f"{entry['stage']:>5} {entry['sigma']:>8.4g} {entry['train_loss']:>7.3f} "
                     f"{entry['heldout_loss']:>7.3f} "
                     f"{entry['gap']:>7.3f} {entry['accuracy']:>6.3f} {entry['saturated']:>6.3f}  "
                     f"{'trusted' if entry['trusted'] else entry['why']}")
    lines.append(f"refinement uses the first {staged.n_trusted} of {len(staged.report)} stages")
    if staged.report and staged.report[0].get("refit"):
        lines.append("(calibrated again on all real samples once the held-out split had chosen the stages)")
    return "\n".join(lines)
