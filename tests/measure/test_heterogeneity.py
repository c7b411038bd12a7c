"""The batch heterogeneity score against a NumPy computation of its definition, on constructed
homogeneous and heterogeneous batches, its invariances, and its logging by a normalization."""

import jax
import numpy as np
import pytest

from bnresearch.layers import get_normalization
from bnresearch.layers.variables import STATE
from bnresearch.measure.heterogeneity import heterogeneity_score


def numpy_score(x, epsilon=1e-6):
    features = np.asarray(x, np.float64).reshape(len(x), -1)
    between = np.mean([features[:, d].var() for d in range(features.shape[1])])
    within = np.mean([features[n].var() for n in range(len(features))])
    return between / (within + epsilon)


@pytest.mark.parametrize("shape", [(16, 4, 4, 3), (16, 10), (1, 5)])
def test_score_matches_numpy(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 2 + 1
    np.testing.assert_allclose(heterogeneity_score(x), numpy_score(x), rtol=1e-5)


def test_homogeneous_batches_score_low_and_heterogeneous_ones_high():
    rng = np.random.default_rng(1)
    prototype = rng.normal(size=(6, 6, 2))
    # the same image with a little noise: the examples barely differ
    homogeneous = prototype + 0.05 * rng.normal(size=(32, 6, 6, 2))
    # each example its own image: examples differ as much as features within one
    independent = rng.normal(size=(32, 6, 6, 2))
    # examples with their own offset and scale on top: they differ more than features do
    spread = independent * rng.uniform(0.2, 5, (32, 1, 1, 1)) + rng.normal(size=(32, 1, 1, 1)) * 5
    scores = [float(heterogeneity_score(x)) for x in (homogeneous, independent, spread)]
    assert scores[0] < 0.01 < 0.5 < scores[1] < 2 < scores[2]
    # the noise's variance over the prototype's variance across its features
    np.testing.assert_allclose(scores[0], 0.05**2 / prototype.var(), rtol=0.1)
    np.testing.assert_allclose(
        heterogeneity_score(np.repeat(prototype[None], 8, 0)), 0.0, atol=1e-7
    )


def test_score_ignores_a_global_scale_and_shift_and_the_order_of_examples():
    x = np.random.default_rng(2).normal(size=(8, 3, 3, 4))
    score = heterogeneity_score(x)
    np.testing.assert_allclose(heterogeneity_score(x * 3 - 7), score, rtol=1e-4)
    np.testing.assert_allclose(heterogeneity_score(x[::-1]), score, rtol=1e-5)


@pytest.mark.parametrize("name", ["batch", "none"])
def test_a_normalization_logs_its_inputs_score_and_the_threshold_decision(name):
    x = np.random.default_rng(3).normal(size=(8, 3, 3, 4)).astype(np.float32)
    norm = get_normalization(name, heterogeneity_threshold=0.5)()
    variables = norm.init(jax.random.key(0), x, train=True)
    assert "analysis" not in variables  # init is not a training step
    _, sown = norm.apply(variables, x, train=True, mutable=["analysis", STATE])
    (score,), (feasible,) = sown["analysis"]["heterogeneity"], sown["analysis"]["bn_feasible"]
    np.testing.assert_allclose(score, numpy_score(x), rtol=1e-5)
    assert float(feasible) == float(numpy_score(x) >= 0.5)
    strict = get_normalization(name, heterogeneity_threshold=1e3)()
    _, sown = strict.apply(variables, x, train=True, mutable=["analysis", STATE])
    assert float(sown["analysis"]["bn_feasible"][0]) == 0.0
    # off by default, and never in evaluation
    _, sown = get_normalization(name)().apply(variables, x, train=True, mutable=["analysis", STATE])
    assert "analysis" not in sown
    _, sown = norm.apply(variables, x, train=False, mutable=["analysis"])
    assert "analysis" not in sown
