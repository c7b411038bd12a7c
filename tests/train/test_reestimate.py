"""Re-estimated statistics equal the population statistics NumPy computes from the same batches:
each layer's batch mean and (biased) variance, every layer normalizing with its batch's, averaged
over the batches."""

import jax
import numpy as np

from bnresearch import models
from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.train.reestimate import population_statistics

EPS = 1e-5


def numpy_population(params, batches):
    """Per layer (norm1, norm2): the mean over batches of the batch mean and variance of the
    layer's input, computed by a NumPy forward of the MLP (dense -> norm -> relu, twice)."""
    sums = {}
    for batch in batches:
        h = batch.reshape(len(batch), -1).astype(np.float64)
        for layer in (1, 2):
            h = h @ np.asarray(params[f"dense{layer}"]["kernel"], np.float64)
            mean, var = h.mean(axis=0), h.var(axis=0)
            for name, value in (("mean", mean), ("var", var)):
                sums[f"norm{layer}", name] = sums.get((f"norm{layer}", name), 0) + value
            norm = params[f"norm{layer}"]
            h = (h - mean) / np.sqrt(var + EPS) * norm["scale"] + norm["bias"]
            h = np.maximum(h, 0)
    return {key: total / len(batches) for key, total in sums.items()}


def test_reestimation_equals_the_population_statistics_numpy_computes():
    # Frozen statistics in training, as a fine-tuning run with norm=reestimate builds it: the
    # pass still normalizes with batch statistics.
    model = models.build_model(
        "mlp", num_classes=3, hidden_sizes=(6, 5), norm="batch", frozen_statistics=True
    )
    rng = np.random.default_rng(0)
    batches = [rng.normal(1.0, 2.0, size=(16, 3, 3, 1)).astype(np.float32) for _ in range(4)]
    variables = model.init(
        {"params": jax.random.key(0), RNG_STREAM: jax.random.key(1)}, batches[0], train=True
    )
    params = jax.tree.map(
        lambda p: p + rng.normal(0, 0.3, p.shape).astype(np.float32), variables["params"]
    )
    stats = population_statistics(model, params, variables[STATE], [{"image": b} for b in batches])
    for (layer, name), expected in numpy_population(params, batches).items():
        np.testing.assert_allclose(stats[layer][name], expected, rtol=2e-5, atol=1e-6)
