"""Score-difference estimators against closed forms (shared/SD_FLOW.md §3); bad input to each of them."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from hypothesis import given
from hypothesis.extra import numpy as hnp

import gan2flow
from gan2flow import losses

from _helpers import (
    QUICK,
    any_float32,
    constant_discriminator,
    pull,
    three_input_discriminator,
    two_output_discriminator,
)

tfd = tfp.distributions


def _gaussian(mean, cov):
    return tfd.MultivariateNormalTriL(loc=np.float32(mean), scale_tril=np.linalg.cholesky(cov).astype(np.float32))


def test_analytic_gaussian_pair_is_the_exact_linear_field(rng):
    # v_σ(x) = −(Σp + σ²I)⁻¹(x − μp) + (Σq + σ²I)⁻¹(x − μq), full covariances.
    mean_p, mean_q = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    cov_p = np.array([[1.0, 0.3], [0.3, 0.5]])
    cov_q = np.array([[2.0, -0.4], [-0.4, 1.0]])
    estimator = gan2flow.AnalyticScoreDifference(_gaussian(mean_p, cov_p), _gaussian(mean_q, cov_q))
    x = rng.normal(size=(64, 2)).astype(np.float32)
    sigma = 0.7
    eye = np.eye(2) * sigma**2
    exact = -(x - mean_p) @ np.linalg.inv(cov_p + eye) + (x - mean_q) @ np.linalg.inv(cov_q + eye)
    # float32 Cholesky + autodiff on O(1) values: ~1e-5 relative.
    np.testing.assert_allclose(estimator(x, sigma), exact, rtol=1e-4, atol=1e-4)


def test_analytic_diag_and_independent_normal_agree(rng):
    diag = tfd.MultivariateNormalDiag([1.0, 2.0], [0.5, 2.0])
    independent = tfd.Independent(tfd.Normal([1.0, 2.0], [0.5, 2.0]), 1)
    flat = tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0])
    x = rng.normal(size=(16, 2)).astype(np.float32)
    a = gan2flow.AnalyticScoreDifference(diag, flat)(x, 0.3)
    b = gan2flow.AnalyticScoreDifference(independent, flat)(x, 0.3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _mixture_score(x, means, std, weights, sigma):
    """NumPy score of an isotropic Gaussian mixture smoothed by σ: Σ_k r_k(x)(μ_k − x)/s²."""
    variance = std**2 + sigma**2
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    logits = np.log(weights)[None] - sq / (2 * variance)
    resp = np.exp(logits - logits.max(1, keepdims=True))
    resp /= resp.sum(1, keepdims=True)
    return (resp[:, :, None] * (means[None] - x[:, None, :])).sum(1) / variance


def test_analytic_mixture_score_matches_numpy(rng):
    means = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]])
    weights = np.array([0.5, 0.3, 0.2])
    mixture = tfd.MixtureSameFamily(
        tfd.Categorical(probs=np.float32(weights)),
        tfd.MultivariateNormalDiag(np.float32(means), np.full((3, 2), 0.4, np.float32)),
    )
    estimator = gan2flow.AnalyticScoreDifference(mixture, None)
    x = rng.normal(size=(50, 2)).astype(np.float32) * 2
    np.testing.assert_allclose(estimator(x, 0.5), _mixture_score(x.astype(np.float64), means, 0.4, weights, 0.5),
                               rtol=1e-4, atol=1e-4)


def test_analytic_rejects_unsupported_distributions():
    with pytest.raises(ValueError, match="target"):
        gan2flow.AnalyticScoreDifference(tfd.Exponential(1.0), None)
    with pytest.raises(ValueError, match="source"):
        gan2flow.AnalyticScoreDifference(tfd.MultivariateNormalDiag([0.0], [1.0]), "gaussian")
    with pytest.raises(ValueError, match="event shape"):
        gan2flow.AnalyticScoreDifference(tfd.MultivariateNormalDiag([0.0], [1.0]),
                                         tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0]))


def test_kernel_blocked_equals_unblocked(rng):
    target = rng.normal(size=(300, 3)).astype(np.float32) * 2 + 1
    source = rng.normal(size=(200, 3)).astype(np.float32)
    x = rng.normal(size=(77, 3)).astype(np.float32)
    for src in (source, None):
        whole = gan2flow.KernelScoreDifference(target, src)(x, 0.4)
        blocked = gan2flow.KernelScoreDifference(target, src, block_size=16)(x, 0.4)  # 77 = 4·16 + 13
        # Same arithmetic per row, different grouping: float32 rounding only.
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)


def test_kernel_matches_direct_numpy_mean_shift(rng):
    target = rng.normal(size=(40, 2)) * 1.5
    x = rng.normal(size=(10, 2))
    sigma = 0.8

    def mean_shift(points, samples):
        logw = -((points[:, None] - samples[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = np.exp(logw - logw.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return w @ samples

    expected = (mean_shift(x, target) - mean_shift(x, x)) / sigma**2
    got = gan2flow.KernelScoreDifference(np.float32(target))(np.float32(x), sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_kernel_converges_to_analytic_smoothed_sd():
    # p = N((1, 0), 0.5² I), q = N(0, I): the KDE with bandwidth σ of M samples estimates p_σ with a
    # Monte Carlo error O(M^{-1/2}). Going from M = 500 to M = 32 000 (64×) should cut the error ~8×; we
    # require ≥ 4× (2× slack for the finite-sample constant). Errors are measured where both densities
    # have mass (x ~ N((0.5, 0), 0.5² I)); in the far tails the effective sample size is tiny.
    p = tfd.MultivariateNormalDiag([1.0, 0.0], [0.5, 0.5])
    q = tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0])
    sigma = 0.5
    x = tfd.MultivariateNormalDiag([0.5, 0.0], [0.5, 0.5]).sample(400, seed=1)
    exact = gan2flow.AnalyticScoreDifference(p, q)(x, sigma).numpy()
    errors = []
    for m in (500, 32_000):
        estimator = gan2flow.KernelScoreDifference(p.sample(m, seed=2), q.sample(m, seed=3), block_size=200)
        estimate = estimator(x, sigma).numpy()
        errors.append(np.sqrt(((estimate - exact) ** 2).sum(1).mean() / (exact**2).sum(1).mean()))
    assert errors[1] < errors[0] / 4, errors


def test_kernel_rejects_bad_samples():
    with pytest.raises(ValueError, match="target"):
        gan2flow.KernelScoreDifference(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="target"):
        gan2flow.KernelScoreDifference(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="same shape"):
        gan2flow.KernelScoreDifference(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="block_size"):
        gan2flow.KernelScoreDifference(np.zeros((3, 2)), block_size=0)


def _linear_discriminator(weights, bias, sigma_conditioned):
    x = keras.Input((len(weights),))
    if sigma_conditioned:
        s = keras.Input((1,))
        h = keras.layers.Concatenate()([x, s])
        kernel = np.concatenate([weights, [2.0]])[:, None]
    else:
        h, kernel = x, np.asarray(weights)[:, None]
    dense = keras.layers.Dense(1)
    out = dense(h)
    dense.set_weights([kernel.astype(np.float32), np.float32([bias])])
    return keras.Model([x, s] if sigma_conditioned else x, out)


@pytest.mark.parametrize("sigma_conditioned", [False, True])
def test_discriminator_gradient_of_linear_logit_is_its_weight(sigma_conditioned, rng):
    weights = np.array([0.5, -1.5, 2.0])
    model = _linear_discriminator(weights, 0.3, sigma_conditioned)
    estimator = gan2flow.DiscriminatorScoreDifference(model, loss="logistic")
    assert estimator.sigma_conditioned == sigma_conditioned
    x = rng.normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_allclose(estimator(x, 0.2), np.tile(weights, (8, 1)), rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in losses.names() if losses.get(n).sd_consistent])
def test_optimal_discriminator_of_every_consistent_loss_gives_the_exact_sd(name, rng):
    # T*(x, σ) = optimal_output(log p_σ/q_σ); through the link its gradient must be the exact SD.
    p = tfd.MultivariateNormalDiag([1.0, -1.0], [0.6, 0.8])
    q = tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0])
    exact = gan2flow.AnalyticScoreDifference(p, q)
    loss = losses.get(name)

    def optimal(inputs, training=False):
        x, sigma = inputs
        return loss.optimal_output(exact.log_ratio(x, sigma[0, 0]))[:, None]

    estimator = gan2flow.DiscriminatorScoreDifference(optimal, loss=name, sigma_conditioned=True)
    x = rng.normal(size=(32, 2)).astype(np.float32) * 0.7  # keep |log r| moderate for float32 links
    np.testing.assert_allclose(estimator(x, 0.4), exact(x, 0.4), rtol=2e-3, atol=2e-3)


def test_discriminator_rejects_linkless_loss_and_bad_outputs(rng):
    model = _linear_discriminator([1.0, 1.0], 0.0, False)
    with pytest.raises(ValueError, match="hinge"):
        gan2flow.DiscriminatorScoreDifference(model, loss="hinge")
    raw = gan2flow.DiscriminatorScoreDifference(model, loss=None)
    np.testing.assert_allclose(raw(np.ones((2, 2), np.float32), 0.1), np.ones((2, 2)))
    two = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one raw output per sample"):
        gan2flow.DiscriminatorScoreDifference(two)(np.ones((2, 2), np.float32), 0.1)
    with pytest.raises(ValueError, match="sigma_conditioned"):
        gan2flow.DiscriminatorScoreDifference(lambda x, training=False: x[:, :1])


def test_denoiser_route_matches_the_smoothed_gaussian_score(rng):
    # Target N(μ, s²I): D_p(x, σ) = (s²x + σ²μ)/(s² + σ²); (D_p − x)/σ² = −(x − μ)/(s² + σ²).
    mu, s = np.float32([2.0, -1.0]), 0.5
    denoiser = lambda x, sigma: (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)  # noqa: E731
    x = rng.normal(size=(16, 2)).astype(np.float32)
    analytic = gan2flow.AnalyticScoreDifference(tfd.MultivariateNormalDiag(mu, [s, s]), None)
    np.testing.assert_allclose(gan2flow.DenoiserScoreDifference(denoiser)(x, 0.3), analytic(x, 0.3),
                               rtol=1e-4, atol=1e-4)


def test_drift_correction_telescopes_exactly(rng):
    # [∇log p − ∇log q0] + [∇log q0 − ∇log qt] = ∇log p − ∇log qt, with kernel terms on both sides.
    target = rng.normal(size=(100, 2)).astype(np.float32) + 2
    initial = rng.normal(size=(80, 2)).astype(np.float32)
    x = rng.normal(size=(60, 2)).astype(np.float32) * 0.5
    base = gan2flow.KernelScoreDifference(target, initial)
    corrected = gan2flow.drift_corrected(base, initial)
    direct = gan2flow.KernelScoreDifference(target, None)
    np.testing.assert_allclose(corrected(x, 0.5), direct(x, 0.5), rtol=1e-4, atol=1e-4)


def test_staged_score_difference_uses_the_stage_nearest_sigma_eagerly_and_under_xla():
    """Stage k's discriminator T_k(x) = c_k · x₀ (a linear logit) has gradient (c_k, 0): at σ the field must be
    the gradient of the stage whose σ_k is nearest in log scale (the switch between 1 and 0.3 is at their
    geometric mean 0.548), the same eagerly and inside one XLA program."""
    def linear(c):
        x = keras.Input((2,))
        sigma = keras.Input((1,))
        dense = keras.layers.Dense(1, use_bias=False)
        out = dense(x) + 0.0 * sigma
        dense.set_weights([np.array([[c], [0.0]], np.float32)])
        return keras.Model([x, sigma], out)

    staged = gan2flow.estimators.StagedScoreDifference([linear(1.0), linear(2.0), linear(3.0)], [1.0, 0.3, 0.1])
    x = np.ones((4, 2), np.float32)
    compiled = tf.function(lambda x, sigma: staged(x, sigma), jit_compile=True)
    for sigma, expected in ((2.0, 1.0), (0.6, 1.0), (0.5, 2.0), (0.2, 2.0), (0.15, 3.0), (0.01, 3.0)):
        np.testing.assert_allclose(staged(x, sigma)[:, 0], expected)
        np.testing.assert_allclose(compiled(x, tf.constant(sigma))[:, 0], expected)
        np.testing.assert_allclose(staged.log_ratio(x, sigma), expected)
    with pytest.raises(ValueError, match="one positive σ per discriminator"):
        gan2flow.estimators.StagedScoreDifference([linear(1.0)], [1.0, 0.5])
def test_drift_correction_recovers_the_sd_of_the_current_particles():
    # §7: a field fitted against q₀ = N(0, I) (here the exact one) flows particles that are now
    # q_t = N((0.8, −0.4), 0.6²I). drift_corrected adds a kernel estimate of ∇log q₀,σ − ∇log q_t,σ from
    # samples of q₀ and the particles themselves, so it must give the exact SD against the *current*
    # Gaussian, ∇log p_σ − ∇log q_t,σ, while the uncorrected field is off by the drift.
    # Relative L2 error at the particles: KDE Monte Carlo error O(n^{-1/2}); measured over seeds 0-2 with
    # n = 2000: 0.02-0.06 corrected (bound 0.12, twice the worst), 0.39-0.49 uncorrected (required > 0.35).
    p = tfd.MultivariateNormalDiag([2.0, 0.0], [0.5, 0.5])
    q0 = tfd.MultivariateNormalDiag([0.0, 0.0], [1.0, 1.0])
    mean_t, std_t = np.array([0.8, -0.4]), 0.6
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(2000, 2)).astype(np.float32)
    particles = (rng.normal(size=(2000, 2)) * std_t + mean_t).astype(np.float32)
    fixed = gan2flow.AnalyticScoreDifference(p, q0)
    corrected = gan2flow.drift_corrected(fixed, initial)
    current = gan2flow.AnalyticScoreDifference(p, tfd.MultivariateNormalDiag(np.float32(mean_t), [std_t, std_t]))

    def relative_error(estimate, exact):
        return np.sqrt(((estimate - exact) ** 2).sum(1).mean() / (exact**2).sum(1).mean())

    for sigma in (0.5, 1.0):
        exact = current(particles, sigma).numpy()
        assert relative_error(corrected(particles, sigma).numpy(), exact) < 0.12, sigma
        assert relative_error(fixed(particles, sigma).numpy(), exact) > 0.35, sigma


# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad input to every estimator.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("kernel-target-nan", lambda k: gan2flow.KernelScoreDifference(np.full((4, 2), np.nan)), ValueError,
     r"`target` must be finite, found 8 NaN/Inf"),
    ("kernel-target-empty", lambda k: gan2flow.KernelScoreDifference(np.zeros((0, 2))), ValueError,
     r"`target` must hold at least one sample, got shape \(0, 2\)"),
    ("kernel-target-rank-1", lambda k: gan2flow.KernelScoreDifference(np.zeros(5)), ValueError,
     r"`target` must have rank >= 2"),
    ("kernel-source-shape", lambda k: gan2flow.KernelScoreDifference(k["x"], source=np.zeros((4, 3))), ValueError,
     r"`target` and `source` must have the same shape after the batch axis, got \(8, 2\) and \(4, 3\)"),
    ("kernel-block-size", lambda k: gan2flow.KernelScoreDifference(k["x"], block_size=0), ValueError,
     r"`block_size` must be an integer >= 1, got 0"),
    ("kernel-assign-other-shape", lambda k: gan2flow.KernelScoreDifference(k["x"]).assign_target(k["x"][:4]),
     ValueError, r"`target` must keep the shape \(8, 2\).*got \(4, 2\)"),
    ("discriminator-not-callable", lambda k: gan2flow.DiscriminatorScoreDifference("D.keras"), ValueError,
     r"`discriminator` must be a Keras model or callable, got str"),
    ("discriminator-linkless-loss", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"], loss="hinge"),
     ValueError, r"`loss`='hinge' has no link"),
    ("discriminator-unknown-loss", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"], loss="bce"),
     ValueError, r"`loss` must be one of \[.*'logistic'.*\], got 'bce'"),
    ("discriminator-said-conditioned", lambda k: gan2flow.DiscriminatorScoreDifference(
        k["plain"], sigma_conditioned=True), ValueError,
     r"`sigma_conditioned`=True contradicts the discriminator, which takes x only \(1 input\)"),
    ("discriminator-said-unconditioned", lambda k: gan2flow.DiscriminatorScoreDifference(
        k["conditioned"], sigma_conditioned=False), ValueError,
     r"`sigma_conditioned`=False contradicts the discriminator, which takes \[x, sigma\] \(2 inputs\)"),
    ("discriminator-three-inputs", lambda k: gan2flow.DiscriminatorScoreDifference(three_input_discriminator()),
     ValueError, r"`discriminator` must take x or \[x, sigma\], got a model with 3 inputs"),
    ("discriminator-no-inputs", lambda k: gan2flow.DiscriminatorScoreDifference(lambda x, training=False: x),
     ValueError, r"`sigma_conditioned` must be given"),
    ("discriminator-two-outputs", lambda k: gan2flow.DiscriminatorScoreDifference(two_output_discriminator())(
        k["x"], 0.5), ValueError, r"`discriminator` must return a single output .*got 2 outputs"),
    ("discriminator-wide-output", lambda k: gan2flow.DiscriminatorScoreDifference(
        keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))(k["x"], 0.5), ValueError,
     r"`discriminator` must return one raw output per sample, shape \[batch, 1\] or \[batch\]; got shape \(8, 3\)"),
    ("discriminator-zero-gradient", lambda k: gan2flow.DiscriminatorScoreDifference(constant_discriminator())(
        k["x"], 0.5), ValueError, r"`discriminator` output does not depend on its input x: its gradient is exactly "
     r"zero at all 8 samples"),
    ("discriminator-zero-gradient-in-flow", lambda k: gan2flow.flow(
        k["x"], gan2flow.DiscriminatorScoreDifference(constant_discriminator()), k["sigmas"]), ValueError,
     r"`discriminator` output does not depend on its input x"),
    ("discriminator-no-gradient-path", lambda k: gan2flow.DiscriminatorScoreDifference(
        lambda x, training=False: tf.ones([tf.shape(x)[0], 1]), sigma_conditioned=False)(k["x"], 0.5), ValueError,
     r"`discriminator` output does not depend on its input x \(no gradient path\)"),
    ("discriminator-x-shape", lambda k: gan2flow.DiscriminatorScoreDifference(k["plain"])(
        np.zeros((4, 3), np.float32), 0.5), ValueError,
     r"`x` must be a batch of samples of shape \(2,\) for this discriminator, got shape \(4, 3\)"),
    ("analytic-x-shape", lambda k: gan2flow.AnalyticScoreDifference(k["gaussian"], None)(np.zeros((4, 3)), 0.5),
     ValueError, r"`x` must have shape \[batch, 2\], got \(4, 3\)"),
    ("analytic-distribution", lambda k: gan2flow.AnalyticScoreDifference(tfd.Laplace(0.0, 1.0), None), ValueError,
     r"`target` must be a Gaussian or Gaussian mixture"),
    ("sum-empty", lambda k: gan2flow.ScoreDifferenceSum(), ValueError, r"`estimators` must name at least one"),
    ("sum-not-callable", lambda k: gan2flow.ScoreDifferenceSum(pull, 3), ValueError,
     r"`estimators\[1\]` must be callable"),
    ("denoiser-none", lambda k: gan2flow.DenoiserScoreDifference(None), ValueError,
     r"`target_denoiser` must be a callable"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in BAD_CALLS], ids=[row[0] for row in BAD_CALLS])
def test_bad_input_is_rejected_with_a_message_naming_it(kit, call, error, message):
    with pytest.raises(error, match=message):
        call(kit)


def test_bad_calls_table_has_unique_ids():
    ids = [row[0] for row in BAD_CALLS]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------------
# Property-based (hypothesis, derandomised so CI runs are repeatable)


@QUICK
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4), elements=any_float32))
def test_sample_sets_are_accepted_exactly_when_finite_nonempty_batches(array):
    good = array.ndim >= 2 and array.size > 0 and np.all(np.isfinite(array))
    if good:
        estimator = gan2flow.KernelScoreDifference(array)
        assert estimator.event_shape == array.shape[1:]
    else:
        with pytest.raises(ValueError, match="`target` must"):
            gan2flow.KernelScoreDifference(array)
