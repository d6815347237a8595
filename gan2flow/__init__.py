"""gan2flow: turn GANs into score-difference flows.

The central contract is a score-difference estimator, a callable ``(x, sigma) -> v`` returning
v_σ(x) = ∇log p_σ(x) − ∇log q_σ(x) shaped like x. Estimators produce it (kernel, analytic,
discriminator, denoiser), :func:`flow` consumes it. See shared/SD_FLOW.md and docs/.
"""
from gan2flow import compare, digits, distribute, image_metrics, losses, metrics, models, sigmas, staged, toys, training
from gan2flow.conversion import GANFlow, convert, load
from gan2flow.estimators import (
    AnalyticScoreDifference,
    DenoiserScoreDifference,
    DiscriminatorScoreDifference,
    KernelScoreDifference,
    ReweightedPriorScore,
    ScoreDifferenceSum,
    drift_corrected,
)
from gan2flow.flows import FlowDivergenceError, flow, trajectory
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

__all__ = [
    "compare",
    "digits",
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
    "drift_corrected",
    "FlowDivergenceError",
    "flow",
    "trajectory",
]
