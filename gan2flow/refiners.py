"""Refiners: published ways to improve a GAN's samples with its discriminator, under one contract.

    samples = gan2flow.refiners.get("drs")(flow, 1000, seed=0)     # NumPy [n, *sample_shape]
    samples = flow.sample(1000, seed=0, method="mh_gan")             # the same through GANFlow.sample

Every refiner is a plain function ``refiner(flow, n, *, seed=None, report=None, **options) -> np.ndarray``
of shape ``[n, *flow.sample_shape]``, where ``flow`` is a :class:`gan2flow.GANFlow` (from
:func:`gan2flow.convert`). The same integer seed gives the same samples. ``report``, an optional dict, is
filled with what the refiner did: ``method``, ``sigma`` (the log-ratio's σ), ``discriminator_evaluations``
(forward passes, one per sample scored), ``gradient_evaluations`` (input gradients of the discriminator,
through the generator in latent space), ``generator_evaluations`` and, for the samplers, ``proposals``
and ``acceptance_rate``.

=================== ========================================================================================
name                method (reference, equation)
=================== ========================================================================================
``drs``             Discriminator Rejection Sampling (Azadi et al., ICLR 2019, Algorithm 1)
``mh_gan``          Metropolis–Hastings GAN, independence sampler (Turner et al., ICML 2019, Algorithm 1)
``dot``             Discriminator Optimal Transport in latent space (Tanaka, NeurIPS 2019, latent DOT)
``ddls``            Discriminator Driven Latent Sampling (Che et al., NeurIPS 2020, Algorithm 1)
``dgflow``          Discriminator Gradient flow (Ansari et al., ICLR 2021, the Euler–Maruyama update)
``gan2flow``        gan2flow's default: ``flow.sample(n, seed=seed)``, the staged data-space refinement
``gan2flow_latent`` gan2flow's latent refinement: ``flow.sample(n, seed=seed, space="latent")``
=================== ========================================================================================

**One log-ratio for all.** Every peer method uses d(x) = log p_σ(x)/q_σ(x) from the discriminator that
``convert`` calibrated against the generator (``flow.estimator.log_ratio``), at σ = ``flow.check_sigma()``:
the smallest σ whose calibration the diagnostics trust (held-out loss within 0.05 of training loss,
shared/SD_FLOW.md §9.3). Smaller σ's are sharper but their logits are extrapolations (§9.1); the same σ
for every method means that differences in the table come from the methods, not the discriminators. The
papers use the GAN's own (re-calibrated) discriminator; here that role is played by the calibrated one.

Gradient refiners (``dot``, ``ddls``, ``dgflow``) are latent (or data-space) drifts ``(z, σ) -> velocity``
executed by the one flow engine (:func:`gan2flow.flows.make_plan` + :func:`gan2flow.flows.run`) at a
single σ level with ``steps_per_sigma`` = the method's number of updates; noise is the engine's
counter-based Langevin term. The samplers (``drs``, ``mh_gan``) score generator proposals in batches.

Each docstring writes out the update it implements (the papers' equations, in this module's notation:
d = log p/q, r = e^d, p₀ the latent prior).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from gan2flow import _checks, estimators, flows

__all__ = ["names", "get", "drs", "mh_gan", "dot", "ddls", "dgflow", "gan2flow", "gan2flow_latent",
           "drs_acceptance", "mh_acceptance", "lipschitz_estimate", "DIVERGENCES", "TransportDrift",
           "FDivergenceDrift"]

#: The f-divergences of DGflow and the weight w(d) of ∇d in the velocity −∇f'(q/p) (d = log p/q).
DIVERGENCES = ("kl", "js", "logd")
_SCORE_BATCH = 8192


# ---------------------------------------------------------------------------------------------------
# Shared pieces


def _seed(seed):
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return _checks.positive_int(seed, "seed", allow_zero=True)


def _sigma(flow, sigma):
    """The log-ratio's σ: ``sigma`` or the smallest trusted one (``flow.check_sigma()``)."""
    return float(flow.check_sigma()) if sigma is None else _checks.positive_float(sigma, "sigma")


def _proposals(flow, count, seed, stream):
    """``count`` latents z ~ N(0, I) from the stateless stream (seed, stream)."""
    return tf.random.stateless_normal((count,) + tuple(flow.latent_shape), seed=[seed, stream], alg="philox")


def _scored(flow, z, sigma):
    """(G(z), d(G(z))) as NumPy, in batches."""
    x = flow.generate(z, batch_size=_SCORE_BATCH)
    log_r = [flow.estimator.log_ratio(x[i:i + _SCORE_BATCH], sigma) for i in range(0, int(x.shape[0]), _SCORE_BATCH)]
    return x, np.concatenate([np.asarray(part, np.float64) for part in log_r])


def _fill(report, values):
    if report is not None:
        report.update(values)


def _as_samples(flow, x, n):
    samples = np.asarray(x, np.float32)
    if samples.shape != (n,) + tuple(flow.sample_shape):
        raise AssertionError(f"refiner returned shape {samples.shape}, expected {(n,) + tuple(flow.sample_shape)}")
    return samples


# ---------------------------------------------------------------------------------------------------
# Samplers


def drs_acceptance(log_ratio, log_max, *, gamma=0.0, epsilon=1e-6):
    """DRS's acceptance probabilities (Azadi et al. 2019, the acceptance rule of Algorithm 1): σ(F(x)) with

        F(x) = d(x) − d_M − log(1 − exp(d(x) − d_M − ε)) − γ

    where d = log p/q and d_M ≥ max d. With γ = 0 (and ε → 0) this is exactly r(x)/r_M, the ideal
    rejection sampler; γ > 0 lowers every probability (a shift of the logit), γ < 0 raises them.

    Args:
        log_ratio: d(x), array [m].
        log_max: d_M (at least max d).
        gamma: the shift γ.
        epsilon: ε, keeps the logarithm finite at d = d_M.

    Returns:
        float64 array [m] in [0, 1].
    """
    return 1.0 / (1.0 + np.exp(-(_drs_logit(log_ratio, log_max, epsilon) - gamma)))


def _drs_logit(log_ratio, log_max, epsilon):
    """F(x) + γ = d − d_M − log(1 − exp(d − d_M − ε)) (DRS's acceptance logit before the shift)."""
    delta = np.asarray(log_ratio, np.float64) - float(log_max)
    return delta - np.log1p(-np.exp(np.minimum(delta - epsilon, -1e-300)))


def drs(flow, n, *, seed=None, sigma=None, gamma=None, gamma_percentile=95.0, epsilon=1e-6, burn_in=10000,
        batch_size=4096, max_batches=10000, report=None):
    """Discriminator Rejection Sampling (Azadi, Olsson, Darrell, Goodfellow & Odena, ICLR 2019).

    Algorithm 1 of the paper: estimate d_M = max d(G(z)) on ``burn_in`` generator samples; then draw
    batches of proposals, raise d_M to any larger value seen (before scoring the batch), and accept each x
    with probability σ(F(x)) (:func:`drs_acceptance`), until n are accepted. γ is set per batch to the
    ``gamma_percentile`` (95) percentile of F (with γ = 0), as in the paper's experiments, so the sample at
    that percentile is accepted with probability ½; pass a number as ``gamma`` for a fixed shift (γ = 0:
    the exact rejection sampler r/r_M when d_M is the true maximum).

    Choices the paper leaves open: ε = 1e-6, 10 000 burn-in samples, batches of 4 096 proposals; d is the
    shared calibrated log-ratio (module docstring) instead of the paper's logistic re-calibration of D.
    The accepted samples are kept in proposal order (the first n).

    Report: ``proposals``, ``acceptance_rate`` (accepted over proposals, after burn-in), ``log_max``,
    evaluation counts (burn-in included).
    """
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    sigma = _sigma(flow, sigma)
    rng = np.random.default_rng([seed, 7])
    _, log_r = _scored(flow, _proposals(flow, burn_in, seed, 1), sigma)
    log_max = float(np.max(log_r))
    kept, accepted, proposals = [], 0, 0
    for batch in range(max_batches):
        x, log_r = _scored(flow, _proposals(flow, batch_size, seed, 2 + batch), sigma)
        log_max = max(log_max, float(np.max(log_r)))
        shift = gamma
        if shift is None:
            shift = float(np.percentile(_drs_logit(log_r, log_max, epsilon), gamma_percentile))
        keep = rng.uniform(size=len(log_r)) < drs_acceptance(log_r, log_max, gamma=shift, epsilon=epsilon)
        proposals += len(log_r)
        accepted += int(keep.sum())
        kept.append(np.asarray(x)[keep])
        if accepted >= n:
            break
    else:
        raise RuntimeError(f"DRS accepted {accepted} of {proposals} proposals, fewer than n={n}; raise max_batches.")
    samples = np.concatenate(kept)[:n]
    total = burn_in + proposals
    _fill(report, {"method": "drs", "sigma": sigma, "proposals": proposals, "acceptance_rate": accepted / proposals,
                   "log_max": log_max, "discriminator_evaluations": total, "gradient_evaluations": 0,
                   "generator_evaluations": total})
    return _as_samples(flow, samples, n)


def mh_acceptance(log_ratio_current, log_ratio_proposal):
    """The independence Metropolis–Hastings acceptance of MH-GAN (Turner et al. 2019, Algorithm 1):

        α = min(1, (1/D(x_k) − 1) / (1/D(x') − 1)) = min(1, r(x') / r(x_k)),   D = σ(d), r = e^d.

    Returns:
        float64 array of probabilities.
    """
    difference = np.asarray(log_ratio_proposal, np.float64) - np.asarray(log_ratio_current, np.float64)
    return np.exp(np.minimum(difference, 0.0))


def mh_gan(flow, n, *, seed=None, sigma=None, chain_length=640, block=16, report=None):
    """Metropolis–Hastings GAN (Turner, Hung, Frank, Saatci & Yosinski, ICML 2019).

    Algorithm 1 of the paper, one independent chain per output sample: proposals x' = G(z'), z' ~ N(0, I),
    are accepted with probability :func:`mh_acceptance` (the calibrated ratio); after
    ``chain_length`` (K = 640, our reading of the paper's longest chain) proposals the chain's state is the
    sample. The target of the chain is q·r = p (for an exact ratio).

    Choice the paper leaves to the data: the paper starts each chain at a *real* sample (restarting from a
    generator sample if nothing is ever accepted) to skip burn-in; a ``GANFlow`` carries no real data, so
    each chain starts at a generator sample (its first proposal, always accepted), which after K = 640
    steps makes no measurable difference where the acceptance rate is not tiny.

    Report: ``proposals`` (n·K), ``acceptance_rate`` (accepted proposals over proposals), counts.
    """
    n = _checks.positive_int(n, "n")
    chain_length = _checks.positive_int(chain_length, "chain_length")
    block = _checks.positive_int(block, "block")
    seed = _seed(seed)
    sigma = _sigma(flow, sigma)
    rng = np.random.default_rng([seed, 11])
    z = np.array(_proposals(flow, n, seed, 1))  # a writable copy: chains update it in place
    _, current = _scored(flow, z, sigma)
    accepted = 0
    for start in range(0, chain_length, block):
        steps = min(block, chain_length - start)
        z_new = np.asarray(_proposals(flow, steps * n, seed, 2 + start // block)).reshape((steps, n) + z.shape[1:])
        _, proposed = _scored(flow, z_new.reshape((steps * n,) + z.shape[1:]), sigma)
        proposed = proposed.reshape(steps, n)
        for step in range(steps):
            keep = rng.uniform(size=n) < mh_acceptance(current, proposed[step])
            z[keep] = z_new[step][keep]
            current = np.where(keep, proposed[step], current)
            accepted += int(keep.sum())
    samples = flow.generate(tf.constant(z))
    total = n * (chain_length + 1)
    _fill(report, {"method": "mh_gan", "sigma": sigma, "proposals": n * chain_length,
                   "acceptance_rate": accepted / (n * chain_length), "discriminator_evaluations": total,
                   "gradient_evaluations": 0, "generator_evaluations": total + n})
    return _as_samples(flow, samples, n)


# ---------------------------------------------------------------------------------------------------
# Gradient refiners (drifts for the flow engine)


class TransportDrift:
    """DOT's latent velocity on the state s = [z, z₀] (shape [n, 2, *latent_shape]):

        v_z = −∇_z ‖z − z₀ + δ‖ + ∇_z d(G(z)) / k,     v_{z₀} = 0

    the negative gradient of Tanaka's objective ‖z − z₀ + δ‖ − d(G(z))/k; z₀ rides along unchanged
    so that the flow engine's state carries each sample's start.
    """

    def __init__(self, generator, estimator, lipschitz, delta=1e-3):
        self.generator = generator
        self.estimator = estimator
        self.lipschitz = float(lipschitz)
        self.delta = float(delta)

    def __call__(self, state, sigma):
        state = tf.convert_to_tensor(state, tf.float32)
        z, start = state[:, 0], state[:, 1]
        with tf.GradientTape() as tape:
            tape.watch(z)
            x = tf.cast(self.generator(z, training=False), tf.float32)
            gain = tf.reduce_sum(self.estimator.log_ratio(x, sigma)) / self.lipschitz
            offset = tf.reshape(z - start + self.delta, [tf.shape(z)[0], -1])
            cost = tf.reduce_sum(tf.norm(offset, axis=1))
            objective = gain - cost
        return tf.stack([tape.gradient(objective, z), tf.zeros_like(start)], axis=1)


class FDivergenceDrift:
    """DGflow's velocity −∇ f'(q/p) for q/p = e^{−d}, d = log p/q (Ansari et al. 2021):

        KL   (f(u) = u log u):                     v = ∇d
        JS   (f(u) = u log u − (1+u) log((1+u)/2)): v = σ(d) ∇d    (the minimax generator loss's weight)
        logD (f(u) = (1+u) log(1+u) − 2 log 2):     v = σ(−d) ∇d   (the non-saturating loss's weight)

    in data space (``generator=None``: x) or latent space (d(G(z)), ∇ with respect to z).
    """

    def __init__(self, estimator, divergence="kl", generator=None):
        self.estimator = estimator
        self.divergence = _checks.one_of(divergence, "divergence", DIVERGENCES)
        self.generator = generator

    def __call__(self, state, sigma):
        state = tf.convert_to_tensor(state, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(state)
            x = state if self.generator is None else tf.cast(self.generator(state, training=False), tf.float32)
            log_r = self.estimator.log_ratio(x, sigma)
            if self.divergence == "kl":  # −f'(e^{−d}) = d − 1
                value = log_r
            elif self.divergence == "js":  # −f'(e^{−d}) = softplus(d) − log 2
                value = tf.math.softplus(log_r)
            else:  # logD: −f'(e^{−d}) = −softplus(−d) − 1
                value = -tf.math.softplus(-log_r)
            total = tf.reduce_sum(value)
        return tape.gradient(total, state)


def _run_single_level(state, estimator, sigma, *, step_size, steps, noise_scale, seed, batch_size):
    """``steps`` engine steps at one σ level: x ← x + η v(x) + sqrt(2η)·noise_scale·n."""
    plan = flows.make_plan(state, estimator, [sigma], step_sizes=[step_size], steps_per_sigma=steps,
                           noise_scale=noise_scale, seed=seed)
    return flows.run(plan, state, batch_size=batch_size).x


def lipschitz_estimate(flow, sigma, *, pairs=100, seed=0):
    """DOT's k_eff (Tanaka 2019): max over ``pairs`` independent latent pairs of
    |d(G(z₁)) − d(G(z₂))| / ‖z₁ − z₂‖."""
    z = _proposals(flow, 2 * pairs, seed, 3)
    _, log_r = _scored(flow, z, sigma)
    flat = np.asarray(z).reshape(2 * pairs, -1)
    gaps = np.abs(log_r[:pairs] - log_r[pairs:]) / np.linalg.norm(flat[:pairs] - flat[pairs:], axis=1)
    return float(np.max(gaps))


def dot(flow, n, *, seed=None, sigma=None, steps=20, learning_rate=0.01, delta=1e-3, pairs=100, batch_size=None,
        report=None):
    """Discriminator Optimal Transport in latent space (Tanaka, NeurIPS 2019).

    Latent-space DOT: k_eff from ``pairs`` (100) latent pairs (:func:`lipschitz_estimate`), then
    from each z₀ ~ N(0, I), ``steps`` descent steps on ‖z − z₀ + δ‖ − d(G(z))/k_eff (δ = 0.001,
    :class:`TransportDrift`), output G(z).

    Choice forced by gan2flow's one engine: the paper updates z with Adam (lr 0.01, β = (0, 0.9)); the
    engine takes plain gradient steps, so the step is η = lr·sqrt(dim z), the length of an Adam step of
    lr per coordinate (both terms of the gradient have norm ≈ 1 by the choice of k_eff). k_eff over 100 pairs
    and δ = 0.001 follow the authors' code; lr 0.01 and ``steps`` = 20 are our reading of the paper's latent
    experiments, not checked against it here.
    """
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    sigma = _sigma(flow, sigma)
    lipschitz = lipschitz_estimate(flow, sigma, pairs=pairs, seed=seed)
    z = flow.latents(n, seed=seed)
    state = tf.stack([z, z], axis=1)
    step_size = float(learning_rate) * float(np.sqrt(np.prod(flow.latent_shape)))
    drift = TransportDrift(flow.generator, flow.estimator, max(lipschitz, 1e-12), delta)
    moved = _run_single_level(state, drift, sigma, step_size=step_size, steps=steps, noise_scale=0.0, seed=seed,
                              batch_size=batch_size)
    samples = flow.generate(moved[:, 0])
    _fill(report, {"method": "dot", "sigma": sigma, "lipschitz": lipschitz, "steps": steps,
                   "discriminator_evaluations": 2 * pairs, "gradient_evaluations": n * steps,
                   "generator_evaluations": 2 * pairs + n * (steps + 1)})
    return _as_samples(flow, samples, n)


def ddls(flow, n, *, seed=None, sigma=None, steps=1000, step_size=0.01, batch_size=None, report=None):
    """Discriminator Driven Latent Sampling (Che, Zhang, Sohl-Dickstein, Larochelle, Paull, Cao & Bengio,
    NeurIPS 2020).

    Algorithm 1: Langevin dynamics in latent space on the energy E(z) = −log p₀(z) − d(G(z)),

        z ← z − (ε/2) ∇E(z) + sqrt(ε)·n,   n ~ N(0, I),

    whose stationary law is p₀(z)·e^{d(G(z))}, i.e. G pushes it to p for an exact ratio. The drift is
    :class:`gan2flow.estimators.ReweightedPriorScore` (prior weight 1), run by the engine with η = ε/2 and
    noise scale 1 (sqrt(2η) = sqrt(ε)). ε = 0.01 and 1 000 steps, no Metropolis correction: the setting of
    the implementations we know of (one also decays ε ×0.1 every 200 steps; we do not); not checked
    against the paper's text here.
    """
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    sigma = _sigma(flow, sigma)
    z = flow.latents(n, seed=seed)
    drift = estimators.ReweightedPriorScore(flow.generator, flow.estimator, 1.0)
    z = _run_single_level(z, drift, sigma, step_size=0.5 * float(step_size), steps=steps, noise_scale=1.0,
                          seed=seed, batch_size=batch_size)
    samples = flow.generate(z)
    _fill(report, {"method": "ddls", "sigma": sigma, "steps": steps, "discriminator_evaluations": 0,
                   "gradient_evaluations": n * steps, "generator_evaluations": n * (steps + 1)})
    return _as_samples(flow, samples, n)


def dgflow(flow, n, *, seed=None, sigma=None, divergence="kl", space="latent", steps=25, step_size=0.1,
           entropy=0.01, batch_size=None, report=None):
    """Discriminator Gradient flow (Ansari, Ang & Soh, ICLR 2021).

    The Euler–Maruyama discretisation of the gradient flow of the entropy-regularised f-divergence
    with the density ratio q/p = e^{−d} from the discriminator:

        x ← x − η ∇ f'(q/p)(x) + sqrt(2γη)·n      (:class:`FDivergenceDrift`; KL, JS or logD)

    in latent space (``space="latent"``, the paper's main refinement: x = G(z), gradients with respect to
    z; the latent ratio equals the data ratio for an injective G, §4) or in data space (``"data"``).
    Defaults: KL, η = 0.1, γ = 0.01, 25 steps — our reading of the paper's image experiments, not checked
    against its text here.
    """
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    sigma = _sigma(flow, sigma)
    space = _checks.one_of(space, "space", ("latent", "data"))
    step_size = _checks.positive_float(step_size, "step_size")
    entropy = _checks.positive_float(entropy, "entropy", allow_zero=True)
    z = flow.latents(n, seed=seed)
    if space == "latent":
        drift = FDivergenceDrift(flow.estimator, divergence, flow.generator)
        z = _run_single_level(z, drift, sigma, step_size=step_size, steps=steps, noise_scale=float(np.sqrt(entropy)),
                              seed=seed, batch_size=batch_size)
        samples = flow.generate(z)
    else:
        drift = FDivergenceDrift(flow.estimator, divergence)
        samples = _run_single_level(flow.generate(z), drift, sigma, step_size=step_size, steps=steps,
                                    noise_scale=float(np.sqrt(entropy)), seed=seed, batch_size=batch_size)
    _fill(report, {"method": "dgflow", "sigma": sigma, "divergence": divergence, "space": space, "steps": steps,
                   "discriminator_evaluations": 0, "gradient_evaluations": n * steps,
                   "generator_evaluations": n * (steps + 1) if space == "latent" else n})
    return _as_samples(flow, samples, n)


# ---------------------------------------------------------------------------------------------------
# gan2flow's own


def gan2flow(flow, n, *, seed=None, report=None, **options):
    """gan2flow's default refinement, ``flow.sample(n, seed=seed, **options)``: the staged data-space flow
    (``GANFlow.refine``; shared/SD_FLOW.md §9.2) with its outcome check. Gradient evaluations: K stages ×
    ``flow_steps`` per sample (or the calibrated field's 40 levels × 2), plus the check's forward passes."""
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    outcome = {}
    samples = flow.sample(n, seed=seed, report=outcome, **options)
    stages = flow.stages if outcome.get("field") == "staged" else None
    steps = len(stages["sigmas"]) * int(stages["flow_steps"]) if stages else int(options.get("levels") or 40) * int(
        options.get("steps_per_sigma") or 2)
    checked = 2 * min(n, 2000) if "check_sigma" in outcome else 0
    _fill(report, dict(outcome, method="gan2flow", discriminator_evaluations=checked, gradient_evaluations=n * steps,
                       generator_evaluations=n))
    return _as_samples(flow, samples, n)


def gan2flow_latent(flow, n, *, seed=None, report=None, **options):
    """gan2flow's latent refinement, ``flow.sample(n, seed=seed, space="latent", **options)``
    (``GANFlow.refine_latent``: annealed Langevin on p₀(z)·r_σ(G(z)) over the calibrated σ range)."""
    n = _checks.positive_int(n, "n")
    seed = _seed(seed)
    samples = flow.sample(n, seed=seed, space="latent", **options)
    steps = int(options.get("levels", 40)) * int(options.get("steps_per_sigma", 2))
    _fill(report, {"method": "gan2flow_latent", "discriminator_evaluations": 0, "gradient_evaluations": n * steps,
                   "generator_evaluations": n * (steps + 1)})
    return _as_samples(flow, samples, n)


# ---------------------------------------------------------------------------------------------------
# The registry

_REGISTRY = {"drs": drs, "mh_gan": mh_gan, "dot": dot, "ddls": ddls, "dgflow": dgflow, "gan2flow": gan2flow,
             "gan2flow_latent": gan2flow_latent}


def names():
    """The registered refiners, in table order."""
    return list(_REGISTRY)


def get(name):
    """The refiner called ``name`` (``ValueError`` naming the choices otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"`method` must be one of {', '.join(_REGISTRY)}, got {name!r}.")
    return _REGISTRY[name]
