import numpy as np
import pytest
import tensorflow as tf

from gan2flow import sigmas


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
