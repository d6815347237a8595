"""Which GAN losses give score-difference estimators: :func:`compare_losses`.

For every loss in :func:`gan2flow.losses.names`, train a σ-conditioned discriminator with
:class:`gan2flow.SDGAN` (``generator_objective=None``) against the **frozen** affine generator of a
:class:`~gan2flow.experiments.compare.problems.Problem`, whose exact score difference
``v_σ = ∇log p_σ − ∇log q_σ`` is known. Then, per σ on a grid over the trained range, compare the
discriminator's field

    v̂_σ(x) = ∇ₓ link(T(x, σ))      (SD-consistent losses)
    v̂_σ(x) = ∇ₓ T(x, σ)            (hinge, Wasserstein: no link, the raw gradient)

with ``v_σ`` at points ``x ~ q_σ`` (source samples plus σ-noise: the fake side of the discriminator's
own training distribution at that σ, i.e. the error "weighted under q"); the same numbers at
``x ~ p_σ`` (target samples plus σ-noise: where the flow should end) are kept too
(``points = "p_sigma"``). The errors are those of :mod:`~gan2flow.experiments.compare.fields`. Finally
flow the clean source samples along each field over a geometric σ schedule spanning the trained range
and score the result (sliced W2, MMD², modes, high-quality %).

Flows along fields without a link need a step size: the raw gradient has no natural scale. Rows
``"<loss> (raw ∇T)"`` use it as it is with the same ``step_scale`` as every other row; rows
``"<loss> (calibrated)"`` multiply it by the oracle-free ``a(σ_k)`` at each level. No flow uses the
oracle's scale. The exact field itself is flowed too (``"exact SD (oracle)"``) with the same schedule:
every field here is the score difference against the *initial* source, so long flows over-concentrate
(shared/SD_FLOW.md §7); the schedule (one Euler step per level, ε = 0.5) is short enough that the exact
field gives a good flow, and the oracle row is the reference each estimator is measured against (not a
strict ceiling: a field weaker than the exact one over-concentrates less).
"""
from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf

from gan2flow import _checks, datasets, models, toys
from gan2flow import estimators as _estimators
from gan2flow import flows as _flows
from gan2flow import losses as _losses
from gan2flow import sigmas as _sigmas
from gan2flow import training as _training
from gan2flow.experiments.compare.budgets import (
    DISCRIMINATOR_TRAININGS,
    LOSS_BUDGETS,
    cosine_adam,
    resolve_budget,
    resolve_discriminator_training,
    steps_per_execution,
)
from gan2flow.experiments.compare.fields import ScaledPerSigma, calibration_scales, field_errors
from gan2flow.experiments.compare.problems import PROBLEMS, affine_generator, as_problem
from gan2flow.experiments.compare.scores import hq_threshold, nan_scores, sample_scores


def _all_finite(model):
    return all(bool(np.all(np.isfinite(w))) for w in model.get_weights())


def _train_discriminator(prob, loss, real, *, steps, batch_size, hidden, learning_rate, seed, jit_compile,
                         discriminator_options=None, training_options=None):
    """Discriminator-only SDGAN training against the frozen affine generator; returns (disc, info)."""
    loss = _losses.get(loss)
    keras.utils.set_random_seed(seed)  # the same initial weights for every loss
    options = {"parametrisation": models.SD_PARAMETRISATION} if discriminator_options is None else discriminator_options
    discriminator = models.mlp_discriminator((prob.dim,), hidden=hidden, **options)
    training_options = dict(training_options or {})
    optimizer_options = {key: training_options.pop(key) for key in ("final_fraction", "ema_momentum")
                         if key in training_options}
    sdgan_options = {"penalty": None}
    sdgan_options.update(training_options)
    if not loss.sd_consistent:  # DSM makes ∇T the SD, which only an SD-consistent loss's optimum agrees with
        sdgan_options.pop("denoising_weight", None)
    if loss.name == "wasserstein":  # without its penalty the critic is unbounded: WGAN-GP whatever the recipe
        sdgan_options.update(penalty="gradient_penalty", penalty_weight=None)
    penalty = sdgan_options["penalty"]
    gan = _training.SDGAN(affine_generator(prob.source_loc, prob.source_scale), discriminator, loss=loss,
                          generator_objective=None, sigma_range=prob.sigma_range, seed=seed, **sdgan_options)
    gan.compile(d_optimizer=cosine_adam(learning_rate, steps, **optimizer_options), jit_compile=jit_compile,
                steps_per_execution=steps_per_execution(steps))
    started = time.perf_counter()
    history = gan.fit(datasets.shuffled_batches(real, batch_size, seed), steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    d_loss = float(history.history["d_loss"][-1])
    info = {"problem": prob.name, "loss": loss.name, "penalty": penalty,
            "denoising_weight": float(sdgan_options.get("denoising_weight", 0.0)), "steps": int(steps),
            "seconds": seconds, "d_loss": d_loss, "finite": bool(np.isfinite(d_loss) and _all_finite(discriminator))}
    return discriminator, info


def _field_label(loss, calibrated=False):
    if loss.link_fn is not None:
        return loss.name
    return f"{loss.name} (calibrated)" if calibrated else f"{loss.name} (raw ∇T)"


def _flow_scores(x0, estimator, schedule, step_scale, reference, centers, stds, seed, jit_compile):
    started = time.perf_counter()
    try:
        x = _flows.flow(x0, estimator, schedule, step_scale=step_scale, jit_compile=jit_compile)
    except _flows.FlowDivergenceError as error:
        row = nan_scores(len(centers))
        row.update(diverged=True, note=str(error).splitlines()[0], seconds=time.perf_counter() - started)
        return row, None
    x = np.asarray(x)
    row = sample_scores(x, reference, centers, stds, seed)
    row.update(diverged=False, note="", seconds=time.perf_counter() - started)
    return row, x


def compare_losses(*, losses=None, targets=PROBLEMS, seed=0, quick=False, steps=None, batch_size=None,
                   hidden=None, n_train=None, n_eval=None, n_flow=None, eval_sigmas=None, flow_levels=None,
                   learning_rate=None, flow_step_scale=0.5, discriminator_options=None,
                   discriminator_training=None, training_options=None, jit_compile=False,
                   verbose=True):
    """Train a discriminator per loss and problem; measure its field against the exact SD and flow along it.

    See the module docstring for the protocol and the definitions of the errors.

    Args:
      losses: loss names (default: every name in :func:`gan2flow.losses.names`).
      targets: problem names from :data:`PROBLEMS` or :class:`Problem` objects.
      seed: seeds the target samples, the initial weights (the same for every loss), the SDGAN noise
        streams, the evaluation points and the metrics.
      quick: use the small budget (each argument below left as None takes the budget's value).
      steps: discriminator training steps per loss (full 1500, quick 300).
      batch_size: real (and fake) samples per step (None: the ``discriminator_training``'s, 1024 for ``"sd"``,
        256 for ``"previous"``).
      hidden: discriminator hidden widths (full (256, 256, 256) since issue 15's fourth pass, (128, 128, 128)
        before it; quick (64, 64)).
      n_train: target samples to train on (full 50 000, quick 8192).
      n_eval: evaluation points per σ and per weighting (full 4000, quick 1000); as many again fit the
        scale.
      n_flow: source samples flowed (full 2000, quick 1000).
      eval_sigmas: σ levels of the geometric evaluation grid over the trained range (full 8, quick 5).
      flow_levels: levels of the geometric flow schedule σ_max → σ_min (full 20, quick 12), one Euler
        step each.
      learning_rate: Adam's initial learning rate (cosine decay to a tenth over ``steps``; None: the
        ``discriminator_training``'s, 3e-3 for ``"sd"``, 1e-3 for ``"previous"``).
      flow_step_scale: ε in η_k = ε σ_k², the same for every row.
      discriminator_options: keyword arguments of :func:`gan2flow.models.mlp_discriminator`; None:
        ``{"parametrisation": models.SD_PARAMETRISATION}`` (``"energy_difference"`` with its skip gain, the
        best measured SD estimator; ``{"parametrisation": "plain"}`` with ``discriminator_training="previous"``
        reproduces the runs before issue 15).
      discriminator_training: a name in ``budgets.DISCRIMINATOR_TRAININGS``: ``"sd_dsm"`` (``"sd"`` plus
        ``denoising_weight=10``: denoising score matching on the energy difference's bowls, for the
        SD-consistent losses; docs/losses.md, "Denoising score matching on the bowls"), ``"sd"`` (batch
        1024, Adam 3e-3, an R1 penalty of weight 1e-3; "Training the SD discriminator") or ``"previous"``
        (batch 256, Adam 1e-3, no penalty). None (the default): ``"sd_dsm"`` at both budgets with the
        energy-difference discriminator, ``"sd"`` with another parametrisation (DSM needs the bowls;
        ``budgets.resolve_discriminator_training``). It supplies ``batch_size``,
        ``learning_rate`` and ``training_options`` where those are None; ``"sd"`` turns DSM off.
      training_options: further keyword arguments of :class:`gan2flow.SDGAN` (``penalty``,
        ``penalty_weight``, ``denoising_weight``, ``sigma_sampling``, ``discriminator_steps``) and of the
        optimizer (``ema_momentum``: an exponential moving average of the weights, evaluated instead of
        them; ``final_fraction``: where the cosine decay ends), *instead of* the ``discriminator_training``'s
        (None: those). Wasserstein always gets the WGAN-GP penalty; losses that are not SD-consistent never
        get ``denoising_weight``.
      jit_compile: compile training steps and flows with XLA. Off by default: on the 2-core CPU, XLA
        compilation took 10-20 s per model, more than it saved over 1500 steps of these small MLPs.
      verbose: print one line per trained discriminator.

    Returns:
      dict with ``settings`` (budget, seeds, schedules), ``training`` (one row per discriminator:
      seconds, final d_loss, finiteness), ``fields`` (rows: problem, field, points, sigma, cosine,
      rel_error, scale_fit, rel_error_fit, rel_error_calibrated), ``flows`` (rows: problem, field and
      the sample metrics) and ``samples`` (``{problem: {row name: [n, d] array}}`` plus the held-out
      target under ``"target p (held-out)"``; not JSON).

    Raises:
      ValueError: unknown loss or problem names, bad budget values.
    """
    names = _losses.names() if losses is None else [_losses.get(name).name for name in losses]
    if not names:
        raise ValueError("`losses` must name at least one loss, got an empty list.")
    problems = [as_problem(target) for target in targets]
    if not problems:
        raise ValueError("`targets` must name at least one problem, got an empty list.")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    parametrisation = (models.SD_PARAMETRISATION if discriminator_options is None
                       else discriminator_options.get("parametrisation", "plain"))
    discriminator_training = resolve_discriminator_training(discriminator_training, quick=quick,
                                                            parametrisation=parametrisation)
    recipe = DISCRIMINATOR_TRAININGS[discriminator_training]
    batch_size = recipe["batch_size"] if batch_size is None else batch_size
    learning_rate = recipe["learning_rate"] if learning_rate is None else learning_rate
    training_options = dict(recipe["options"] if training_options is None else training_options)
    budget = resolve_budget(LOSS_BUDGETS, quick, dict(
        steps=steps, batch_size=batch_size, hidden=hidden, n_train=n_train, n_eval=n_eval, n_flow=n_flow,
        eval_sigmas=eval_sigmas, flow_levels=flow_levels))
    for key in ("steps", "batch_size", "n_train", "n_eval", "n_flow", "eval_sigmas", "flow_levels"):
        budget[key] = _checks.positive_int(budget[key], key)
    if budget["eval_sigmas"] < 2 or budget["flow_levels"] < 2:
        raise ValueError("`eval_sigmas` and `flow_levels` must be >= 2 (geometric grids over the trained range).")
    budget["hidden"] = tuple(int(w) for w in budget["hidden"])
    flow_step_scale = _checks.positive_float(flow_step_scale, "flow_step_scale")
    learning_rate = _checks.positive_float(learning_rate, "learning_rate")

    started = time.perf_counter()
    settings = dict(losses=names, problems={}, seed=seed, quick=bool(quick), learning_rate=learning_rate,
                    optimizer="Adam, cosine decay to 0.1x", flow_step_scale=flow_step_scale,
                    flow_steps_per_sigma=1, flow_method="euler", jit_compile=bool(jit_compile),
                    penalties={"wasserstein": "gradient_penalty (WGAN-GP, weight 10)",
                               "others": training_options.get("penalty") or "none"},
                    denoising_weight={"SD-consistent losses": float(training_options.get("denoising_weight", 0.0)),
                                      "others": 0.0},
                    discriminator_options=(None if discriminator_options is None else dict(discriminator_options)),
                    discriminator_training=discriminator_training, training_options=training_options,
                    evaluation_points="q_sigma: source samples + sigma noise (primary); p_sigma: target "
                                      "samples + sigma noise (secondary)",
                    **budget)
    training_rows, field_rows, flow_rows, samples = [], [], [], {}
    for prob_index, prob in enumerate(problems):
        low, high = prob.sigma_range
        eval_grid = np.asarray(_sigmas.geometric(high, low, budget["eval_sigmas"]))[::-1].copy()
        schedule = _sigmas.geometric(high, low, budget["flow_levels"])
        settings["problems"][prob.name] = dict(
            dim=prob.dim, sigma_range=list(prob.sigma_range), eval_sigmas=eval_grid.tolist(),
            flow_sigmas=np.asarray(schedule).tolist(), source_loc=prob.source_loc.tolist(),
            source_scale=prob.source_scale.tolist(), hq_threshold_stds=hq_threshold(prob.dim))
        base_seed = seed + 1000 * prob_index
        real = toys.sample(prob.target, budget["n_train"], seed=base_seed)
        held_out = toys.sample(prob.target, budget["n_flow"], seed=base_seed + 1)
        calibration_real = toys.sample(prob.target, budget["n_eval"], seed=base_seed + 2)
        source = prob.source
        calibration_fake = np.asarray(source.sample(budget["n_eval"], seed=tf.constant([base_seed, 3])), np.float32)
        x0 = np.asarray(source.sample(budget["n_flow"], seed=tf.constant([base_seed, 4])), np.float32)
        centers, stds, _ = toys.mixture_modes(prob.target)
        exact = prob.exact()
        # One traced program for every σ (σ is passed as a tensor); eager TFP costs ~0.5 s per call.
        exact_field = tf.function(exact.__call__, reduce_retracing=True)

        # Evaluation points per σ: (fit, eval) pairs under q_σ and p_σ, with the exact field there.
        rng = np.random.default_rng(base_seed + 5)
        points = []
        for sigma in eval_grid:
            for kind, base in (("q_sigma", source), ("p_sigma", None)):
                draw = []
                for part in range(2):
                    if base is None:
                        clean = toys.sample(prob.target, budget["n_eval"], seed=base_seed + 10 + part)
                    else:
                        clean = np.asarray(base.sample(budget["n_eval"], seed=tf.constant([base_seed, 10 + part])),
                                           np.float32)
                    noisy = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
                    draw.append((noisy, np.asarray(exact_field(noisy, tf.constant(sigma, tf.float32)))))
                points.append((float(sigma), kind, draw))

        samples[prob.name] = {"source q (before flow)": x0}
        flow_rows.append(dict(problem=prob.name, field="source q (before flow)",
                              **sample_scores(x0, held_out, centers, stds, seed), diverged=False, note="", seconds=0.0))
        oracle_row, oracle_x = _flow_scores(x0, exact, schedule, flow_step_scale, held_out, centers, stds, seed,
                                            jit_compile)
        flow_rows.append(dict(problem=prob.name, field="exact SD (oracle)", **oracle_row))
        samples[prob.name]["exact SD (oracle)"] = oracle_x

        for name in names:
            loss = _losses.get(name)
            discriminator, info = _train_discriminator(
                prob, loss, real, steps=budget["steps"], batch_size=budget["batch_size"], hidden=budget["hidden"],
                learning_rate=learning_rate, seed=seed, jit_compile=jit_compile,
                discriminator_options=discriminator_options, training_options=training_options)
            training_rows.append(info)
            stage_started = time.perf_counter()
            estimator = _estimators.DiscriminatorScoreDifference(
                discriminator, loss=loss if loss.link_fn is not None else None, sigma_conditioned=True)
            # One traced program per discriminator for every σ and both point sets (all [n_eval, d]).
            field_fn = tf.function(estimator.__call__, reduce_retracing=True)
            calibrated = None
            if loss.link_fn is None and info["finite"]:
                eval_scales = calibration_scales(estimator, calibration_real, calibration_fake, eval_grid,
                                                  base_seed + 6)
                calibrated = dict(zip(eval_grid.tolist(), eval_scales.tolist(), strict=False))
            for sigma, kind, ((fit_x, fit_v), (eval_x, eval_v)) in points:
                row = dict(problem=prob.name, field=_field_label(loss), loss=name, sd_consistent=loss.sd_consistent,
                           points=kind, sigma=sigma)
                if not info["finite"]:
                    row.update(cosine=math.nan, rel_error=math.nan, scale_fit=math.nan, rel_error_fit=math.nan,
                               rel_error_calibrated=math.nan, calibration_scale=math.nan)
                    field_rows.append(row)
                    continue
                sigma_tensor = tf.constant(sigma, tf.float32)
                estimate = np.asarray(field_fn(eval_x, sigma_tensor))
                row.update(field_errors(estimate, eval_v, np.asarray(field_fn(fit_x, sigma_tensor)), fit_v))
                if calibrated is not None:
                    scale = calibrated[sigma]
                    norm = np.sqrt(np.sum(np.square(eval_v)))
                    row["rel_error_calibrated"] = float(np.sqrt(np.sum(np.square(scale * estimate - eval_v))) / norm)
                    row["calibration_scale"] = scale
                else:
                    row["rel_error_calibrated"] = math.nan
                    row["calibration_scale"] = math.nan
                field_rows.append(row)

            info["seconds_fields"] = time.perf_counter() - stage_started
            stage_started = time.perf_counter()
            variants = [(_field_label(loss), estimator)]
            if calibrated is not None:
                flow_scales = calibration_scales(estimator, calibration_real, calibration_fake, schedule,
                                                  base_seed + 7)
                variants.append((_field_label(loss, calibrated=True),
                                 ScaledPerSigma(estimator, np.asarray(schedule), flow_scales)))
            for label, field in variants:
                if info["finite"]:
                    row, x = _flow_scores(x0, field, schedule, flow_step_scale, held_out, centers, stds, seed,
                                          jit_compile)
                else:
                    row, x = nan_scores(len(centers)), None
                    row.update(diverged=True, note="discriminator training produced non-finite values", seconds=0.0)
                flow_rows.append(dict(problem=prob.name, field=label, **row))
                samples[prob.name][label] = x
            info["seconds_flows"] = time.perf_counter() - stage_started
            if verbose:
                print(f"[{prob.name}] {name:>14}: {info['steps']} training steps {info['seconds']:.1f} s "
                      f"(final d_loss {info['d_loss']:.4g}), field errors {info['seconds_fields']:.1f} s, "
                      f"flows {info['seconds_flows']:.1f} s" + ("" if info["finite"] else "  (NOT FINITE)"),
                      flush=True)
        flow_rows.append(dict(problem=prob.name, field="target p (held-out)",
                              **sample_scores(toys.sample(prob.target, budget["n_flow"], seed=base_seed + 8), held_out,
                                        centers, stds, seed), diverged=False, note="", seconds=0.0))
        samples[prob.name]["target p (held-out)"] = held_out
    settings["seconds"] = time.perf_counter() - started
    return {"settings": settings, "training": training_rows, "fields": field_rows, "flows": flow_rows,
            "samples": samples}
