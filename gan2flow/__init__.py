"""gan2flow: turn GANs into score-difference flows.

The central contract is a score-difference estimator, a callable ``(x, sigma) -> v`` returning
v_σ(x) = ∇log p_σ(x) − ∇log q_σ(x) shaped like x. Estimators produce it (kernel, analytic,
discriminator, denoiser), :func:`flow` consumes it. See shared/SD_FLOW.md and docs/.

The experiments (loss comparison, digits pipeline, demos) live in :mod:`gan2flow.experiments` and the
command line in :mod:`gan2flow.cli`; importing the library loads neither.
"""
# First: run as the `gan2flow` command, this loads TensorFlow with its C++ start-up log hidden
# (GAN2FLOW_TF_LOG=1 shows it); imported as a library, it does nothing.
from gan2flow import (
    _startup,  # noqa: F401
    adapters,
    datasets,
    diagnostics,
    distribute,
    estimators,
    flows,
    image_metrics,
    losses,
    metrics,
    models,
    noise,
    refiners,
    resume,
    sigmas,
    staged,
    toys,
    training,
)
from gan2flow.conversion import convert
from gan2flow.estimators import (
    AnalyticScoreDifference,
    DenoiserScoreDifference,
    DiscriminatorScoreDifference,
    KernelScoreDifference,
    ReweightedPriorScore,
    ScoreDifferenceSum,
    StagedScoreDifference,
    drift_corrected,
)
from gan2flow.flows import FlowDivergenceError, flow, trajectory
from gan2flow.ganflow import GANFlow, load
from gan2flow.training import SDGAN

__version__ = "0.1.0"


class LatentScoreDifference(ReweightedPriorScore):
    """Deprecated name of :class:`gan2flow.estimators.ReweightedPriorScore` (what it computes: the score of
    the latent prior reweighted by the density ratio)."""

    def __init__(self, *args, **kwargs):
        import warnings

        warnings.warn("gan2flow.LatentScoreDifference is deprecated; use gan2flow.ReweightedPriorScore "
                      "(the same latent drift under the name of what it is).", DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)


# The experiments moved to gan2flow.experiments, which the library never imports; their old names
# still resolve (lazily, with a DeprecationWarning) through __getattr__ below.
_MOVED_EXPERIMENTS = {"compare", "demo", "digits"}


def __getattr__(name):
    """``gan2flow.compare``, ``gan2flow.demo``, ``gan2flow.digits``: deprecated names of gan2flow.experiments.*."""
    if name in _MOVED_EXPERIMENTS:
        import importlib
        import warnings

        warnings.warn(f"gan2flow.{name} is deprecated; use gan2flow.experiments.{name} (the experiments live "
                      "apart from the library, which no longer imports them).", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f"gan2flow.experiments.{name}")
    raise AttributeError(f"module 'gan2flow' has no attribute {name!r}")


__all__ = [
    "adapters",
    "datasets",
    "diagnostics",
    "estimators",
    "flows",
    "noise",
    "refiners",
    "resume",
    "distribute",
    "image_metrics",
    "losses",
    "metrics",
    "models",
    "sigmas",
    "staged",
    "toys",
    "training",
    "SDGAN",
    "GANFlow",
    "LatentScoreDifference",
    "ReweightedPriorScore",
    "convert",
    "load",
    "AnalyticScoreDifference",
    "DenoiserScoreDifference",
    "DiscriminatorScoreDifference",
    "KernelScoreDifference",
    "ScoreDifferenceSum",
    "StagedScoreDifference",
    "drift_corrected",
    "FlowDivergenceError",
    "flow",
    "trajectory",
]
