"""Contract suite for gan2flow.losses: every loss through the same checks.

Expected values are written here from independent NumPy (float64) formulas, mostly the textbook
forms (Nowozin et al. 2016, Table 2: f* and g_f), never by calling the module. Unless a test says
otherwise, float32 results are compared with rtol=1e-5, atol=1e-6: a handful of float32 operations
(unit roundoff 6e-8) on O(1) values accumulate well under 1e-6 relative error.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from gan2flow import losses

RTOL, ATOL = 1e-5, 1e-6

ALL = losses.names()
CONSISTENT = [name for name in ALL if losses.get(name).sd_consistent]
NO_LINK = ["hinge", "wasserstein"]
F_GANS = ["kl", "reverse_kl", "jensen_shannon", "hellinger", "pearson"]

# Small fixed inputs: different batch sizes, real as [batch, 1] and fake as [batch].
REAL = np.array([[0.5], [-1.2], [2.0]], dtype=np.float32)
FAKE = np.array([-0.3, 0.8, -2.5, 0.1], dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Independent NumPy references (float64).
# ------------------------------------------------------------------------------------------------
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# f-GAN output activations g_f and conjugates f* exactly as printed in Nowozin et al., Table 2.
F_GAN_ACTIVATION = {
    "kl": lambda v: v,
    "reverse_kl": lambda v: -np.exp(-v),
    "jensen_shannon": lambda v: np.log(2.0) - np.log(1.0 + np.exp(-v)),
    "hellinger": lambda v: 1.0 - np.exp(-v),
    "pearson": lambda v: v,
}
F_GAN_CONJUGATE = {
    "kl": lambda t: np.exp(t - 1.0),
    "reverse_kl": lambda t: -1.0 - np.log(-t),
    "jensen_shannon": lambda t: -np.log(2.0 - np.exp(t)),
    "hellinger": lambda t: t / (1.0 - t),
    "pearson": lambda t: 0.25 * t**2 + t,
}
# The generators f of the divergences (Nowozin et al., Table 1).
F_GAN_F = {
    "kl": lambda u: u * np.log(u),
    "reverse_kl": lambda u: -np.log(u),
    "jensen_shannon": lambda u: u * np.log(u) - (u + 1.0) * np.log((u + 1.0) / 2.0),
    "hellinger": lambda u: (np.sqrt(u) - 1.0) ** 2,
    "pearson": lambda u: (u - 1.0) ** 2,
}


def _expected_discriminator_loss(name, real, fake):
    real = np.asarray(real, np.float64).reshape(-1)
    fake = np.asarray(fake, np.float64).reshape(-1)
    if name == "logistic":  # binary cross-entropy with D = sigmoid(logit)
        return -np.mean(np.log(_sigmoid(real))) - np.mean(np.log(1.0 - _sigmoid(fake)))
    if name == "least_squares":
        return np.mean((real - 1.0) ** 2) + np.mean(fake**2)
    if name == "hinge":
        return np.mean(np.maximum(0.0, 1.0 - real)) + np.mean(np.maximum(0.0, 1.0 + fake))
    if name == "wasserstein":
        return np.mean(fake) - np.mean(real)
    g, f_star = F_GAN_ACTIVATION[name], F_GAN_CONJUGATE[name]
    return -(np.mean(g(real)) - np.mean(f_star(g(fake))))


# The optimal T* column of SD_FLOW.md §4, as a function of r = p/q.
TABLE_T_STAR = {
    "logistic": lambda r: np.log(r),
    "least_squares": lambda r: r / (1.0 + r),
    "kl": lambda r: 1.0 + np.log(r),
    "reverse_kl": lambda r: -1.0 / r,
    "jensen_shannon": lambda r: np.log(2.0 * r / (1.0 + r)),
    "hellinger": lambda r: 1.0 - r ** (-0.5),
    "pearson": lambda r: 2.0 * (r - 1.0),
}

# d link / d(raw output), analytic.
LINK_DERIVATIVE = {
    "logistic": lambda v: np.ones_like(v),
    "least_squares": lambda t: 1.0 / (t * (1.0 - t)),
    "kl": lambda v: np.ones_like(v),
    "reverse_kl": lambda v: np.ones_like(v),
    "jensen_shannon": lambda v: np.ones_like(v),
    "hellinger": lambda v: 2.0 * np.ones_like(v),
    "pearson": lambda v: 1.0 / (2.0 + v),
}
# Raw outputs inside each link's domain.
LINK_DOMAIN = {
    "least_squares": np.linspace(0.1, 0.9, 9),
    "pearson": np.linspace(-1.5, 3.0, 10),
}


def _gaussian_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def _pointwise_objective(loss, p, q, outputs):
    """p·real_term(v) + q·fake_term(v) elementwise (float64), and a float32 rounding bound."""
    real_terms, fake_terms = loss.per_sample_discriminator_loss(outputs, outputs)
    real_terms = real_terms.numpy().astype(np.float64)
    fake_terms = fake_terms.numpy().astype(np.float64)
    # Each term is a few float32 ops from its input: relative error ≤ ~4 units of 2^-24, plus the
    # input's own rounding amplified by the term's slope, bounded generously by 1e-6 absolute.
    bound = 4 * 2.0**-24 * (p * np.abs(real_terms) + q * np.abs(fake_terms)) + 1e-6 * (p + q)
    return p * real_terms + q * fake_terms, bound


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
# The rows of the link table of shared/SD_FLOW.md §4, written out here in its order: (registry name, the
# table's "SD-consistent" column). Written by hand from the table, not from the module.
LINK_TABLE = [
    ("logistic", True),        # logistic / minimax / non-saturating (BCE on logits)
    ("least_squares", True),   # least squares, targets 0 fake / 1 real
    ("kl", True),              # f-GAN KL
    ("reverse_kl", True),      # f-GAN reverse KL
    ("jensen_shannon", True),  # f-GAN Jensen–Shannon
    ("hellinger", True),       # f-GAN squared Hellinger
    ("pearson", True),         # f-GAN Pearson χ²
    ("hinge", False),          # saturated sign(p − q): no link
    ("wasserstein", False),    # a Kantorovich potential: no link
]


def test_names_are_the_rows_of_the_link_table():
    assert losses.names() == [name for name, _ in LINK_TABLE]
    assert {name: losses.get(name).sd_consistent for name in losses.names()} == dict(LINK_TABLE)
    # names() hands out a new list: a caller that edits it cannot change the registry.
    edited = losses.names()
    edited.append("mine")
    edited.remove("logistic")
    assert losses.names() == [name for name, _ in LINK_TABLE]


@pytest.mark.parametrize("name", ALL)
def test_get_returns_loss_and_accepts_loss(name):
    loss = losses.get(name)
    assert isinstance(loss, losses.Loss)
    assert loss.name == name
    assert isinstance(loss.sd_consistent, bool)
    assert isinstance(loss.description, str) and "\n" not in loss.description
    assert losses.get(loss) is loss


def test_get_unknown_name_lists_valid_choices():
    with pytest.raises(ValueError, match="logistic") as info:
        losses.get("nope")
    for name in ALL:
        assert name in str(info.value)
    with pytest.raises(TypeError):
        losses.get(3)


# ------------------------------------------------------------------------------------------------
# Discriminator losses
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_discriminator_loss_matches_numpy(name):
    loss = losses.get(name)
    value = loss.discriminator_loss(REAL, FAKE)
    assert value.shape == () and value.dtype == tf.float32
    np.testing.assert_allclose(
        value.numpy(), _expected_discriminator_loss(name, REAL, FAKE), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("name", ALL)
def test_per_sample_terms_average_to_loss(name):
    loss = losses.get(name)
    real_terms, fake_terms = loss.per_sample_discriminator_loss(REAL, FAKE)
    assert real_terms.shape == (3,) and fake_terms.shape == (4,)
    np.testing.assert_allclose(
        np.mean(real_terms.numpy()) + np.mean(fake_terms.numpy()),
        loss.discriminator_loss(REAL, FAKE).numpy(),
        rtol=RTOL, atol=ATOL,
    )


@pytest.mark.parametrize("name", F_GANS)
def test_fgan_fake_term_is_legendre_conjugate_of_f(name):
    # f*(t) = sup_u (u t − f(u)), taken numerically on a dense u grid (float64); the grid maximiser
    # u* = r = f'^{-1}(t) lies in [0.1, 11] for v in [−1, 1.2], and grid spacing 4e-5 makes the
    # discretisation error ~ f''·Δu² ≲ 1e-8.
    loss = losses.get(name)
    v = np.linspace(-1.0, 1.2, 7)
    u = np.linspace(1e-6, 15.0, 400_001)
    t = F_GAN_ACTIVATION[name](v)
    numeric_conjugate = np.array([np.max(u * t_i - F_GAN_F[name](u)) for t_i in t])
    _, fake_terms = loss.per_sample_discriminator_loss(v, v)
    np.testing.assert_allclose(fake_terms.numpy(), numeric_conjugate, rtol=RTOL, atol=1e-5)
    np.testing.assert_allclose(loss.output_activation(v).numpy(), t, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ALL)
def test_rejects_bad_output_shapes(name):
    loss = losses.get(name)
    with pytest.raises(ValueError, match="real_output"):
        loss.discriminator_loss(np.zeros((3, 2), np.float32), FAKE)
    with pytest.raises(ValueError, match="fake_output"):
        loss.discriminator_loss(REAL, np.float32(1.0))
    with pytest.raises(ValueError, match="finite"):
        loss.discriminator_loss(REAL, np.array([np.nan], np.float32))


# ------------------------------------------------------------------------------------------------
# Links and optima
# ------------------------------------------------------------------------------------------------
# Round-trip range and tolerance per loss. The exact links (identity, v − 1, 2v) are good to a few
# ulps of |l| ≤ 7: atol 1e-6. Least squares stores T = sigmoid(l), whose rounding near 1 (half-ulp
# 3e-8) is amplified by d link/dT = 1/(T(1 − T)) ≈ e^|l|: at |l| = 6 that is 1.2e-5, so the test uses
# |l| ≤ 4 (bound 1.7e-6) with atol 1e-5. Pearson stores v/2 = expm1(l) near −1 for l → −6, amplified
# by 1/(1 + v/2) = e^−l: bound 3e-8·e^6 = 1.2e-5, so atol 5e-5 over the full range.
ROUND_TRIP = {"least_squares": (4.0, 1e-5), "pearson": (6.0, 5e-5)}


@pytest.mark.parametrize("name", CONSISTENT)
def test_log_ratio_inverts_optimal_output(name):
    loss = losses.get(name)
    limit, atol = ROUND_TRIP.get(name, (6.0, 1e-6))
    log_r = np.linspace(-limit, limit, 241).astype(np.float32)
    optimum = loss.optimal_output(log_r)
    assert optimum.shape == log_r.shape
    np.testing.assert_allclose(loss.log_ratio(optimum).numpy(), log_r, rtol=0, atol=atol)


@pytest.mark.parametrize("name", CONSISTENT)
def test_optimum_matches_table_t_star(name):
    # The T* column of SD_FLOW.md §4: output_activation(optimal_output(log r)) == T*(r).
    loss = losses.get(name)
    log_r = np.linspace(-3.0, 3.0, 25)
    t_star = loss.output_activation(loss.optimal_output(log_r.astype(np.float32)))
    np.testing.assert_allclose(t_star.numpy(), TABLE_T_STAR[name](np.exp(log_r)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", F_GANS)
def test_fgan_optimum_is_f_prime_of_ratio(name):
    # f-GAN theory: the optimal T is f'(r). Central difference in float64, step 1e-5: error ~1e-10.
    loss = losses.get(name)
    r = np.exp(np.linspace(-2.0, 2.0, 9))
    step = 1e-5
    f_prime = (F_GAN_F[name](r + step) - F_GAN_F[name](r - step)) / (2 * step)
    t_star = loss.output_activation(loss.optimal_output(np.log(r).astype(np.float32)))
    np.testing.assert_allclose(t_star.numpy(), f_prime, rtol=1e-5, atol=1e-5)


# Two 1-D densities on a grid: p = N(0, 1), q = N(1, 1.5²); log p/q ranges over about [−5.6, 0.7].
GRID = np.linspace(-4.0, 4.0, 81)
P = _gaussian_pdf(GRID, 0.0, 1.0)
Q = _gaussian_pdf(GRID, 1.0, 1.5)
LOG_RATIO = np.log(P) - np.log(Q)


@pytest.mark.parametrize("name", CONSISTENT + ["hinge"])
def test_closed_form_optimum_minimises_population_loss(name):
    loss = losses.get(name)
    optimum = loss.optimal_output(LOG_RATIO.astype(np.float32)).numpy()
    at_optimum, bound = _pointwise_objective(loss, P, Q, optimum)
    for delta in (-0.5, -0.05, 0.05, 0.5):
        perturbed, perturbed_bound = _pointwise_objective(loss, P, Q, optimum + np.float32(delta))
        # float32 rounding of both sides is the only allowed slack.
        assert np.all(at_optimum <= perturbed + bound + perturbed_bound), (name, delta)


@pytest.mark.parametrize("name", CONSISTENT)
def test_numerical_minimiser_recovers_optimum(name):
    # Brute-force minimisation over a scalar output grid of spacing 0.01 around the closed form.
    # Near the minimum the objective changes by ~½·h·0.01² ≳ 1e-6 per step (h the curvature), far
    # above float32 rounding (~1e-7), so the grid argmin is within one step of the true optimum.
    loss = losses.get(name)
    step = 0.01
    for index in (20, 40, 45, 60):  # x = −2, 0, 0.5, 2
        optimum = float(loss.optimal_output(np.float32(LOG_RATIO[index])).numpy())
        candidates = (optimum + step * np.arange(-200, 201) + 0.003).astype(np.float32)
        values, _ = _pointwise_objective(loss, P[index], Q[index], candidates)
        best = float(candidates[np.argmin(values)])
        assert abs(best - optimum) <= step, (name, GRID[index], best, optimum)


@pytest.mark.parametrize("name", NO_LINK)
def test_losses_without_link(name):
    loss = losses.get(name)
    assert loss.sd_consistent is False
    with pytest.raises(ValueError, match=f"{name} loss has no link") as info:
        loss.log_ratio(np.zeros(3, np.float32))
    assert "raw_output" in str(info.value)
    if name == "hinge":
        assert "sign(p - q)" in str(info.value)
        np.testing.assert_array_equal(
            loss.optimal_output(np.array([-2.0, 0.0, 0.5], np.float32)).numpy(), [-1.0, 0.0, 1.0]
        )
    else:
        with pytest.raises(ValueError, match="Kantorovich"):
            loss.optimal_output(np.zeros(3, np.float32))


# ------------------------------------------------------------------------------------------------
# Generator losses
# ------------------------------------------------------------------------------------------------
def test_logistic_generator_objectives_hand_values():
    loss = losses.get("logistic")
    logits = np.array([[-2.0], [0.0], [3.0]], np.float32)
    t = logits.reshape(-1).astype(np.float64)
    d = _sigmoid(t)
    expected = {
        "minimax": np.log(1.0 - d),  # minimise log(1 − D) = −softplus(T)
        "non_saturating": -np.log(d),  # minimise −log D = softplus(−T)
        "logit": -t,  # minimise −log r = −T
    }
    for objective, value in expected.items():
        got = loss.generator_loss(logits, objective=objective)
        assert got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), value, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(loss.generator_loss(logits).numpy(), expected["non_saturating"],
                               rtol=RTOL, atol=ATOL)


NON_SATURATING = {
    "logistic": lambda v: -np.log(_sigmoid(v)),
    "least_squares": lambda v: (v - 1.0) ** 2,
    "hinge": lambda v: -v,
    "wasserstein": lambda v: -v,
    **{name: (lambda g: lambda v: -g(v))(F_GAN_ACTIVATION[name]) for name in F_GANS},
}


@pytest.mark.parametrize("name", ALL)
def test_generator_objectives(name):
    loss = losses.get(name)
    v = np.array([-0.7, 0.2, 0.6, 1.4], np.float32)
    _, fake_terms = loss.per_sample_discriminator_loss(v, v)
    np.testing.assert_allclose(
        loss.generator_loss(v, objective="minimax").numpy(), -fake_terms.numpy(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        loss.generator_loss(v, objective="non_saturating").numpy(),
        NON_SATURATING[name](v.astype(np.float64)), rtol=RTOL, atol=ATOL,
    )
    expected_logit = -loss.log_ratio(v).numpy() if loss.sd_consistent else -v
    np.testing.assert_allclose(
        loss.generator_loss(v, objective="logit").numpy(), expected_logit, rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match="objective"):
        loss.generator_loss(v, objective="wgan")


@pytest.mark.parametrize("name", CONSISTENT)
def test_logit_objective_gradient_is_minus_link_derivative(name):
    loss = losses.get(name)
    v = LINK_DOMAIN.get(name, np.linspace(-3.0, 3.0, 13)).astype(np.float32)
    v_tensor = tf.constant(v)
    with tf.GradientTape() as tape:
        tape.watch(v_tensor)
        total = tf.reduce_sum(loss.generator_loss(v_tensor, objective="logit"))
    grad = tape.gradient(total, v_tensor).numpy()
    # 1/(T(1 − T)) ≤ 11 and 1/(2 + v) ≤ 2 here: relative float32 error stays ~1e-6.
    np.testing.assert_allclose(grad, -LINK_DERIVATIVE[name](v.astype(np.float64)), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Compilation
# ------------------------------------------------------------------------------------------------
def _everything(loss, real, fake):
    out = {
        "loss": loss.discriminator_loss(real, fake),
        "terms": tf.concat(loss.per_sample_discriminator_loss(real, fake), axis=0),
        "activation": loss.output_activation(fake),
    }
    for objective in losses.GENERATOR_OBJECTIVES:
        out[objective] = loss.generator_loss(fake, objective=objective)
    if loss.sd_consistent:
        out["log_ratio"] = loss.log_ratio(fake)
    if loss.name != "wasserstein":
        out["optimal_output"] = loss.optimal_output(fake)
    return out


@pytest.mark.parametrize("name", ALL)
def test_same_values_under_xla(name):
    loss = losses.get(name)
    real, fake = tf.constant(REAL), tf.constant(FAKE)
    eager = _everything(loss, real, fake)
    compiled = tf.function(lambda r, f: _everything(loss, r, f), jit_compile=True)(real, fake)
    # XLA may fuse and reorder float32 ops: a few ulps of O(1) values.
    for key, value in eager.items():
        np.testing.assert_allclose(compiled[key].numpy(), value.numpy(), rtol=RTOL, atol=ATOL, err_msg=key)


# ------------------------------------------------------------------------------------------------
# Regularisers
# ------------------------------------------------------------------------------------------------
def _linear_critic(weight, keepdims=False):
    weight = tf.constant(weight, tf.float32)

    def critic(x):
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        out = tf.linalg.matvec(flat, tf.reshape(weight, [-1]))
        return out[:, None] if keepdims else out

    return critic


RNG = np.random.default_rng(0)
X_REAL = RNG.normal(size=(5, 2, 3)).astype(np.float32)  # rank-3 samples: batch first
X_FAKE = RNG.normal(size=(5, 2, 3)).astype(np.float32)
W = RNG.normal(size=(2, 3))


def test_gradient_penalty_linear_critic():
    unit = W / np.linalg.norm(W)
    # ‖∇‖ = 1 exactly up to float32 rounding (~1e-7) and the 1e-12 under the square root.
    penalty = losses.gradient_penalty(_linear_critic(unit), X_REAL, X_FAKE, seed=1)
    assert penalty.shape == () and float(penalty) < 1e-10
    scaled = 3.0 * unit
    penalty = losses.gradient_penalty(_linear_critic(scaled, keepdims=True), X_REAL, X_FAKE, seed=1)
    np.testing.assert_allclose(float(penalty), (3.0 - 1.0) ** 2, rtol=RTOL)
    penalty = losses.gradient_penalty(_linear_critic(W), X_REAL, X_FAKE, target=0.0)
    np.testing.assert_allclose(float(penalty), np.sum(W**2), rtol=RTOL)


def test_r1_penalty_linear_critic():
    np.testing.assert_allclose(
        float(losses.r1_penalty(_linear_critic(W), X_REAL)), np.sum(W**2), rtol=RTOL
    )


def test_r1_penalty_weights_each_sample():
    # ‖∇ₓD‖² = ‖W‖² at every sample, so the weighted mean is mean(w)·‖W‖².
    weights = np.linspace(0.5, 2.0, len(X_REAL)).astype(np.float32)
    np.testing.assert_allclose(float(losses.r1_penalty(_linear_critic(W), X_REAL, weights=weights)),
                               weights.mean() * np.sum(W**2), rtol=RTOL)
    np.testing.assert_allclose(float(losses.r1_penalty(_linear_critic(W), X_REAL, weights=weights[:, None])),
                               weights.mean() * np.sum(W**2), rtol=RTOL)


def test_denoising_score_matching_against_numpy():
    # f(x) = −½ xᵀ M x + c·x (M symmetric): ∇f = −M x + c, so the loss is mean over samples and features of
    # (σ_i(−M x_i + c) + n_i)², written here in float64; per-sample σ [batch, 1], [batch] or a scalar.
    rng = np.random.default_rng(3)
    dim = 3
    root = rng.normal(size=(dim, dim))
    m, c = root @ root.T / dim + np.eye(dim), rng.normal(size=dim)
    x, noise = rng.normal(size=(6, dim)), rng.normal(size=(6, dim))
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(2.0), size=(6, 1)))

    def f(points):
        points = tf.cast(points, tf.float64)
        return tf.cast(-0.5 * tf.einsum("bi,ij,bj->b", points, m, points) + tf.linalg.matvec(points, c), tf.float32)

    expected = np.mean(np.square(sigma * (-x @ m + c) + noise))
    for sigmas in (sigma, sigma[:, 0]):
        value = losses.denoising_score_matching(f, x.astype(np.float32), noise.astype(np.float32),
                                                sigmas.astype(np.float32))
        assert value.shape == ()
        np.testing.assert_allclose(float(value), expected, rtol=RTOL)
    np.testing.assert_allclose(float(losses.denoising_score_matching(f, x.astype(np.float32), noise, 0.5)),
                               np.mean(np.square(0.5 * (-x @ m + c) + noise)), rtol=RTOL)
    with pytest.raises(ValueError, match="noise"):
        losses.denoising_score_matching(f, x.astype(np.float32), noise[:, :2], 0.5)
    with pytest.raises(TypeError, match="log_density_fn"):
        losses.denoising_score_matching("not a function", x.astype(np.float32), noise, 0.5)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_denoising_score_matching_minimum_at_the_exact_score(sigma):
    # x0 ~ N(m, τ² I), x = x0 + σn: the exact score −(x − m)/(σ² + τ²) leaves σs + n = (τ²n − στz)/(σ² + τ²),
    # N(0, τ²/(σ² + τ²)) per feature, so the loss is τ²/(σ² + τ²) = 1 − σ² E‖∇log p_σ‖²/d up to Monte Carlo
    # error: a mean of N·d values v·χ²₁, standard error v·sqrt(2/(N·d)) (1.1 % here); 5 SE. Scaling the
    # score by 1 ± δ adds δ²σ²‖s‖²/d ± 2δσ s·(σs + n)/d on the same draws: the mean of the two excesses is
    # δ²σ² mean‖s‖²/d, whose expectation is δ²σ²/(σ² + τ²), again with relative standard error 1.1 %
    # (‖s‖²(σ² + τ²) is χ² with N·d degrees of freedom); float32 sums add < 1e-6 absolute (0.4 % of the
    # smallest excess, 2.7e-4 at σ = 0.05): 10 % tolerance.
    rng = np.random.default_rng(4)
    n, dim, tau = 8192, 2, 0.3
    m = np.array([1.0, -0.5])
    noise = rng.normal(size=(n, dim)).astype(np.float32)
    x = (m + tau * rng.normal(size=(n, dim)) + sigma * noise).astype(np.float32)

    def exact(scale):
        return lambda points: -scale * tf.reduce_sum(tf.square(points - m.astype(np.float32)), 1) / (
            2 * (sigma**2 + tau**2))

    minimum = tau**2 / (sigma**2 + tau**2)
    value = float(losses.denoising_score_matching(exact(1.0), x, noise, sigma))
    assert abs(value - minimum) < 5 * minimum * math.sqrt(2 / (n * dim))
    excess = np.mean([float(losses.denoising_score_matching(exact(scale), x, noise, sigma)) - value
                      for scale in (0.9, 1.1)])
    expected_excess = 0.01 * sigma**2 / (sigma**2 + tau**2)
    assert abs(excess - expected_excess) < 0.1 * expected_excess


def test_penalties_seeded_and_compiled():
    def critic(x):  # nonlinear, so the penalty depends on where the interpolates land
        return tf.reduce_sum(tf.sin(x) * x, axis=[1, 2])

    first = losses.gradient_penalty(critic, X_REAL, X_FAKE, seed=7)
    second = losses.gradient_penalty(critic, X_REAL, X_FAKE, seed=7)
    assert float(first) == float(second)
    compiled = tf.function(
        lambda r, f: (losses.gradient_penalty(critic, r, f, seed=7), losses.r1_penalty(critic, r)),
        jit_compile=True,
    )(tf.constant(X_REAL), tf.constant(X_FAKE))
    np.testing.assert_allclose(float(compiled[0]), float(first), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        float(compiled[1]), float(losses.r1_penalty(critic, X_REAL)), rtol=RTOL, atol=ATOL
    )
    unseeded = tf.function(lambda r, f: losses.gradient_penalty(critic, r, f), jit_compile=True)
    assert np.isfinite(float(unseeded(tf.constant(X_REAL), tf.constant(X_FAKE))))


def test_penalties_reject_bad_arguments():
    critic = _linear_critic(W)
    with pytest.raises(ValueError, match="same shape"):
        losses.gradient_penalty(critic, X_REAL, X_FAKE[:3])
    with pytest.raises(ValueError, match="same shape"):
        losses.gradient_penalty(critic, X_REAL, X_FAKE[..., :2])
    with pytest.raises(ValueError, match="target"):
        losses.gradient_penalty(critic, X_REAL, X_FAKE, target=-1.0)
    with pytest.raises(ValueError, match="seed"):
        losses.gradient_penalty(critic, X_REAL, X_FAKE, seed=1.5)
    with pytest.raises(TypeError, match="discriminator_fn"):
        losses.r1_penalty("not a model", X_REAL)
