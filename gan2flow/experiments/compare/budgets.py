"""The budgets of both comparisons and the training set-up they share.

The ``full`` and ``quick`` budget tables, :func:`resolve_budget` (a table with the caller's overrides),
:func:`steps_per_execution` (training steps per compiled call), :func:`cosine_adam` (Adam with cosine
decay to a tenth) and the loss comparison's discriminator trainings (:data:`DISCRIMINATOR_TRAININGS`,
:func:`resolve_discriminator_training`), used by :func:`~gan2flow.experiments.compare.compare_losses` and
:func:`~gan2flow.experiments.compare.compare_objectives`.
"""
from __future__ import annotations

import math

import keras

from gan2flow import _checks, models

# Budgets. "full" is what docs/losses.md reports: 526 CPU-seconds, 9.4 minutes wall on the 2-core
# machine at load average ~4 (other jobs running), before DSM and the 256-wide networks. "quick" is a smoke run:
# 97 CPU-seconds before DSM, 263 with it (192 s wall).
LOSS_BUDGETS = {
    "full": dict(steps=1500, batch_size=None, hidden=(256, 256, 256), n_train=50_000, n_eval=4000,
                 n_flow=2000, eval_sigmas=8, flow_levels=20),
    "quick": dict(steps=300, batch_size=None, hidden=(64, 64), n_train=8192, n_eval=1000, n_flow=1000,
                  eval_sigmas=5, flow_levels=12),
}
OBJECTIVE_BUDGETS = {
    "full": dict(steps=1200, batch_size=256, hidden=(128, 128, 128), generator_hidden=(64, 64),
                 n_train=50_000, n_eval=2000, seeds=2),
    "quick": dict(steps=300, batch_size=256, hidden=(64, 64), generator_hidden=(32, 32), n_train=8192,
                  n_eval=1000, seeds=1),
}
_MAX_STEPS_PER_EXECUTION = 100
# How the loss comparison trains its discriminators (docs/losses.md, "Training the SD discriminator" and
# "Denoising score matching on the bowls"): the batch, Adam's initial learning rate and further SDGAN /
# optimizer options (``training_options`` of compare_losses: SDGAN keywords, ``ema_momentum``,
# ``final_fraction``). "sd_dsm" is "sd" plus denoising score matching (weight 10) on the energy
# difference's bowls, applied to the SD-consistent losses only; "previous" reproduces the runs before
# issue 15. Wasserstein keeps its WGAN-GP penalty under each.
DISCRIMINATOR_TRAININGS = {
    "sd_dsm": dict(batch_size=1024, learning_rate=3e-3,
                   options={"penalty": "r1", "penalty_weight": 1e-3, "denoising_weight": 10.0}),
    "sd": dict(batch_size=1024, learning_rate=3e-3, options={"penalty": "r1", "penalty_weight": 1e-3}),
    "previous": dict(batch_size=256, learning_rate=1e-3, options={}),
}
# The default per budget, where the discriminator is the energy difference (DSM needs its bowls; "sd"
# otherwise). Measured (three seeds, logistic): with the skip gain of the bowls (models.ResidualSkip), DSM
# raised the quick budget's mean cosine to the exact SD too (docs/losses.md, "The skip gain of the bowls"); without the
# skip gain it had lowered it (2-D 0.896 -> 0.834), and the quick budget kept "sd" until then.
DISCRIMINATOR_TRAINING = {"full": "sd_dsm", "quick": "sd_dsm"}


def resolve_discriminator_training(name, *, quick, parametrisation):
    """The loss comparison's training: ``name`` checked, or (None) the default of the budget.

    Args:
      name: a key of :data:`DISCRIMINATOR_TRAININGS`, or None for :data:`DISCRIMINATOR_TRAINING`'s
        entry of the budget (``"sd_dsm"`` at both budgets); ``"sd"`` instead of ``"sd_dsm"`` when the
        discriminator is not the energy difference.
      quick: the quick budget.
      parametrisation: the discriminators' ``mlp_discriminator`` parametrisation.

    Raises:
      ValueError: an unknown name, or ``"sd_dsm"`` with another parametrisation than the energy difference.
    """
    default = name is None
    if default:
        name = DISCRIMINATOR_TRAINING["quick" if quick else "full"]
    _checks.one_of(name, "discriminator_training", tuple(DISCRIMINATOR_TRAININGS))
    needs_bowls = bool(DISCRIMINATOR_TRAININGS[name]["options"].get("denoising_weight"))
    if needs_bowls and parametrisation != models.SD_PARAMETRISATION:
        if default:
            return "sd"
        raise ValueError(f"`discriminator_training`={name!r} adds denoising score matching on the bowls of the "
                         f"{models.SD_PARAMETRISATION!r} parametrisation, got parametrisation={parametrisation!r}.")
    return name


def resolve_budget(table, quick, overrides):
    """``table["quick"]`` or ``table["full"]`` (a copy), with every override that is not None."""
    budget = dict(table["quick" if quick else "full"])
    for key, value in overrides.items():
        if value is not None:
            budget[key] = value
    return budget


def steps_per_execution(steps):
    """A divisor of ``steps``, at most 100: training steps per compiled call."""
    # Training steps per compiled call (Keras runs them in one graph loop): fewer Python round trips for
    # these small MLPs, whose steps take milliseconds. A divisor of `steps`, so every call runs the
    # same loop.
    return math.gcd(int(steps), _MAX_STEPS_PER_EXECUTION)


def cosine_adam(learning_rate, steps, beta_1=0.9, *, final_fraction=0.1, ema_momentum=None):
    """Adam whose learning rate decays (cosine) to ``final_fraction`` of itself over ``steps``.

    Args:
      learning_rate: the initial learning rate.
      steps: the decay horizon (optimizer steps).
      beta_1: Adam's β₁.
      final_fraction: the learning rate at the end as a fraction of the initial one (0.1: a tenth).
      ema_momentum: None, or the momentum ``m`` of an exponential moving average of the weights
        (Keras's ``use_ema``: ``w̄ ← m w̄ + (1 − m) w`` after every step, ``w̄ = w`` after the first),
        written into the model's weights at the end of ``fit``.
    """
    # Cosine decay: the last steps average out the minibatch noise of the input gradient.
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(int(steps), 1), alpha=final_fraction)
    if ema_momentum is None:
        return keras.optimizers.Adam(schedule, beta_1=beta_1)
    return keras.optimizers.Adam(schedule, beta_1=beta_1, use_ema=True, ema_momentum=ema_momentum)
