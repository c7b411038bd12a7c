"""The normalization modes of fine-tuning against NumPy: frozen (running statistics in training,
left unchanged) and adapt (batch statistics, running ones updated)."""

import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.layers.normalization.batch import BatchNorm, GhostBatchNorm
from bnresearch.layers.variables import MOMENTS, STATE

EPS = 1e-5
RNG = np.random.default_rng(3)
X = RNG.normal(2.0, 3.0, size=(8, 3, 3, 4)).astype(np.float32)
VARIABLES = {
    "params": {
        "scale": RNG.uniform(0.5, 2, 4).astype(np.float32),
        "bias": RNG.normal(size=4).astype(np.float32),
    },
    STATE: {
        "mean": RNG.normal(size=4).astype(np.float32),
        "var": RNG.uniform(0.5, 4, 4).astype(np.float32),
    },
}


def apply(norm, mutable=(STATE,)):
    return norm.apply(VARIABLES, jnp.asarray(X), train=True, mutable=list(mutable))


@pytest.mark.parametrize("norm_class", [BatchNorm, GhostBatchNorm])
def test_frozen_statistics_normalize_training_with_the_running_ones_and_keep_them(norm_class):
    y, updated = apply(norm_class(frozen_statistics=True), mutable=(STATE, MOMENTS))
    stats, params = VARIABLES[STATE], VARIABLES["params"]
    expected = (X - stats["mean"]) / np.sqrt(stats["var"] + EPS) * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        assert np.asarray(updated[STATE][name]).tobytes() == stats[name].tobytes()
    assert MOMENTS not in updated  # nothing to re-estimate from: no batch statistics taken


def test_adapt_normalizes_with_batch_statistics_and_updates_the_running_ones():
    y, updated = apply(BatchNorm(), mutable=(STATE, MOMENTS))
    x = X.astype(np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    params, stats = VARIABLES["params"], VARIABLES[STATE]
    expected = (x - mean) / np.sqrt(var + EPS) * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updated[STATE]["mean"], 0.9 * stats["mean"] + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updated[STATE]["var"], 0.9 * stats["var"] + 0.1 * var, rtol=1e-5)
    # The moments it sows for re-estimation are the batch's, only when asked for.
    np.testing.assert_allclose(updated[MOMENTS]["mean"][0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updated[MOMENTS]["var"][0], var, rtol=1e-5)
    assert MOMENTS not in apply(BatchNorm())[1]


def test_frozen_statistics_do_not_change_evaluation():
    frozen = BatchNorm(frozen_statistics=True).apply(VARIABLES, jnp.asarray(X), train=False)
    plain = BatchNorm().apply(VARIABLES, jnp.asarray(X), train=False)
    assert np.asarray(frozen).tobytes() == np.asarray(plain).tobytes()
