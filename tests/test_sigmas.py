"""σ schedules (gan2flow.sigmas): formulas, ends, validation, bad arguments (tests/test_contracts.py runs the
schedule contract over every schedule)."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from gan2flow import sigmas

from _helpers import QUICK, any_float32, bad_call_tests, finite_positive


@pytest.mark.parametrize("schedule", [sigmas.geometric, sigmas.linear, sigmas.karras])
def test_schedules_are_decreasing_float32_with_exact_ends(schedule):
    values = schedule(5.0, 0.01, 17)
    assert values.dtype == tf.float32 and values.shape == (17,)
    values = values.numpy()
    np.testing.assert_allclose([values[0], values[-1]], [5.0, 0.01], rtol=1e-6)
    assert np.all(np.diff(values) < 0)


def test_geometric_has_equal_ratios():
    values = sigmas.geometric(8.0, 1.0, 4).numpy()
    np.testing.assert_allclose(values, [8.0, 4.0, 2.0, 1.0], rtol=1e-6)


def test_karras_with_rho_one_is_linear():
    np.testing.assert_allclose(sigmas.karras(3.0, 1.0, 5, rho=1.0), sigmas.linear(3.0, 1.0, 5), rtol=1e-6)


@pytest.mark.parametrize(
    "args, match",
    [((0.0, 0.1, 3), "sigma_max"), ((1.0, -0.1, 3), "sigma_min"), ((0.1, 1.0, 3), "sigma_min"),
     ((1.0, 0.1, 0), "n"), ((1.0, 0.1, 1), "n"), ((float("nan"), 0.1, 3), "sigma_max"), ((1.0, 0.1, 2.5), "n")],
)
def test_bad_schedule_arguments_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        sigmas.geometric(*args)


def test_validate_rejects_increasing_and_nonpositive():
    with pytest.raises(ValueError, match=r"sigmas\[1\]"):
        sigmas.validate([1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        sigmas.validate([1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        sigmas.validate([1.0, float("inf")])
    with pytest.raises(ValueError, match="rank 1"):
        sigmas.validate([[1.0]])


def test_diffusion_step_sizes_closed_form():
    # η_k = σ_k(σ_k − σ_{k+1}), σ_K = 0: hand-computed for (4, 2, 1).
    np.testing.assert_allclose(sigmas.diffusion_step_sizes([4.0, 2.0, 1.0]), [8.0, 2.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(sigmas.diffusion_step_sizes([4.0, 2.0], sigma_final=1.0), [8.0, 2.0], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad sigmas.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("geometric-min-above-max", lambda k: sigmas.geometric(0.1, 1.0, 5), ValueError,
     r"`sigma_min` must be <= `sigma_max`, got sigma_min=1.0 > sigma_max=0.1"),
    ("geometric-n-zero", lambda k: sigmas.geometric(1.0, 0.1, 0), ValueError, r"`n` must be an integer >= 1, got 0"),
    ("geometric-n-one", lambda k: sigmas.geometric(1.0, 0.1, 1), ValueError, r"`n` must be >= 2"),
    ("geometric-max-inf", lambda k: sigmas.geometric(np.inf, 0.1, 5), ValueError,
     r"`sigma_max` must be a positive finite number, got inf"),
    ("geometric-min-nan", lambda k: sigmas.geometric(1.0, np.nan, 5), ValueError, r"`sigma_min` must be a positive"),
    ("geometric-min-zero", lambda k: sigmas.geometric(1.0, 0.0, 5), ValueError,
     r"`sigma_min` must be a positive finite number, got 0"),
    ("geometric-min-below-float32", lambda k: sigmas.geometric(1.0, 1e-50, 5), ValueError,
     r"`sigma_min` and `sigma_max` must be positive and finite in float32.*1e-50"),
    ("geometric-n-text", lambda k: sigmas.geometric(1.0, 0.1, "10"), ValueError, r"`n` must be an integer, got '10'"),
    ("karras-rho", lambda k: sigmas.karras(1.0, 0.1, 5, rho=0), ValueError, r"`rho` must be a positive"),
    ("constant-sigma", lambda k: sigmas.constant(-1.0, 3), ValueError, r"`sigma` must be a positive"),
    ("validate-name", lambda k: sigmas.validate([1.0, 2.0], "my_schedule"), ValueError,
     r"`my_schedule` must be non-increasing"),
    ("validate-strict", lambda k: sigmas.validate([1.0, 1.0], allow_equal=False), ValueError,
     r"`sigmas` must be strictly decreasing"),
    ("diffusion-sigma-final", lambda k: sigmas.diffusion_step_sizes([1.0, 0.5], sigma_final=0.7), ValueError,
     r"`sigma_final` must be <= the last level 0.5, got 0.7"),
]


test_bad_input_is_rejected_with_a_message_naming_it, test_bad_calls_table_has_unique_ids = bad_call_tests(BAD_CALLS)


# --------------------------------------------------------------------------------------------------
# Property-based (hypothesis, derandomised so CI runs are repeatable)


@QUICK
@given(st.one_of(st.lists(any_float32, max_size=10),
                 st.lists(finite_positive, max_size=10).map(lambda v: sorted(v, reverse=True)),
                 st.lists(st.sampled_from([2.0, 1.0, 0.5, 0.0, -1.0]), max_size=6)))
def test_validate_accepts_exactly_the_nonincreasing_positive_finite_sequences(values):
    acceptable = all(np.isfinite(v) and v > 0 for v in values) and all(
        a >= b for a, b in zip(values, values[1:], strict=False))
    if acceptable:
        np.testing.assert_array_equal(sigmas.validate(values).numpy(), np.float32(values).reshape(-1))
    else:
        with pytest.raises(ValueError, match="`sigmas` must be"):
            sigmas.validate(values)


@QUICK
@given(st.lists(finite_positive, min_size=1, max_size=10).map(lambda v: sorted(v, reverse=True)))
def test_strict_validation_rejects_exactly_the_repeated_levels(values):
    if len(set(values)) == len(values):
        sigmas.validate(values, allow_equal=False)
    else:
        with pytest.raises(ValueError, match="strictly decreasing"):
            sigmas.validate(values, allow_equal=False)


@QUICK
@given(sigma_max=st.floats(1e-3, 1e3), ratio=st.floats(1.0, 1e4), n=st.integers(2, 200),
       kind=st.sampled_from(["geometric", "linear", "karras"]))
def test_schedules_are_positive_nonincreasing_with_exact_ends(sigma_max, ratio, n, kind):
    sigma_min = sigma_max / ratio
    values = getattr(sigmas, kind)(sigma_max, sigma_min, n).numpy()
    assert values.shape == (n,) and values.dtype == np.float32
    assert np.all(values > 0) and np.all(np.diff(values) <= 0)
    sigmas.validate(values)  # every schedule is a valid flow schedule
    # geometric/linear set their ends exactly; karras computes (a^(1/ρ))^ρ in float64: within 1 ulp.
    ulps = 0 if kind != "karras" else 1
    assert abs(values[0] - np.float32(sigma_max)) <= ulps * np.spacing(np.float32(sigma_max))
    assert abs(values[-1] - np.float32(sigma_min)) <= ulps * np.spacing(np.float32(sigma_min))
    if kind == "geometric" and ratio ** (1.0 / (n - 1)) > 1 + 1e-5:
        # consecutive levels differ by > 1e-5 relative, far above float32 rounding (6e-8): strictly decreasing
        assert np.all(np.diff(values) < 0)
