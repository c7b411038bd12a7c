"""Batch-layer normalization (BLN) against a NumPy computation of the paper's formulas: training
output, epoch-accumulated population statistics with their reset, the batch size kept for
evaluation, the four evaluation switches, and its limits (layer norm at batch size 1)."""

import itertools

import jax
import numpy as np
import pytest

from bnresearch.layers import get_normalization
from bnresearch.layers.variables import STATE
from tests.layers.normtest_utils import (
    CONV_SHAPE,
    DENSE_SHAPE,
    init_with_random_affine,
    random_input,
)

EPS = 1e-3


def numpy_statistics(x):
    x = np.asarray(x, np.float64)
    return {
        "batch_mean": x.mean(0, keepdims=True),
        "batch_var": x.var(0, keepdims=True),
        "feature_mean": x.mean(-1, keepdims=True),
        "feature_var": x.var(-1, keepdims=True),
    }


def numpy_bln(x, stats, batch_size, scale, bias):
    x = np.asarray(x, np.float64)
    xb = (x - stats["batch_mean"]) / np.sqrt(stats["batch_var"] + EPS)
    xf = (x - stats["feature_mean"]) / np.sqrt(stats["feature_var"] + EPS)
    z = ((1 / batch_size - 1e-4) * xf + (1 - 1 / batch_size - 1e-4) * xb) / np.sqrt(x.shape[-1])
    return z * scale + bias


def numpy_population(batches):
    """Means over `batches` of the four statistics, variances Bessel-corrected; the feature
    statistics also averaged over the examples."""
    sums = None
    for x in batches:
        stats = numpy_statistics(x)
        n, d = x.shape[0], x.shape[-1]
        values = {
            "batch_mean": stats["batch_mean"],
            "batch_var": stats["batch_var"] * n / (n - 1),
            "feature_mean": stats["feature_mean"].mean(0, keepdims=True),
            "feature_var": stats["feature_var"].mean(0, keepdims=True) * d / (d - 1),
        }
        sums = values if sums is None else {k: sums[k] + values[k] for k in sums}
    return {key: value / len(batches) for key, value in sums.items()}


def run_training(norm, variables, batches):
    for x in batches:
        y, updates = norm.apply(variables, x, train=True, mutable=[STATE])
        variables = {**variables, **updates}
    return y, variables


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_training_output_and_population_statistics_match_numpy(shape):
    norm = get_normalization("batch_layer")()
    batches = [random_input(shape, seed=s) * (1 + s) for s in range(3)]
    variables = init_with_random_affine(norm, batches[0])
    params = variables["params"]
    y, variables = run_training(norm, variables, batches)
    np.testing.assert_allclose(
        y,
        numpy_bln(
            batches[-1], numpy_statistics(batches[-1]), shape[0], params["scale"], params["bias"]
        ),
        rtol=1e-5,
        atol=1e-5,
    )
    stats = variables[STATE]
    assert int(stats["epoch_steps"]) == 3 and float(stats["batch_size"]) == shape[0]
    population = numpy_population(batches)
    for key in population:
        np.testing.assert_allclose(stats[f"{key}_sum"] / 3, population[key][0], rtol=1e-5)


@pytest.mark.parametrize("switches", list(itertools.product([True, False], repeat=4)))
def test_evaluation_switches_choose_population_or_current_statistics(switches):
    names = ("batch_mean", "batch_var", "feature_mean", "feature_var")
    norm = get_normalization(
        "batch_layer", **{f"population_{name}": on for name, on in zip(names, switches)}
    )()
    batches = [random_input(CONV_SHAPE, seed=s) + s for s in range(2)]
    variables = init_with_random_affine(norm, batches[0])
    params = variables["params"]
    _, variables = run_training(norm, variables, batches)

    x = random_input((3, *CONV_SHAPE[1:]), seed=7) * 2  # an evaluation batch of another size
    population, current = numpy_population(batches), numpy_statistics(x)
    chosen = {name: population[name] if on else current[name] for name, on in zip(names, switches)}
    # the branch weights are those of the training batch size, not the evaluation batch's
    expected = numpy_bln(x, chosen, CONV_SHAPE[0], params["scale"], params["bias"])
    np.testing.assert_allclose(
        norm.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5
    )


def test_default_switches_are_the_authors():
    norm = get_normalization("batch_layer")(parent=None)
    assert (
        norm.population_batch_mean,
        norm.population_batch_var,
        norm.population_feature_mean,
        norm.population_feature_var,
    ) == (True, True, False, False)


def test_population_statistics_restart_every_epoch():
    # 13 training examples at batch size 6: epochs of 13 // 6 = 2 steps, as the loop counts them
    norm = get_normalization("batch_layer")(images_per_epoch=13)
    batches = [random_input(DENSE_SHAPE, seed=s) * (s + 1) for s in range(5)]
    variables = init_with_random_affine(norm, batches[0])
    for steps in range(1, 6):
        _, variables = run_training(norm, variables, batches[steps - 1 : steps])
        epoch_start = 2 * ((steps - 1) // 2)
        epoch_batches = batches[epoch_start:steps]
        stats = variables[STATE]
        assert int(stats["epoch_steps"]) == len(epoch_batches)
        expected = numpy_population(epoch_batches)
        np.testing.assert_allclose(
            stats["batch_mean_sum"] / len(epoch_batches), expected["batch_mean"][0], rtol=1e-5
        )
        np.testing.assert_allclose(
            stats["feature_var_sum"] / len(epoch_batches), expected["feature_var"][0], rtol=1e-5
        )


def test_before_any_step_the_population_is_zero_mean_unit_variance():
    norm = get_normalization("batch_layer")()
    x = random_input(DENSE_SHAPE)
    variables = init_with_random_affine(norm, x)
    assert int(variables[STATE]["epoch_steps"]) == 0  # init is not a step
    params = variables["params"]
    stats = {**numpy_statistics(x), "batch_mean": 0.0, "batch_var": 1.0}
    np.testing.assert_allclose(
        norm.apply(variables, x, train=False),
        numpy_bln(x, stats, DENSE_SHAPE[0], params["scale"], params["bias"]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_at_batch_size_one_it_is_layer_norm_over_the_channels():
    """The batch branch gets weight -1e-4 and zero variance, so only the feature branch, with
    weight 1 - 1e-4, remains; the population variance needs no Bessel factor there."""
    norm = get_normalization("batch_layer")()
    x = random_input((1, 8))
    variables = init_with_random_affine(norm, x)
    params = variables["params"]
    y, updates = norm.apply(variables, x, train=True, mutable=[STATE])
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    layer_norm = (x - mean) / np.sqrt(var + EPS) * (1 - 1e-4) / np.sqrt(8)
    np.testing.assert_allclose(
        y, layer_norm * params["scale"] + params["bias"], rtol=1e-5, atol=1e-5
    )
    assert np.all(np.isfinite(jax.tree.leaves(updates)[0]))
    np.testing.assert_array_equal(updates[STATE]["batch_var_sum"], np.zeros((8,)))
