"""The flow integrators: closed forms, contract suite, compilation, divergence handling, bad input, seeds."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gan2flow
from gan2flow import flows, metrics
from gan2flow import sigmas as schedules

from _helpers import TRACED, bad_call_tests, one_nan, pull, same_bits

tfd = tfp.distributions

MU, S = np.float32([2.0, -1.0]), 0.5


def gaussian_denoiser(x, sigma):
    """Posterior mean for target N(μ, s²I): D(x, σ) = (s²x + σ²μ)/(s² + σ²)."""
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def _estimators():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(256, 2)).astype(np.float32) + 1
    disc = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    p = tfd.MultivariateNormalDiag(MU, [S, S])
    q = tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0])
    return {
        "kernel": gan2flow.KernelScoreDifference(target, block_size=64),
        "analytic": gan2flow.AnalyticScoreDifference(p, q),
        "discriminator": gan2flow.DiscriminatorScoreDifference(disc),
        "denoiser": gan2flow.DenoiserScoreDifference(gaussian_denoiser),
        "drift_corrected": gan2flow.drift_corrected(gan2flow.AnalyticScoreDifference(p, q), target[:64]),
    }


ESTIMATORS = _estimators()
SIGMAS = gan2flow.sigmas.geometric(2.0, 0.1, 4)


@pytest.mark.parametrize("method", flows.METHODS)
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_contract_shape_identity_and_seeds(name, method):
    estimator = ESTIMATORS[name]
    x = np.random.default_rng(2).normal(size=(32, 2)).astype(np.float32)
    out = gan2flow.flow(x, estimator, SIGMAS, method=method, steps_per_sigma=2)
    assert out.shape == x.shape and out.dtype == tf.float32
    assert np.all(np.isfinite(out)) and not np.allclose(out, x)
    # Zero steps (empty schedule) is the identity.
    np.testing.assert_array_equal(gan2flow.flow(x, estimator, []), x)
    # Same seed, same samples (bit for bit); another seed differs.
    a = gan2flow.flow(x, estimator, SIGMAS, method=method, noise_scale=0.5, seed=7)
    b = gan2flow.flow(x, estimator, SIGMAS, method=method, noise_scale=0.5, seed=7)
    c = gan2flow.flow(x, estimator, SIGMAS, method=method, noise_scale=0.5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_xla_and_graph_runs_agree(name):
    x = np.random.default_rng(3).normal(size=(32, 2)).astype(np.float32)
    xla = gan2flow.flow(x, ESTIMATORS[name], SIGMAS, method="heun", jit_compile=True)
    graph = gan2flow.flow(x, ESTIMATORS[name], SIGMAS, method="heun", jit_compile=False)
    # Different fusion/ordering of float32 ops over 8 evaluations: ~1e-5 relative.
    np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-4)


def test_euler_step_is_hand_computed():
    estimator = ESTIMATORS["analytic"]
    x = np.float32([[0.5, 0.5], [-1.0, 2.0]])
    sigma, scale = 0.6, 0.3
    expected = x + scale * sigma**2 * estimator(x, sigma).numpy()
    np.testing.assert_allclose(gan2flow.flow(x, estimator, [sigma], step_scale=scale), expected, rtol=1e-6)
    v1 = estimator(x, sigma).numpy()
    v2 = estimator(x + scale * sigma**2 * v1, sigma).numpy()
    heun = x + scale * sigma**2 * 0.5 * (v1 + v2)
    np.testing.assert_allclose(gan2flow.flow(x, estimator, [sigma], step_scale=scale, method="heun"), heun,
                               rtol=1e-6)


def test_one_denoiser_step_is_the_ddim_step():
    # With no source term and η_k = σ_k(σ_k − σ_{k+1}):  x ← x + (1 − σ_{k+1}/σ_k)(D(x, σ_k) − x).
    x = np.random.default_rng(4).normal(size=(16, 2)).astype(np.float32) * 3
    sigmas = np.float32([3.0, 1.2])
    etas = gan2flow.sigmas.diffusion_step_sizes(sigmas, sigma_final=0.5)
    estimator = gan2flow.DenoiserScoreDifference(gaussian_denoiser)
    one = gan2flow.flow(x, estimator, sigmas[:1], step_sizes=etas[:1])
    ddim = x + (1 - 1.2 / 3.0) * (gaussian_denoiser(x, 3.0) - x)
    np.testing.assert_allclose(one, ddim, rtol=1e-5, atol=1e-5)  # float32 rounding of the same algebra


def test_denoiser_flow_from_wide_noise_lands_on_the_target_moments():
    # x₀ ~ N(0, σ_max²I) ≈ p_{σ_max} = N(μ, (s² + σ_max²)I) for σ_max ≫ |μ|, s. The deterministic sampler is
    # an Euler scheme of the probability-flow ODE; 400 geometric levels make its error ≪ the MC error.
    n, sigma_max = 20_000, 200.0
    x0 = np.random.default_rng(5).normal(size=(n, 2)).astype(np.float32) * sigma_max
    sigmas = gan2flow.sigmas.geometric(sigma_max, 1e-3, 400)
    out = gan2flow.flow(x0, gan2flow.DenoiserScoreDifference(gaussian_denoiser), sigmas,
                        step_sizes=gan2flow.sigmas.diffusion_step_sizes(sigmas)).numpy()
    # Mean: standard error s/√n ≈ 0.0035 plus the start's mismatch |μ|·s/√(s²+σ_max²) ≈ 0.006 → 0.03 bound.
    np.testing.assert_allclose(out.mean(0), MU, atol=0.03)
    # Std: relative standard error 1/√(2n) ≈ 0.005 → 3 % bound.
    np.testing.assert_allclose(out.std(0), [S, S], rtol=0.03)


def _kl_gaussians(m0, c0, m1, c1):
    inv = np.linalg.inv(c1)
    d = len(m0)
    return 0.5 * (np.trace(inv @ c0) + (m1 - m0) @ inv @ (m1 - m0) - d + np.log(np.linalg.det(c1) / np.linalg.det(c0)))


@pytest.mark.parametrize("sigma", [0.01, 0.5])
def test_exact_sd_flow_lowers_kl_at_every_step(sigma):
    # Between Gaussians v_σ(x) = A x + b is affine, so particles stay Gaussian: q_{t+1} = N(M m + c, M C Mᵀ)
    # with M = I + ηA, c = ηb. We re-aim the exact estimator at the current q_t every step and check
    # (i) the flowed samples follow the affine map, (ii) KL(q_t ‖ p) decreases at every step.
    mean_p, cov_p = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 1.5]])
    mean_q, cov_q = np.array([-2.0, 1.0]), np.array([[0.3, 0.0], [0.0, 3.0]])
    p = tfd.MultivariateNormalTriL(np.float32(mean_p), np.linalg.cholesky(cov_p).astype(np.float32))
    x = np.random.default_rng(6).multivariate_normal(mean_q, cov_q, size=256).astype(np.float32)
    eta = 0.2
    kls = [_kl_gaussians(mean_q, cov_q, mean_p, cov_p)]
    eye = np.eye(2)
    # q's parameters are variables, so one estimator (and one compiled flow) follows q_t.
    loc, scale_tril = tf.Variable(np.float32(mean_q)), tf.Variable(np.linalg.cholesky(cov_q).astype(np.float32))
    estimator = gan2flow.AnalyticScoreDifference(p, tfd.MultivariateNormalTriL(loc, scale_tril))
    for _ in range(15):
        loc.assign(np.float32(mean_q))
        scale_tril.assign(np.linalg.cholesky(cov_q).astype(np.float32))
        new_x = gan2flow.flow(x, estimator, [sigma], step_sizes=[eta]).numpy()
        a = -np.linalg.inv(cov_p + sigma**2 * eye) + np.linalg.inv(cov_q + sigma**2 * eye)
        b = np.linalg.inv(cov_p + sigma**2 * eye) @ mean_p - np.linalg.inv(cov_q + sigma**2 * eye) @ mean_q
        m = eye + eta * a
        np.testing.assert_allclose(new_x, x @ m.T + eta * b, rtol=1e-4, atol=1e-4)
        mean_q, cov_q = m @ mean_q + eta * b, m @ cov_q @ m.T
        kls.append(_kl_gaussians(mean_q, cov_q, mean_p, cov_p))
        x = new_x
    assert np.all(np.diff(kls) < 0), kls
    assert kls[-1] < 0.05 * kls[0]


def test_trajectory_ends_where_flow_ends_and_callback_sees_every_step():
    estimator = ESTIMATORS["kernel"]
    x = np.random.default_rng(7).normal(size=(40, 2)).astype(np.float32)
    kwargs = dict(steps_per_sigma=3, noise_scale=0.2, seed=1)
    path = gan2flow.trajectory(x, estimator, SIGMAS, **kwargs)
    assert path.shape == (len(SIGMAS) + 1, 40, 2)
    np.testing.assert_array_equal(path[0], x)
    final = gan2flow.flow(x, estimator, SIGMAS, **kwargs)
    np.testing.assert_allclose(path[-1], final, rtol=1e-6, atol=1e-6)
    seen = []
    stepped = gan2flow.flow(x, estimator, SIGMAS, callback=seen.append, **kwargs)
    assert [d["step"] for d in seen] == list(range(3 * len(SIGMAS)))
    np.testing.assert_allclose([d["sigma"] for d in seen], np.repeat(SIGMAS.numpy(), 3), rtol=1e-6)
    np.testing.assert_allclose(stepped, final, rtol=1e-5, atol=1e-5)


def test_chunked_flow_equals_whole_flow_for_per_sample_estimators():
    # Counter-based noise: the draw depends on the global sample index, not on the chunking.
    estimator = ESTIMATORS["analytic"]
    x = np.random.default_rng(8).normal(size=(100, 2)).astype(np.float32)
    whole = gan2flow.flow(x, estimator, SIGMAS, noise_scale=1.0, seed=3)
    chunked = gan2flow.flow(x, estimator, SIGMAS, noise_scale=1.0, seed=3, batch_size=33)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_no_retracing_for_new_schedule_values():
    # Schedules are padded to power-of-two buckets (≥ 8 levels): new values and lengths within a bucket
    # reuse the compiled program; a longer schedule traces once for its bucket.
    estimator = ESTIMATORS["analytic"]
    x = np.zeros((8, 2), np.float32)
    gan2flow.flow(x, estimator, [1.0, 0.5], step_scale=0.1)
    before = flows.trace_count()
    gan2flow.flow(x, estimator, [0.9, 0.3, 0.2], step_scale=0.2, steps_per_sigma=2)
    gan2flow.flow(x + 1, estimator, gan2flow.sigmas.geometric(3.0, 0.1, 8), method="euler")
    assert flows.trace_count() == before
    gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(3.0, 0.1, 10))
    assert flows.trace_count() == before + 1
    gan2flow.flow(x, estimator, gan2flow.sigmas.geometric(2.0, 0.2, 16), steps_per_sigma=3)
    assert flows.trace_count() == before + 1


def test_divergence_is_reported_with_step_and_sigma():
    exploding = lambda x, sigma: tf.where(sigma < 0.5, x * np.inf, tf.zeros_like(x))  # noqa: E731
    x = np.ones((4, 2), np.float32)
    with pytest.raises(gan2flow.FlowDivergenceError, match=r"step 2 .*sigma=0\.4") as info:
        gan2flow.flow(x, exploding, [1.0, 0.8, 0.4, 0.2])
    assert info.value.step == 2 and info.value.level == 2
    # Run in segments behind a progress bar (level 0, level 1, levels 2-3), the step and level still count
    # from the start of the whole flow.
    plan = gan2flow.flows.make_plan(x, exploding, [1.0, 0.8, 0.4, 0.2], steps_per_sigma=2)
    with pytest.raises(gan2flow.FlowDivergenceError, match=r"step 4 .*sigma=0\.4") as info:
        gan2flow.flows.run(plan, x, segments=3, progress="flow")
    assert info.value.step == 4 and info.value.level == 2


def test_backoff_halves_the_step_and_continues():
    # v = x / σ² with η = σ²·ε gives x ← (1 + ε) x. The default bound is 1e3·(1 + max|x₀| + 10σ_max) = 12 000
    # here: ε = 1e5 leaves it; halvings give 50 000, 25 000, 12 500 (still out), then 6 250 (accepted).
    growth = lambda x, sigma: x / sigma**2  # noqa: E731
    x = np.ones((4, 2), np.float32)
    with pytest.raises(gan2flow.FlowDivergenceError):
        gan2flow.flow(x, growth, [1.0], step_scale=1e5)
    out = gan2flow.flow(x, growth, [1.0], step_scale=1e5, on_divergence="backoff").numpy()
    np.testing.assert_allclose(out, (1 + 1e5 / 2**4) * x, rtol=1e-5)
    with pytest.raises(gan2flow.FlowDivergenceError, match="3 step halvings"):
        gan2flow.flow(x, growth, [1.0], step_scale=1e5, on_divergence="backoff", max_backoffs=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.ones(3, np.float32)), "rank"),
        (dict(x=np.full((2, 2), np.nan, np.float32)), "x"),
        (dict(sigmas=[0.5, 1.0]), "sigmas"),
        (dict(sigmas=[1.0, -0.5]), "sigmas"),
        (dict(method="rk4"), "method"),
        (dict(step_scale=0.0), "step_scale"),
        (dict(step_sizes=[0.1]), "step_sizes"),
        (dict(steps_per_sigma=0), "steps_per_sigma"),
        (dict(noise_scale=-1.0), "noise_scale"),
        (dict(seed=1.5), "seed"),
        (dict(estimator="kernel"), "estimator"),
        (dict(on_divergence="ignore"), "on_divergence"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    args = dict(x=np.ones((4, 2), np.float32), estimator=ESTIMATORS["analytic"], sigmas=[1.0, 0.5])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gan2flow.flow(args.pop("x"), args.pop("estimator"), args.pop("sigmas"), **args)


def test_kernel_flow_carries_noise_to_the_grid():
    # End to end: N(0, I) particles to grid25 by the training-free kernel flow (the `gan2flow demo --kernel`).
    target_dist = gan2flow.toys.grid25()
    target = gan2flow.toys.sample(target_dist, 2000, seed=0)
    x = np.random.default_rng(9).normal(size=(1000, 2)).astype(np.float32)
    out = gan2flow.flow(x, gan2flow.KernelScoreDifference(target, block_size=500),
                        gan2flow.sigmas.geometric(4.0, 0.03, 60), step_scale=0.5, steps_per_sigma=2).numpy()
    centers, stds, _ = gan2flow.toys.mixture_modes(target_dist)
    before = metrics.mode_stats(x, centers, stds)
    after = metrics.mode_stats(out, centers, stds)
    assert after["modes"] == 25 and after["high_quality"] > 0.9 > before["high_quality"]


def test_langevin_noise_on_an_explicit_source_leaves_p_stationary_not_a_tempered_p():
    """shared/SD_FLOW.md §9.4: drift ∇log p − ∇log q_t plus noise of scale s has the stationary law
    p^{1/(1+s²)}; with an explicit (kernel) source term the flow uses ∇log p − (1 − s²)∇log q_t instead.
    1-D kernel flow from N(0, 1) to N(0, 1) at a fixed σ = 0.3 with s = 1: the corrected flow keeps the
    smoothed target's std sqrt(1 + σ²) = 1.044, the uncorrected one spreads to sqrt(2)·1.044 ≈ 1.48
    (measured 1.036 and 1.42 with 2000 particles, 300 steps). Bounds: ±0.08 covers the Monte Carlo error of
    a std from 1000 correlated particles (standard error ≈ 0.025)."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2000, 1)).astype("float32")
    x0 = rng.normal(size=(1000, 1)).astype("float32")
    estimator = gan2flow.KernelScoreDifference(target)
    sigmas = gan2flow.sigmas.constant(0.3, 200)
    stds = {}
    for corrected in (True, False):
        plan = flows.make_plan(x0, estimator, sigmas, step_scale=0.5, noise_scale=1.0, seed=1,
                               noise_correction=corrected)
        stds[corrected] = float(np.std(flows.run(plan, x0).x))
    assert abs(stds[True] - np.sqrt(1.09)) < 0.08, stds
    assert stds[False] > 1.3, stds
# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad input to gan2flow.flow / trajectory.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("flow-x-nan", lambda k: gan2flow.flow(one_nan(k["x"]), pull, k["sigmas"]), ValueError,
     r"`x` must be finite, found 1 NaN/Inf value\(s\) in shape \(8, 2\)"),
    ("flow-x-inf", lambda k: gan2flow.flow(k["x"] * np.inf, pull, k["sigmas"]), ValueError, r"`x` must be finite"),
    ("flow-x-rank-1", lambda k: gan2flow.flow(k["x"][0], pull, k["sigmas"]), ValueError,
     r"`x` must have rank >= 2.*got shape \(2,\)"),
    ("flow-x-strings", lambda k: gan2flow.flow(np.array([["a", "b"]]), pull, k["sigmas"]), ValueError,
     r"`x` must be a numeric array, got dtype <U1"),
    ("flow-x-complex", lambda k: gan2flow.flow(k["x"] + 1j, pull, k["sigmas"]), ValueError,
     r"`x` must be real-valued"),
    ("flow-x-none", lambda k: gan2flow.flow(None, pull, k["sigmas"]), ValueError, r"`x` must be an array.*None"),
    ("trajectory-x-nan", lambda k: gan2flow.trajectory(k["x"] * np.nan, pull, k["sigmas"]), ValueError,
     r"`x` must be finite"),
    ("flow-sigma-zero", lambda k: gan2flow.flow(k["x"], pull, [1.0, 0.0]), ValueError,
     r"`sigmas` must be > 0.*sigmas\[1\] = 0"),
    ("flow-sigma-negative", lambda k: gan2flow.flow(k["x"], pull, [-1.0]), ValueError, r"`sigmas` must be > 0"),
    ("flow-sigma-increasing", lambda k: gan2flow.flow(k["x"], pull, [0.5, 1.0]), ValueError,
     r"`sigmas` must be non-increasing.*sigmas\[0\] = 0.5 then sigmas\[1\] = 1"),
    ("flow-sigma-nan", lambda k: gan2flow.flow(k["x"], pull, [1.0, np.nan]), ValueError, r"`sigmas` must be finite"),
    ("flow-sigma-2d", lambda k: gan2flow.flow(k["x"], pull, [[1.0, 0.5]]), ValueError, r"`sigmas` must have rank 1"),
    ("flow-step-scale-zero", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], step_scale=0), ValueError,
     r"`step_scale` must be a positive finite number, got 0"),
    ("flow-step-sizes-length", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], step_sizes=[0.1]), ValueError,
     r"`step_sizes` must have one entry per sigma level \(4\), got 1"),
    ("flow-step-sizes-negative", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], step_sizes=[0.1, -1, 0.1, 0.1]),
     ValueError, r"`step_sizes` must be >= 0"),
    ("flow-method", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], method="rk4"), ValueError,
     r"`method` must be one of \['euler', 'heun'\], got 'rk4'"),
    ("flow-on-divergence", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], on_divergence="ignore"), ValueError,
     r"`on_divergence` must be one of"),
    ("flow-steps-per-sigma", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], steps_per_sigma=0), ValueError,
     r"`steps_per_sigma` must be an integer >= 1, got 0"),
    ("flow-steps-per-sigma-float", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], steps_per_sigma=1.5),
     ValueError, r"`steps_per_sigma` must be an integer, got 1.5"),
    ("flow-noise-scale", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], noise_scale=-1), ValueError,
     r"`noise_scale` must be a non-negative finite number, got -1"),
    ("flow-seed", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], seed="zero"), ValueError,
     r"`seed` must be an integer or None, got 'zero'"),
    ("flow-batch-size", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], batch_size=0), ValueError,
     r"`batch_size` must be an integer >= 1, got 0"),
    ("flow-divergence-bound-nan", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], divergence_bound=np.nan),
     ValueError, r"`divergence_bound` must be a positive finite number, got nan"),
    ("flow-divergence-bound-text", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], divergence_bound="big"),
     ValueError, r"`divergence_bound` must be a positive number, got 'big'"),
    ("flow-callback", lambda k: gan2flow.flow(k["x"], pull, k["sigmas"], callback="print"), ValueError,
     r"`callback` must be callable"),
    ("flow-estimator-not-callable", lambda k: gan2flow.flow(k["x"], "kernel", k["sigmas"]), ValueError,
     r"`estimator` must be a callable \(x, sigma\) -> v, got str"),
    ("flow-estimator-column", lambda k: gan2flow.flow(k["x"], lambda x, s: x[:, :1], k["sigmas"]), ValueError,
     r"`estimator` must return v shaped like x: got shape \(8, 1\) for x of shape \(8, 2\)"),
    ("flow-estimator-float64", lambda k: gan2flow.flow(k["x"], lambda x, s: tf.cast(x, tf.float64), k["sigmas"]),
     ValueError, r"`estimator` must return float32 .*float64"),
    ("flow-estimator-list", lambda k: gan2flow.flow(k["x"], lambda x, s: [x, x], k["sigmas"]), ValueError,
     r"`estimator` must return one tensor v shaped like x, got a list of 2"),
    ("flow-estimator-none", lambda k: gan2flow.flow(k["x"], lambda x, s: None, k["sigmas"]), ValueError,
     r"`estimator` must return one tensor v shaped like x, got None"),
    ("flow-kernel-other-shape", lambda k: gan2flow.flow(np.zeros((3, 3), np.float32), k["kernel"], k["sigmas"]),
     ValueError, r"`x` must be a batch of samples of shape \(2,\).*got shape \(3, 3\)"),
]


test_bad_input_is_rejected_with_a_message_naming_it, test_bad_calls_table_has_unique_ids = bad_call_tests(BAD_CALLS)


@TRACED
@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3), levels=st.integers(0, 5),
       steps_per_sigma=st.integers(1, 2), batch_size=st.one_of(st.none(), st.integers(1, 3)))
def test_flow_keeps_shape_and_chunking_changes_nothing(shape, levels, steps_per_sigma, batch_size):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sigmas = schedules.geometric(1.0, 0.1, levels) if levels >= 2 else schedules.constant(1.0, levels) \
        if levels else tf.zeros([0])
    out = gan2flow.flow(x, pull, sigmas, steps_per_sigma=steps_per_sigma, batch_size=batch_size, jit_compile=False)
    assert out.shape == x.shape and out.dtype == tf.float32 and np.all(np.isfinite(out))
    if levels == 0:
        np.testing.assert_array_equal(out, x)  # the empty schedule is the identity
    if batch_size is not None:
        whole = gan2flow.flow(x, pull, sigmas, steps_per_sigma=steps_per_sigma, jit_compile=False)
        np.testing.assert_array_equal(out, whole)  # per-sample estimator: chunks give the same bits


# --------------------------------------------------------------------------------------------------
# Divergence: stop with the step and σ, or back off; never return non-finite samples


def _explodes_below(threshold):
    def estimator(x, sigma):
        return -x + tf.cast(sigma < threshold, tf.float32) * 1e30 * x
    return estimator


@pytest.mark.parametrize("steps_per_sigma, callback", [(1, None), (2, None), (1, lambda info: None)])
def test_divergence_names_the_step_and_sigma(kit, steps_per_sigma, callback):
    # geometric(1, 0.1, 5) = [1, 0.562, 0.316, 0.178, 0.1]: the first level below 0.25 is level 3.
    sigmas = schedules.geometric(1.0, 0.1, 5)
    with pytest.raises(gan2flow.FlowDivergenceError, match=r"flow diverged at step \d+ \(level 3, sigma=0.177") as info:
        gan2flow.flow(kit["x"], _explodes_below(0.25), sigmas, steps_per_sigma=steps_per_sigma, callback=callback)
    error = info.value
    assert (error.level, error.step) == (3, 3 * steps_per_sigma)
    assert error.sigma == pytest.approx(float(sigmas[3]))
    assert "on_divergence='backoff'" in str(error)


def test_backoff_halves_the_step_until_stable_and_returns_finite_samples(kit):
    # v = −100 x / σ²: an Euler step multiplies x by (1 − 100 ε) = −49 at ε = 0.5, which explodes; five
    # halvings (ε = 1/64: factor −0.56) make it contract, within the default 8 allowed.
    def stiff(x, sigma):
        return -100.0 * x / tf.square(sigma)

    sigmas = schedules.geometric(1.0, 0.1, 6)
    with pytest.raises(gan2flow.FlowDivergenceError):
        gan2flow.flow(kit["x"], stiff, sigmas, steps_per_sigma=4)
    out = gan2flow.flow(kit["x"], stiff, sigmas, steps_per_sigma=4, on_divergence="backoff")
    bound = 1e3 * (1 + np.max(np.abs(kit["x"])) + 10 * 1.0)  # flow's default divergence bound
    assert np.all(np.isfinite(out)) and np.max(np.abs(out)) <= bound


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_velocities_never_reach_the_caller(kit, poison):
    def poisoned(x, sigma):
        return x * poison

    for on_divergence in ("raise", "backoff"):
        with pytest.raises(gan2flow.FlowDivergenceError, match="non-finite or exploding"):
            gan2flow.flow(kit["x"], poisoned, kit["sigmas"], on_divergence=on_divergence, max_backoffs=2)
        with pytest.raises(gan2flow.FlowDivergenceError):
            gan2flow.trajectory(kit["x"], poisoned, kit["sigmas"], on_divergence=on_divergence, max_backoffs=2)


# --------------------------------------------------------------------------------------------------
# Reproducibility: same seed, same machine, same bits


def test_noisy_flows_repeat_bit_for_bit_with_a_seed(kit):
    sigmas = schedules.geometric(1.0, 0.1, 5)
    runs = [gan2flow.flow(kit["x"], kit["kernel"], sigmas, noise_scale=1.0, seed=seed) for seed in (7, 7, 8)]
    assert same_bits(runs[0], runs[1]) and not same_bits(runs[0], runs[2])
    # The noise is keyed by sample index, so chunks of a per-sample flow draw the same noise. Same bits
    # need the same batch_size too: the vectorised and scalar tails of log/cos/sqrt kernels can differ by an
    # ulp between chunk shapes (measured: 1 ulp on a few entries), hence the float32 tolerance here.
    whole, chunked = (gan2flow.flow(kit["x"], pull, sigmas, noise_scale=1.0, seed=7, batch_size=size,
                                    jit_compile=False) for size in (None, 3))
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    path = [gan2flow.trajectory(kit["x"], pull, sigmas, noise_scale=1.0, seed=3, jit_compile=False)
            for _ in range(2)]
    assert same_bits(*path) and same_bits(path[0][-1], gan2flow.flow(
        kit["x"], pull, sigmas, noise_scale=1.0, seed=3, jit_compile=False))


def test_progress_bar_segments_draw_the_noise_of_one_flow(kit):
    """verbose=True runs the schedule in segments; they keep the global step index of the noise, so the
    result is the uninterrupted flow's, bit for bit (same chunk shapes), with and without a trajectory."""
    sigmas = schedules.geometric(1.0, 0.1, 7)
    options = dict(noise_scale=1.0, seed=5, steps_per_sigma=2)
    whole = gan2flow.flow(kit["x"], pull, sigmas, jit_compile=False, **options)
    plan = flows.make_plan(kit["x"], pull, sigmas, **options)
    for record in (False, True):
        segmented, path = flows.run(plan, kit["x"], segments=3, progress="flow", record=record, jit_compile=False)[:2]
        assert same_bits(segmented, whole)
    assert same_bits(path, gan2flow.trajectory(kit["x"], pull, sigmas, jit_compile=False, **options))
    # A piece that starts later in the schedule draws that later noise: levels 0-2, then levels 3-6 (whose
    # plan starts at global step 6) is the whole flow again.
    first = flows.run(plan.levels(0, 3), kit["x"], jit_compile=False).x
    assert plan.levels(3).step_offset == 6
    rest = flows.run(plan.levels(3), first, jit_compile=False).x
    assert same_bits(rest, whole)
    # A callback sees every step once, numbered from the start of the whole flow, through the segments.
    seen = []
    with_callback = flows.run(plan, kit["x"], segments=3, progress="flow", callback=seen.append,
                              jit_compile=False).x
    assert [d["step"] for d in seen] == list(range(14))
    assert [d["level"] for d in seen] == list(np.repeat(np.arange(7), 2))
    np.testing.assert_allclose([d["sigma"] for d in seen], np.repeat(sigmas.numpy(), 2))
    np.testing.assert_allclose(with_callback, whole, rtol=1e-6, atol=1e-6)


def test_per_level_noise_factors_scale_each_levels_langevin_term():
    """noise_levels[k] multiplies level k's noise: with a zero field, levels (η 0.5, 0.125), two steps each and factors
    (1, 0) the samples end N(0, 2·0.5·s²·2) = N(0, 0.18) at s = 0.3 (the second level adds nothing); factors
    (0, 1.5): N(0, 2·0.125·(1.5s)²·2) = N(0, 0.10125). Pieces of the plan keep their levels' factors."""
    zero = lambda x, sigma: tf.zeros_like(x)  # noqa: E731
    x = np.zeros((20000, 2), np.float32)
    common = dict(step_sizes=[0.5, 0.125], steps_per_sigma=2, noise_scale=0.3, seed=11)
    for factors, variance in (((1.0, 0.0), 0.18), ((0.0, 1.5), 0.10125)):
        plan = flows.make_plan(x, zero, [1.0, 0.5], noise_levels=factors, **common)
        out = flows.run(plan, x, jit_compile=False).x.numpy()
        np.testing.assert_allclose(out.var(0), [variance] * 2, rtol=0.05)  # s.e. of a variance ≈ 1 %
        assert np.array_equal(plan.levels(1).noise_levels, [factors[1]])
    # the first level alone, factor 1: the same draws as the whole (1, 0) plan, whose second level adds none
    plan = flows.make_plan(x, zero, [1.0, 0.5], noise_levels=(1.0, 0.0), **common)
    whole = flows.run(plan, x, jit_compile=False).x
    np.testing.assert_allclose(flows.run(plan.levels(0, 1), x, jit_compile=False).x, whole, atol=1e-6)
    with pytest.raises(ValueError, match="noise_levels"):
        flows.make_plan(x, zero, [1.0, 0.5], noise_levels=(1.0,), **common)
    with pytest.raises(ValueError, match="noise_levels"):
        flows.make_plan(x, zero, [1.0, 0.5], noise_levels=(1.0, -1.0), **common)
