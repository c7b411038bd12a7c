"""Batch norm's momentum conventions and evaluation statistics, ghost batch norm and batch
renormalization, against NumPy computations of their formulas (float64) and their invariances."""

import jax
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import get_normalization
from bnresearch.layers.normalization import check_normalization_batch_sizes
from bnresearch.layers.normalization.renorm import renorm_limits
from bnresearch.layers.variables import STATE
from tests.layers.normtest_utils import (
    CONV_SHAPE,
    DENSE_SHAPE,
    init_with_random_affine,
    moments,
    random_input,
)

EPS = 1e-5


def train_steps(module, variables, inputs):
    """Applies `module` in training mode to each input in turn; outputs and final variables."""
    outputs = []
    for x in inputs:
        y, updates = module.apply(variables, x, train=True, mutable=[STATE])
        variables = {**variables, **updates}
        outputs.append(np.asarray(y))
    return outputs, variables


# --- batch norm: conventions and evaluation statistics ---------------------------------------


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_pytorch_convention_weighs_the_new_value_and_stores_the_unbiased_variance(shape):
    momentum = 0.3
    bn = get_normalization("batch", momentum=momentum, momentum_convention="pytorch")()
    inputs = [random_input(shape, seed=0), random_input(shape, seed=1) * 0.5 - 1.0]
    variables = init_with_random_affine(bn, inputs[0])
    params = variables["params"]
    outputs, variables = train_steps(bn, variables, inputs)

    axes = tuple(range(len(shape) - 1))
    count = np.prod([shape[axis] for axis in axes])
    running_mean, running_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for x, y in zip(inputs, outputs):
        mean, var = moments(x, axes)
        # training normalizes with the biased variance, as torch.nn.BatchNorm2d does
        expected = (x - mean) / np.sqrt(var + EPS) * params["scale"] + params["bias"]
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        running_mean = (1 - momentum) * running_mean + momentum * mean.ravel()
        running_var = (1 - momentum) * running_var + momentum * var.ravel() * count / (count - 1)
    np.testing.assert_allclose(variables[STATE]["mean"], running_mean, rtol=1e-6)
    np.testing.assert_allclose(variables[STATE]["var"], running_var, rtol=1e-6)


def test_default_momenta_of_the_two_conventions_are_the_same_average():
    x = random_input(CONV_SHAPE)
    stats = {}
    for convention in ("flax", "pytorch"):
        bn = get_normalization("batch", momentum_convention=convention)()
        _, updates = bn.apply(
            bn.init(jax.random.key(0), x, train=True), x, train=True, mutable=[STATE]
        )
        stats[convention] = updates[STATE]
    np.testing.assert_allclose(stats["flax"]["mean"], stats["pytorch"]["mean"], rtol=1e-6)
    count = np.prod(CONV_SHAPE[:-1])
    # the variances differ exactly by the Bessel factor of the 10% new value
    np.testing.assert_allclose(
        stats["pytorch"]["var"] - 0.9, (stats["flax"]["var"] - 0.9) * count / (count - 1), rtol=1e-5
    )


@pytest.mark.parametrize("name", ["batch", "ghost_batch"])
def test_eval_with_batch_statistics_normalizes_the_evaluation_batch(name):
    options = {"virtual_batch_size": 3} if name == "ghost_batch" else {}
    bn = get_normalization(name, eval_statistics="batch", **options)()
    x = random_input(CONV_SHAPE, seed=3)
    variables = init_with_random_affine(bn, x)
    params = variables["params"]
    y = bn.apply(variables, x, train=False)
    groups = x.reshape(-1, 3 if name == "ghost_batch" else 6, *x.shape[1:])
    mean, var = moments(groups, (1, 2, 3))
    expected = ((groups - mean) / np.sqrt(var + EPS)).reshape(x.shape) * params["scale"] + params[
        "bias"
    ]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_options_are_checked():
    with pytest.raises(UsageError, match="unknown momentum_convention .* valid: flax, pytorch"):
        get_normalization("batch", momentum_convention="keras")
    with pytest.raises(UsageError, match="unknown eval_statistics .* valid: running, batch"):
        get_normalization("batch", eval_statistics="population")


# --- ghost batch norm ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 3, 2, 4), (8, 4)])
def test_ghost_batch_norm_matches_numpy_in_train_and_eval(shape):
    momentum, virtual = 0.8, 2
    ghost = get_normalization("ghost_batch", virtual_batch_size=virtual, momentum=momentum)()
    # The second batch is twice as large, as after a batch-size schedule's step: the virtual
    # batches keep their size and become twice as many.
    inputs = [
        random_input(shape, seed=0),
        random_input((2 * shape[0], *shape[1:]), seed=1) * 2.0 + 1.0,
    ]
    variables = init_with_random_affine(ghost, inputs[0])
    params = variables["params"]
    outputs, variables = train_steps(ghost, variables, inputs)

    axes = tuple(range(1, len(shape)))  # within a group: the group's examples and positions
    running_mean, running_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for x, y in zip(inputs, outputs):
        groups = x.astype(np.float64).reshape(x.shape[0] // virtual, virtual, *shape[1:])
        mean, var = moments(groups, axes)
        expected = ((groups - mean) / np.sqrt(var + EPS)).reshape(x.shape)
        np.testing.assert_allclose(
            y, expected * params["scale"] + params["bias"], rtol=1e-5, atol=1e-5
        )
        # one update per step with the mean over groups of the group means and variances
        group_axes = (0, *axes)
        running_mean = momentum * running_mean + (1 - momentum) * mean.mean(group_axes)
        running_var = momentum * running_var + (1 - momentum) * var.mean(group_axes)
    np.testing.assert_allclose(variables[STATE]["mean"], running_mean, rtol=1e-6)
    np.testing.assert_allclose(variables[STATE]["var"], running_var, rtol=1e-6)

    x = random_input(shape, seed=2)
    expected = (x - running_mean) / np.sqrt(running_var + EPS) * params["scale"] + params["bias"]
    np.testing.assert_allclose(
        ghost.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("convention", ["flax", "pytorch"])
def test_ghost_batch_norm_with_the_whole_batch_is_batch_norm(convention):
    x = random_input(CONV_SHAPE)
    bn = get_normalization("batch", momentum_convention=convention)()
    ghost = get_normalization(
        "ghost_batch", virtual_batch_size=CONV_SHAPE[0], momentum_convention=convention
    )()
    variables = init_with_random_affine(bn, x)
    y_bn, stats_bn = bn.apply(variables, x, train=True, mutable=[STATE])
    y_ghost, stats_ghost = ghost.apply(variables, x, train=True, mutable=[STATE])
    np.testing.assert_allclose(y_ghost, y_bn, rtol=1e-6, atol=1e-6)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats_ghost[STATE][key], stats_bn[STATE][key], rtol=1e-6)


def test_ghost_groups_are_independent_of_each_other():
    """Changing the examples of one virtual batch leaves the outputs of the others unchanged."""
    ghost = get_normalization("ghost_batch", virtual_batch_size=2)()
    x = random_input(DENSE_SHAPE)
    variables = init_with_random_affine(ghost, x)
    changed = x.copy()
    changed[:2] = changed[:2] * 10 + 5
    y, _ = ghost.apply(variables, x, train=True, mutable=[STATE])
    y_changed, _ = ghost.apply(variables, changed, train=True, mutable=[STATE])
    np.testing.assert_array_equal(y_changed[2:], y[2:])
    assert not np.allclose(y_changed[:2], y[:2])


def test_batch_sizes_that_do_not_split_into_virtual_batches_are_refused():
    norm = get_normalization("ghost_batch", virtual_batch_size=16)
    check_normalization_batch_sizes(norm, 64, 100)  # running statistics at eval: any eval batch
    with pytest.raises(
        UsageError,
        match="batch_size=40 does not split into virtual batches of virtual_batch_size=16",
    ):
        check_normalization_batch_sizes(norm, 40)
    with pytest.raises(UsageError, match="eval_batch_size=100 does not split"):
        check_normalization_batch_sizes(
            get_normalization("ghost_batch", virtual_batch_size=16, eval_statistics="batch"),
            64,
            100,
        )
    with pytest.raises(UsageError, match="virtual_batch_size must be a positive int"):
        get_normalization("ghost_batch", virtual_batch_size=0)


# --- batch renormalization -------------------------------------------------------------------


def numpy_renorm_limits(step, rmax=3.0, dmax=5.0, start=5000, rmax_end=40000, dmax_end=25000):
    ramp = lambda end: min(max((step - start) / (end - start), 0.0), 1.0)
    return 1.0 + (rmax - 1.0) * ramp(rmax_end), dmax * ramp(dmax_end)


@pytest.mark.parametrize("step", [0, 4999, 5000, 12000, 25000, 30000, 40000, 90000])
def test_renorm_schedule_is_the_papers(step):
    r_limit, d_limit = renorm_limits(
        np.int32(step), rmax=3.0, dmax=5.0, relax_start=5000, rmax_end=40000, dmax_end=25000
    )
    np.testing.assert_allclose([r_limit, d_limit], numpy_renorm_limits(step), rtol=1e-6)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_batch_renorm_matches_numpy_with_the_schedule_counted_in_state(shape, accumulation_steps):
    momentum = 0.7
    # A schedule short enough to cross: bounds 1 and 0 at step 0, relaxed by steps 1 and 2. Its
    # steps are updates: with gradient accumulation, several forward passes make one.
    options = dict(momentum=momentum, rmax=1.5, dmax=0.5, relax_start=0, rmax_end=2, dmax_end=1)
    brn = get_normalization("batch_renorm", **options)(accumulation_steps=accumulation_steps)
    inputs = [random_input(shape, seed=s) * (1 + s) + 2 * s for s in range(6)]
    variables = init_with_random_affine(brn, inputs[0])
    assert int(variables[STATE]["steps"]) == 0
    params = variables["params"]
    outputs, variables = train_steps(brn, variables, inputs)

    axes = tuple(range(len(shape) - 1))
    moving_mean, moving_std = np.zeros(shape[-1]), np.ones(shape[-1])
    for forward_pass, (x, y) in enumerate(zip(inputs, outputs)):
        update = forward_pass // accumulation_steps
        r_limit, d_limit = numpy_renorm_limits(update, 1.5, 0.5, 0, 2, 1)
        mean, var = moments(x, axes)
        std = np.sqrt(var + EPS)
        r = np.clip(std.ravel() / moving_std, 1 / r_limit, r_limit)
        d = np.clip((mean.ravel() - moving_mean) / moving_std, -d_limit, d_limit)
        expected = ((x - mean) / std * r + d) * params["scale"] + params["bias"]
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        moving_mean = moving_mean + (1 - momentum) * (mean.ravel() - moving_mean)
        moving_std = moving_std + (1 - momentum) * (std.ravel() - moving_std)
    stats = variables[STATE]
    assert int(stats["steps"]) == len(inputs)
    np.testing.assert_allclose(stats["mean"], moving_mean, rtol=1e-5)
    np.testing.assert_allclose(stats["std"], moving_std, rtol=1e-5)

    x = random_input(shape, seed=9)
    expected = (x - moving_mean) / moving_std * params["scale"] + params["bias"]
    np.testing.assert_allclose(brn.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5)


def test_batch_renorm_r_and_d_carry_no_gradient():
    """With r and d under stop-gradient, sum(y) and sum(y^2) per channel do not depend on x
    (the normalized batch sums to 0 and its squares to N, up to eps), so their gradients vanish;
    with gradients through r = sigma_B / sigma or d = (mu_B - mu) / sigma they would not."""
    brn = get_normalization(
        "batch_renorm", rmax=3.0, dmax=5.0, relax_start=0, rmax_end=0, dmax_end=0
    )()
    x = random_input(DENSE_SHAPE)
    variables = brn.init(jax.random.key(0), x, train=True)  # gain 1, shift 0
    mean, var = moments(x, (0,))
    # moving statistics that make r and d active but unclipped
    stats = {
        "mean": (mean.ravel() - 0.5).astype(np.float32),
        "std": (1.5 * np.sqrt(var.ravel())).astype(np.float32),
        "steps": np.int32(10),
    }
    variables = {**variables, STATE: stats}

    def total(x, power):
        y, _ = brn.apply(variables, x, train=True, mutable=[STATE])
        return (y**power).sum()

    y, _ = brn.apply(variables, x, train=True, mutable=[STATE])
    assert not np.allclose(y, (x - mean) / np.sqrt(var + EPS), atol=1e-2)  # r, d do act
    for power in (1, 2):
        np.testing.assert_allclose(jax.grad(total)(x, power), 0.0, atol=1e-3)


def test_batch_renorm_train_output_is_invariant_to_per_channel_affine_input_at_the_start():
    """While r_max = 1 and d_max = 0 (before relax_start) training is batch norm."""
    brn = get_normalization("batch_renorm")()
    x = random_input(CONV_SHAPE)
    rng = np.random.default_rng(3)
    gain = rng.uniform(0.5, 3.0, CONV_SHAPE[-1]).astype(np.float32)
    shift = rng.normal(size=CONV_SHAPE[-1]).astype(np.float32) * 5
    variables = init_with_random_affine(brn, x)
    y, _ = brn.apply(variables, x, train=True, mutable=[STATE])
    y_affine, _ = brn.apply(variables, x * gain + shift, train=True, mutable=[STATE])
    np.testing.assert_allclose(y_affine, y, rtol=1e-4, atol=1e-4)


def test_batch_renorm_options_are_checked():
    with pytest.raises(UsageError, match="rmax must be >= 1"):
        get_normalization("batch_renorm", rmax=0.5)
    with pytest.raises(UsageError, match="relax_start must be a step number"):
        get_normalization("batch_renorm", relax_start=-1)
