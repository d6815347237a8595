"""Score-difference estimators against closed forms (shared/SD_FLOW.md §3); bad input to each of them."""
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import gan2flow
from gan2flow import losses

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

    stages = [linear(1.0), linear(2.0), linear(3.0)]
    staged = gan2flow.estimators.StagedScoreDifference(
        stages[0], gan2flow.estimators.StagedScoreDifference.stack(stages), [1.0, 0.3, 0.1])
    x = np.ones((4, 2), np.float32)
    compiled = tf.function(lambda x, sigma: staged(x, sigma), jit_compile=True)
    for sigma, expected in ((2.0, 1.0), (0.6, 1.0), (0.5, 2.0), (0.2, 2.0), (0.15, 3.0), (0.01, 3.0)):
        np.testing.assert_allclose(staged(x, sigma)[:, 0], expected)
        np.testing.assert_allclose(staged(x, sigma)[:, 1], 0.0)
        np.testing.assert_allclose(compiled(x, tf.constant(sigma))[:, 0], expected)
        np.testing.assert_allclose(staged.log_ratio(x, sigma), expected)
    with pytest.raises(ValueError, match="one array per trainable variable"):
        gan2flow.estimators.StagedScoreDifference(stages[0], [], [1.0])
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 1\)"):
        gan2flow.estimators.StagedScoreDifference(stages[0], gan2flow.estimators.StagedScoreDifference.stack(stages),
                                                  [1.0, 0.5])
