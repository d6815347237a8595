"""Contract suites (issue 12, shared/STYLE.md): every estimator, integrator and σ schedule through one set of checks.

In the manner of diffusers' scheduler tests, adding an estimator, integrator or schedule means adding it to a
table here and passing the suite, not writing new ad-hoc tests.

- Estimators (``ESTIMATORS``): one float32 v shaped like x; eager equals ``tf.function(jit_compile=True)``;
  σ passed as a tensor never retraces, neither the estimator under ``tf.function`` nor ``gan2flow.flow`` over
  new σ values or step sizes; batch-split invariance v(x)[a:b] == v(x[a:b]) for per-sample estimators. The
  two that couple the samples of a batch (the kernel with the particles as source, ``drift_corrected``) are
  checked for what holds instead: permutation equivariance and invariance to replicating the batch (the KDE
  of {x, x} is the KDE of {x}), and that a split really changes them (so the table's split is honest).
- Integrators (``gan2flow.flows.METHODS``): an empty schedule is the identity, shapes are kept, the same seed
  gives the same bits with noise, ``batch_size`` chunks equal one pass for per-sample estimators, and steps
  over the exact (affine) SD between two Gaussians equal a float64 NumPy recursion written out by hand.
- Schedules (``gan2flow.sigmas``): length, exact ends, non-increasing, float32, their formulas, and
  ``validate`` rejecting bad schedules.

Only the public API is used (``gan2flow.flow``, ``trajectory``, the estimators, ``gan2flow.sigmas``,
``gan2flow.flows.METHODS`` and ``trace_count``): the engine's internals may change under these tests.
"""
from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import gan2flow
from gan2flow import conv_models, flows, models
from gan2flow import sigmas as schedules

tfd = tfp.distributions

# --------------------------------------------------------------------------------------------------
# The estimators under contract. p = N(MU_P, S_P² I), q = N(MU_Q, S_Q² I) in 2-D, so exact values exist.

MU_P, S_P = np.array([1.0, -0.5]), 0.7
MU_Q, S_Q = np.array([0.0, 0.0]), 1.0
MU_R, S_R = np.array([-1.0, 1.0]), 1.5  # a third Gaussian r, for the sum p→q→r
LATENT_DIM = 3


def _gaussian_denoiser(mean, std):
    """Posterior mean for N(mean, std² I) under noise σ: D(x, σ) = (std² x + σ² mean)/(std² + σ²)."""
    mean = np.float32(mean)

    def denoise(x, sigma):
        return (std**2 * x + sigma**2 * mean) / (std**2 + sigma**2)

    return denoise


def _analytic():
    return gan2flow.AnalyticScoreDifference(tfd.MultivariateNormalDiag(np.float32(MU_P), [S_P, S_P]),
                                            tfd.MultivariateNormalDiag(np.float32(MU_Q), [S_Q, S_Q]))


def _samples(mean, std, n, seed):
    return (np.random.default_rng(seed).normal(size=(n, 2)) * std + mean).astype(np.float32)


def _discriminator_estimator(seed=0):
    keras.utils.set_random_seed(seed)
    return gan2flow.DiscriminatorScoreDifference(models.mlp_discriminator((2,), hidden=(16, 16)))


IMAGE_SHAPE = (16, 16, 1)  # the smallest image shape that gets the convolutional calibration (issue 17)


def _conv_calibration_estimator():
    keras.utils.set_random_seed(3)
    model = conv_models.calibration_model(IMAGE_SHAPE, hidden=(16,))
    # At initialisation the input gradient is spread over 256 pixels (~1e-3 each); scale the logit so the field
    # is O(0.1) like the 2-D estimators' (the contract's "a field, not rounding noise" check needs > 1e-2).
    kernel, bias = model.get_layer("logit").get_weights()
    model.get_layer("logit").set_weights([100.0 * kernel, bias])
    return gan2flow.DiscriminatorScoreDifference(model, loss="logistic", sigma_conditioned=True)


def _reweighted_prior():
    keras.utils.set_random_seed(1)
    generator = models.mlp_generator(LATENT_DIM, (2,), hidden=(16,))
    return gan2flow.estimators.ReweightedPriorScore(generator, _discriminator_estimator(2))


_FACTORIES = {
    "kernel_fixed_source": lambda: gan2flow.KernelScoreDifference(
        _samples(MU_P, S_P, 96, 10), _samples(MU_Q, S_Q, 80, 11)),
    "kernel_particles": lambda: gan2flow.KernelScoreDifference(_samples(MU_P, S_P, 96, 10), source=None),
    "analytic": _analytic,
    "discriminator": _discriminator_estimator,
    "denoiser": lambda: gan2flow.DenoiserScoreDifference(_gaussian_denoiser(MU_P, S_P),
                                                         _gaussian_denoiser(MU_Q, S_Q)),
    # [∇log p_σ − ∇log q_σ] + [∇log q_σ − ∇log r_σ] = ∇log p_σ − ∇log r_σ (two estimators whose ends meet)
    "sum": lambda: gan2flow.ScoreDifferenceSum(_analytic(), gan2flow.DenoiserScoreDifference(
        _gaussian_denoiser(MU_Q, S_Q), _gaussian_denoiser(MU_R, S_R))),
    "drift_corrected": lambda: gan2flow.drift_corrected(_analytic(), _samples(MU_Q, S_Q, 64, 12)),
    "reweighted_prior": _reweighted_prior,
    "conv_calibration": _conv_calibration_estimator,
}
ESTIMATORS = sorted(_FACTORIES)
# Estimators whose v at one sample depends on the other samples of the batch (the particles are the source).
COUPLED = {"kernel_particles", "drift_corrected"}
PER_SAMPLE = [name for name in ESTIMATORS if name not in COUPLED]


@functools.cache
def _estimator(name):
    """One estimator object per name for the whole module (compiled flows are cached per object)."""
    return _FACTORIES[name]()


def _x(name, n=24, seed=0):
    shape = {"reweighted_prior": (LATENT_DIM,), "conv_calibration": IMAGE_SHAPE}.get(name, (2,))
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Estimator contract


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_returns_float32_shaped_like_x(name):
    estimator, x = _estimator(name), _x(name)
    for sigma in (0.5, np.float32(0.5), tf.constant(0.5)):
        v = estimator(x, sigma)
        assert isinstance(v, tf.Tensor) and v.dtype == tf.float32 and tuple(v.shape) == x.shape, (sigma, v)
        assert np.all(np.isfinite(v)) and np.max(np.abs(v)) > 1e-2  # a field, not zeros or rounding noise
    np.testing.assert_array_equal(estimator(tf.constant(x), 0.5), estimator(x, tf.constant(0.5)))


def _gaussian_sd(x, sigma, target, source):
    """float64 NumPy: ∇log N(μ_a, (s_a² + σ²)I) − ∇log N(μ_b, (s_b² + σ²)I) at x."""
    (mean_a, std_a), (mean_b, std_b) = target, source
    return -(x - mean_a) / (std_a**2 + sigma**2) + (x - mean_b) / (std_b**2 + sigma**2)


# The estimators with an exact value here: the smoothed SD between two Gaussians (p→q; the sum p→q→r is p→r).
EXACT = {"analytic": ((MU_P, S_P), (MU_Q, S_Q)), "denoiser": ((MU_P, S_P), (MU_Q, S_Q)),
         "sum": ((MU_P, S_P), (MU_R, S_R))}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_estimator_equals_the_exact_gaussian_sd(name):
    # float32 evaluation of O(1) affine expressions (and tfp's log-density gradient): a few ulps, 1e-5.
    x = _x(name).astype(np.float64) * 2
    for sigma in (0.1, 0.5, 2.0):
        np.testing.assert_allclose(_estimator(name)(np.float32(x), sigma), _gaussian_sd(x, sigma, *EXACT[name]),
                                   rtol=1e-5, atol=1e-5, err_msg=f"sigma={sigma}")


# XLA may fuse and reorder float32 operations; each v here is O(1)–O(10) and comes from at most a few hundred
# float32 operations per entry (the kernel's 96-term soft-max, a 16-wide MLP's gradient, a Cholesky-free
# Gaussian log-density), so eager and compiled agree to a few hundred ulps: rtol 1e-4 with atol 1e-4 for
# entries near zero. (Measured: at most 4e-6 absolute, on the kernel estimators.)
XLA_RTOL, XLA_ATOL = 1e-4, 1e-4


@pytest.mark.parametrize("name", ESTIMATORS)
def test_estimator_under_xla_equals_eager_and_a_sigma_tensor_never_retraces(name):
    estimator, x = _estimator(name), _x(name)
    compiled = tf.function(lambda x, sigma: estimator(x, sigma), jit_compile=True)
    for sigma in (0.5, 0.8, 1.7):
        np.testing.assert_allclose(compiled(tf.constant(x), tf.constant(sigma)), estimator(x, sigma),
                                   rtol=XLA_RTOL, atol=XLA_ATOL, err_msg=f"sigma={sigma}")
    assert compiled.experimental_get_tracing_count() == 1, "a new σ value must reuse the traced program"


@pytest.mark.parametrize("name", ESTIMATORS)
def test_flow_over_new_sigmas_and_step_sizes_does_not_retrace(name):
    estimator, x = _estimator(name), _x(name, n=8)
    first = gan2flow.flow(x, estimator, [1.0, 0.6, 0.3], step_scale=0.1)
    before = flows.trace_count()
    again = gan2flow.flow(x, estimator, tf.constant([1.2, 0.5, 0.2]), step_scale=0.2)
    gan2flow.flow(x, estimator, [0.9, 0.4, 0.1], step_sizes=tf.constant([0.05, 0.02, 0.01]))
    gan2flow.flow(x + 0.5, estimator, schedules.geometric(2.0, 0.3, 3))
    assert flows.trace_count() == before
    assert not np.array_equal(first, again)  # the new values were used, not the old ones


# Per-sample estimators compute each row from that row alone, but a matmul over another batch size may
# round differently (other blocking in the CPU kernels): float32 rounding of O(10) values, atol 1e-5.
SPLIT_RTOL, SPLIT_ATOL = 1e-5, 1e-5
SPLITS = [(0, 1), (3, 10), (10, 24)]


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_per_sample_estimator_is_batch_split_invariant(name):
    estimator, x = _estimator(name), _x(name)
    whole = estimator(x, 0.6).numpy()
    for start, stop in SPLITS:
        np.testing.assert_allclose(estimator(x[start:stop], 0.6), whole[start:stop], rtol=SPLIT_RTOL,
                                   atol=SPLIT_ATOL, err_msg=f"rows {start}:{stop}")


@pytest.mark.parametrize("name", sorted(COUPLED))
def test_coupled_estimator_is_permutation_equivariant_and_replication_invariant(name):
    estimator, x = _estimator(name), _x(name)
    whole = estimator(x, 0.6).numpy()
    permutation = np.random.default_rng(1).permutation(len(x))
    # Same rows in another order: the same sums in another order, float32 rounding only.
    np.testing.assert_allclose(estimator(x[permutation], 0.6), whole[permutation], rtol=SPLIT_RTOL,
                               atol=SPLIT_ATOL)
    # The batch {x, x} has the same empirical distribution as {x}: every weight is duplicated and the
    # normalised kernel means are unchanged.
    doubled = estimator(np.concatenate([x, x]), 0.6).numpy()
    np.testing.assert_allclose(doubled, np.concatenate([whole, whole]), rtol=SPLIT_RTOL, atol=SPLIT_ATOL)
    # ... but a sub-batch is another source distribution: v(x[a:b]) is not v(x)[a:b] (hence COUPLED).
    assert np.max(np.abs(estimator(x[:6], 0.6).numpy() - whole[:6])) > 1e-2


# --------------------------------------------------------------------------------------------------
# Integrator contract


def _exact_sd(x, sigma):
    """float64 NumPy: v_σ(x) = −(x − μ_p)/(s_p² + σ²) + (x − μ_q)/(s_q² + σ²) (both sides smoothed by σ)."""
    return _gaussian_sd(x, sigma, (MU_P, S_P), (MU_Q, S_Q))


def _elementwise(x, sigma):
    """A per-sample estimator for any sample shape: the exact SD between N(0.5, 0.3²) and N(0, 1) per entry."""
    return -(x - 0.5) / (0.09 + sigma**2) + x / (1.0 + sigma**2)


ELEMENTWISE = gan2flow.DenoiserScoreDifference(lambda x, s: x + s**2 * _elementwise(x, s))


@pytest.mark.parametrize("method", flows.METHODS)
def test_empty_schedule_is_the_identity(method):
    x = _x("analytic", n=10)
    for empty in ([], np.zeros(0, np.float32), tf.zeros([0])):
        out = gan2flow.flow(x, _estimator("analytic"), empty, method=method, noise_scale=1.0, seed=0)
        assert out.dtype == tf.float32 and out.numpy().tobytes() == x.tobytes()
        path = gan2flow.trajectory(x, _estimator("analytic"), empty, method=method)
        assert path.shape == (1,) + x.shape and path[0].numpy().tobytes() == x.tobytes()


@pytest.mark.parametrize("method", flows.METHODS)
@pytest.mark.parametrize("shape", [(6, 2), (5, 2, 3), (4, 1, 2, 2)])
def test_integrator_keeps_the_shape(method, shape):
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    sigmas = schedules.geometric(1.0, 0.2, 3)
    out = gan2flow.flow(x, ELEMENTWISE, sigmas, method=method, steps_per_sigma=2, jit_compile=False)
    assert out.shape == shape and out.dtype == tf.float32 and not np.allclose(out, x)
    path = gan2flow.trajectory(x, ELEMENTWISE, sigmas, method=method, steps_per_sigma=2, jit_compile=False)
    assert path.shape == (4,) + shape and path.dtype == tf.float32
    np.testing.assert_array_equal(path[-1], out)


@pytest.mark.parametrize("method", flows.METHODS)
def test_same_seed_gives_the_same_bits_with_noise(method):
    estimator, x = _estimator("analytic"), _x("analytic", n=16)
    sigmas = schedules.geometric(1.5, 0.2, 4)
    runs = [gan2flow.flow(x, estimator, sigmas, method=method, noise_scale=0.7, seed=seed).numpy()
            for seed in (3, 3, 4)]
    assert runs[0].tobytes() == runs[1].tobytes()
    assert not np.allclose(runs[0], runs[2])  # another seed, other noise: the noise was added


# Chunks of a per-sample flow compute every row from that row alone, with noise keyed by the global row; only
# the rounding of batch-shape-dependent kernels (matmul blocking, vectorised log/cos tails: measured 1 ulp) may
# differ, over 8 steps of O(1) values: rtol = atol = 1e-5. Compiled as a plain graph (jit_compile=False): the
# chunking is the engine's, the same under XLA (tests/test_flows.py checks one estimator there), and XLA
# compiles of three batch shapes per case would cost seconds.
@pytest.mark.parametrize("method", flows.METHODS)
@pytest.mark.parametrize("name", PER_SAMPLE)
def test_batch_size_chunks_equal_one_pass_for_per_sample_estimators(name, method):
    estimator, x = _estimator(name), _x(name, n=12)
    sigmas = schedules.geometric(1.2, 0.3, 4)
    options = dict(method=method, noise_scale=0.5, seed=5, step_scale=0.2, jit_compile=False)
    whole = gan2flow.flow(x, estimator, sigmas, **options)
    chunked = gan2flow.flow(x, estimator, sigmas, batch_size=4, **options)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


def _by_hand(x, sigmas, etas, steps_per_sigma, method):
    """The integrators' update equations (gan2flow.flow's docstring) in float64 over the exact SD."""
    states = [x]
    for sigma, eta in zip(sigmas, etas, strict=True):
        for _ in range(steps_per_sigma):
            v = _exact_sd(x, sigma)
            if method == "euler":
                x = x + eta * v
            else:
                x = x + eta * 0.5 * (v + _exact_sd(x + eta * v, sigma))
        states.append(x)
    return np.stack(states)


# float32 flow against the float64 recursion: 12 affine steps of O(1) values, each contracting (|1 + ηa| < 1),
# so rounding does not grow: a few ulps of O(1), atol = rtol = 1e-5.
@pytest.mark.parametrize("method", flows.METHODS)
def test_steps_over_the_exact_gaussian_sd_match_the_update_equations(method):
    x = _samples(MU_Q, S_Q, 20, 3)
    sigmas = np.array([2.0, 0.9, 0.4])
    for options, etas in ((dict(step_scale=0.3), 0.3 * sigmas**2), (dict(step_sizes=[0.5, 0.1, 0.02]), None)):
        etas = np.array(options["step_sizes"]) if etas is None else etas
        expected = _by_hand(x.astype(np.float64), sigmas, etas, 2, method)
        path = gan2flow.trajectory(x, _estimator("analytic"), sigmas, steps_per_sigma=2, method=method, **options)
        np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-5)


def test_one_euler_step_written_out():
    # σ = 0.5, ε = 0.4: η = εσ² = 0.1. At x = (1, 1): v = −((1, 1) − (1, −0.5))/(0.49 + 0.25) + (1, 1)/(1 + 0.25)
    # = −(0, 1.5)/0.74 + (0.8, 0.8) = (0.8, 0.8 − 1.5/0.74); x + η v = (1.08, 1 + 0.1·(0.8 − 1.5/0.74)).
    out = gan2flow.flow(np.float32([[1.0, 1.0]]), _estimator("analytic"), [0.5], step_scale=0.4)
    np.testing.assert_allclose(out, [[1.08, 1.0 + 0.1 * (0.8 - 1.5 / 0.74)]], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", flows.METHODS)
def test_noise_is_added_as_sqrt_2_eta_times_a_standard_normal(method):
    # With a zero field one step is x + sqrt(2η)·s·n. The draws n must be standard normal: over 4 096
    # draws the mean's standard error is 0.016 and the standard deviation's 0.011, so ±0.07 is > 4.5 SE.
    # (A missing √2 would put the std at 0.71, a missing σ-free η at another scale: far outside.)
    # With the exact field the same draws are added to the deterministic step (noise keyed by seed and row).
    x = _samples(MU_Q, S_Q, 2048, 4)
    zero = gan2flow.DenoiserScoreDifference(lambda x, s: x)
    sigma, eta, scale = 0.5, 0.08, 0.6
    options = dict(step_sizes=[eta], noise_scale=scale, seed=9, method=method, jit_compile=False)  # one step
    noisy = gan2flow.flow(x, zero, [sigma], **options).numpy()
    draws = (noisy - x) / (np.sqrt(2 * eta) * scale)
    assert abs(draws.mean()) < 0.07 and abs(draws.std() - 1.0) < 0.07, (draws.mean(), draws.std())
    drifted = gan2flow.flow(x, _estimator("analytic"), [sigma], **options).numpy()
    plain = _by_hand(x.astype(np.float64), [sigma], [eta], 1, method)[-1]
    np.testing.assert_allclose(drifted, plain + (noisy - x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Schedule contract: (name, call, n, σ_max, σ_min, float64 formula)

_RAMP = np.linspace(0.0, 1.0, 9)
SCHEDULES = {
    "geometric": (lambda: schedules.geometric(2.0, 0.05, 9), 2.0 * (0.05 / 2.0) ** _RAMP),
    "linear": (lambda: schedules.linear(2.0, 0.05, 9), 2.0 + (0.05 - 2.0) * _RAMP),
    "karras": (lambda: schedules.karras(2.0, 0.05, 9, rho=7.0),
               (2.0 ** (1 / 7) + _RAMP * (0.05 ** (1 / 7) - 2.0 ** (1 / 7))) ** 7),
    "constant": (lambda: schedules.constant(0.3, 5), np.full(5, 0.3)),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_contract(kind):
    make, formula = SCHEDULES[kind]
    sigmas = make()
    assert isinstance(sigmas, tf.Tensor) and sigmas.dtype == tf.float32 and sigmas.shape == formula.shape
    values = sigmas.numpy()
    # Ends exact to float32 rounding of the arguments; inside, the float64 formula rounded once (1 ulp).
    assert values[0] == np.float32(formula[0]) and values[-1] == np.float32(formula[-1])
    np.testing.assert_allclose(values, formula, rtol=2**-23, atol=0)
    assert np.all(values > 0) and np.all(np.diff(values) <= 0)
    np.testing.assert_array_equal(schedules.validate(sigmas), values)  # a schedule is a valid flow schedule
    if kind == "constant":
        with pytest.raises(ValueError, match="strictly decreasing"):
            schedules.validate(sigmas, allow_equal=False)
    else:
        assert np.all(np.diff(values) < 0)
        schedules.validate(sigmas, allow_equal=False)


BAD_SCHEDULES = [
    ([1.0, 2.0], r"`sigmas` must be non-increasing .*sigmas\[0\] = 1.0 then sigmas\[1\] = 2.0"),
    ([1.0, 0.5, 0.7], r"non-increasing .*sigmas\[1\] = 0.5"),
    ([1.0, 0.0], r"`sigmas` must be > 0 everywhere, got sigmas\[1\] = 0.0"),
    ([-0.5], r"must be > 0"),
    ([1.0, np.nan], r"`sigmas` must be finite"),
    ([np.inf, 1.0], r"`sigmas` must be finite"),
    ([[1.0, 0.5]], r"`sigmas` must have rank 1"),
    (["1.0", "0.5"], r"`sigmas` must be a numeric array"),
    (None, r"`sigmas` must be an array of numbers, got None"),
]


@pytest.mark.parametrize("values, message", BAD_SCHEDULES, ids=[str(v) for v, _ in BAD_SCHEDULES])
def test_validate_rejects_bad_schedules_naming_the_index(values, message):
    with pytest.raises(ValueError, match=message):
        schedules.validate(values)
