"""Which generator objective trains SDGAN best at an equal budget: :func:`compare_objectives`.

Full SDGAN training (generator and discriminator) of a small MLP generator on the 2-D mixture with each
generator objective (``minimax``, ``non_saturating``, ``logit``, ``flow_regression``) at an equal budget
(same steps, batch, optimizers, seeds), scored on the generator's samples.
"""
from __future__ import annotations

import time

import keras
import numpy as np

from gan2flow import _checks, datasets, models, toys
from gan2flow import losses as _losses
from gan2flow import training as _training
from gan2flow.experiments.compare.budgets import OBJECTIVE_BUDGETS, cosine_adam, resolve_budget, steps_per_execution
from gan2flow.experiments.compare.problems import as_problem
from gan2flow.experiments.compare.scores import nan_scores, sample_scores

#: The generator objectives :func:`compare_objectives` compares by default (all of SDGAN's).
GENERATOR_OBJECTIVES = _training.GENERATOR_OBJECTIVES


def compare_objectives(*, objectives=GENERATOR_OBJECTIVES, target="2d", loss="logistic", seed=0,
                       quick=False, steps=None, batch_size=None, hidden=None, generator_hidden=None,
                       n_train=None, n_eval=None, seeds=None, latent_dim=8, learning_rate=1e-3,
                       discriminator_options=None, sdgan_options=None, jit_compile=False, verbose=True):
    """Train full SDGANs with each generator objective at an equal budget; score the generators.

    Every run uses the same loss, architecture, optimizers (Adam, β₁ = 0.5, the same learning rate for
    both networks, cosine decay to a tenth), batch, number of train steps (one discriminator and one
    generator update each), σ range and seed; only ``generator_objective`` differs. ``flow_regression``
    (5 flow steps, ε = 0.5, the SDGAN defaults) spends more compute per step; the wall time is
    recorded.

    Args:
      objectives: generator objectives (default: all of ``gan2flow.training.GENERATOR_OBJECTIVES``).
      target: a problem name or :class:`Problem` (its target is the data; its σ range is used).
      loss: the discriminator loss (must have a link for ``logit`` and ``flow_regression``).
      seed: the first seed; runs use ``seed, seed + 1, ...``.
      quick: the small budget (None arguments take the budget's value).
      steps: train steps per run (full 1200, quick 300).
      batch_size: 256.
      hidden: discriminator widths (full (128, 128, 128), quick (64, 64)).
      generator_hidden: generator widths (full (64, 64), quick (32, 32)).
      n_train: training samples of the target (full 50 000, quick 8192).
      n_eval: generated samples scored (full 2000, quick 1000).
      seeds: how many seeds per objective (full 2, quick 1).
      latent_dim: the generator's latent size.
      learning_rate: Adam's initial learning rate.
      discriminator_options: keyword arguments of :func:`gan2flow.models.mlp_discriminator` (e.g.
        ``parametrisation``); None: the builder's defaults.
      sdgan_options: further keyword arguments of :class:`gan2flow.SDGAN` (e.g. ``flow_steps``,
        ``regression_weighting``); None: its defaults.
      jit_compile: compile the training step with XLA (off by default, as in :func:`compare_losses`).
      verbose: print one line per run.

    Returns:
      dict with ``settings``, ``rows`` (objective, seed, seconds, d_loss, g_loss and sample metrics) and
      ``samples`` (``{objective: [n, d] array}`` for the first seed, plus the held-out target; not JSON).

    Raises:
      ValueError: unknown objectives, or a loss without a link for an objective that needs one.
    """
    prob = as_problem(target)
    objectives = [_checks.one_of(o, "objectives", _training.GENERATOR_OBJECTIVES) for o in objectives]
    if not objectives:
        raise ValueError("`objectives` must name at least one generator objective, got an empty list.")
    seed = _checks.positive_int(seed, "seed", allow_zero=True)
    budget = resolve_budget(OBJECTIVE_BUDGETS, quick, dict(
        steps=steps, batch_size=batch_size, hidden=hidden, generator_hidden=generator_hidden, n_train=n_train,
        n_eval=n_eval, seeds=seeds))
    for key in ("steps", "batch_size", "n_train", "n_eval", "seeds"):
        budget[key] = _checks.positive_int(budget[key], key)
    budget["hidden"] = tuple(int(w) for w in budget["hidden"])
    budget["generator_hidden"] = tuple(int(w) for w in budget["generator_hidden"])
    loss = _losses.get(loss)
    started = time.perf_counter()
    real = toys.sample(prob.target, budget["n_train"], seed=seed + 500)
    held_out = toys.sample(prob.target, budget["n_eval"], seed=seed + 501)
    centers, stds, _ = toys.mixture_modes(prob.target)
    rows, samples = [], {}
    for objective in objectives:
        for run_seed in range(seed, seed + budget["seeds"]):
            keras.utils.set_random_seed(run_seed)  # the same initial weights for every objective
            generator = models.mlp_generator(latent_dim, (prob.dim,), hidden=budget["generator_hidden"])
            discriminator = models.mlp_discriminator((prob.dim,), hidden=budget["hidden"],
                                                     **(discriminator_options or {}))
            gan = _training.SDGAN(generator, discriminator, loss=loss, generator_objective=objective,
                                  sigma_range=prob.sigma_range, seed=run_seed, **(sdgan_options or {}))
            gan.compile(d_optimizer=cosine_adam(learning_rate, budget["steps"], beta_1=0.5),
                        g_optimizer=cosine_adam(learning_rate, budget["steps"], beta_1=0.5), jit_compile=jit_compile,
                        steps_per_execution=steps_per_execution(budget["steps"]))
            run_started = time.perf_counter()
            history = gan.fit(datasets.shuffled_batches(real, budget["batch_size"], run_seed),
                              steps_per_epoch=budget["steps"],
                              epochs=1, verbose=0)
            seconds = time.perf_counter() - run_started
            x = np.asarray(gan.generate(budget["n_eval"], seed=run_seed + 10_000))
            if np.all(np.isfinite(x)):
                scores = sample_scores(x, held_out, centers, stds, seed)
            else:
                scores = nan_scores(len(centers))
            row = dict(problem=prob.name, objective=objective, loss=loss.name, seed=run_seed, seconds=seconds,
                       d_loss=float(history.history["d_loss"][-1]), g_loss=float(history.history["g_loss"][-1]),
                       **scores)
            rows.append(row)
            if run_seed == seed:
                samples[objective] = x
            if verbose:
                print(f"[objectives] {objective:>15} seed {run_seed}: {seconds:.1f} s, sliced W2 "
                      f"{row['sliced_w2']:.3f}, modes {row['modes']}/{row['n_modes']}, "
                      f"HQ {row['high_quality']:.1%}", flush=True)
    samples["target p (held-out)"] = held_out
    settings = dict(problem=prob.name, objectives=objectives, loss=loss.name, seed=seed, quick=bool(quick),
                    latent_dim=int(latent_dim), learning_rate=float(learning_rate),
                    optimizer="Adam(beta_1=0.5), cosine decay to 0.1x, both networks",
                    sigma_range=list(prob.sigma_range), discriminator_options=dict(discriminator_options or {}),
                    sdgan_options=dict(sdgan_options or {}),
                    jit_compile=bool(jit_compile), seconds=time.perf_counter() - started, **budget)
    return {"settings": settings, "rows": rows, "samples": samples}
