"""Evaluation against NumPy: top-1 and top-5 of eval_step with ties and masked padding, and
`evaluate` counting every test example exactly once for batch sizes that do not divide the split.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.parallel.mesh import make_mesh
from bnresearch.train import steps
from bnresearch.train.loop import evaluate
from tests.data.datatest_utils import labelled_dataset


class GivenLogits(nn.Module):
    """A model whose logits are its input: the test chooses them."""

    @nn.compact
    def __call__(self, x, train):
        del train
        return x


def numpy_top_k(logits, labels, k):
    """Top-k hits by sorting each row, ties ranked lower class first (as np.argmax breaks them)."""
    hits = []
    for row, label in zip(logits, labels):
        order = np.lexsort((np.arange(len(row)), -row))  # by logit descending, then by index
        hits.append(label in order[:k])
    return np.array(hits)


def eval_sums(logits, labels, mask):
    state = types.SimpleNamespace(params={}, batch_stats={})
    batch = {"image": jnp.asarray(logits), "label": jnp.asarray(labels), "mask": jnp.asarray(mask)}
    return jax.device_get(steps.eval_step(state, batch, model=GivenLogits()))


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_matches_sorting_with_ties(k):
    rng = np.random.default_rng(0)
    # Logits in {0, 1, 2, 3} over 15 classes: nearly every row has ties at its k-th place.
    logits = rng.integers(0, 4, size=(200, 15)).astype(np.float32)
    labels = rng.integers(0, 15, size=200)
    hits = np.asarray(steps.top_k_correct(jnp.asarray(logits), jnp.asarray(labels), k))
    np.testing.assert_array_equal(hits, numpy_top_k(logits, labels, k))
    if k == 1:
        np.testing.assert_array_equal(hits, logits.argmax(-1) == labels)


def test_eval_step_sums_top1_and_top5_over_real_examples_only():
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 3, size=(24, 12)).astype(np.float32)
    labels = rng.integers(0, 12, size=24)
    mask = np.ones(24, np.float32)
    # Padding: zero images of label 0, where every class ties and the lowest class wins both
    # top-1 and top-5; none of it may count.
    logits[18:], labels[18:], mask[18:] = 0.0, 0, 0.0
    sums = eval_sums(logits, labels, mask)
    real = mask == 1
    assert sums["count"] == 18
    assert sums["correct_sum"] == np.sum(logits[real].argmax(-1) == labels[real])
    assert sums["top5_sum"] == np.sum(numpy_top_k(logits[real], labels[real], 5))
    assert sums["top5_sum"] > sums["correct_sum"]  # the data make the two differ


def test_ten_classes_compute_no_top5():
    logits = np.zeros((8, 10), np.float32)
    sums = eval_sums(logits, np.zeros(8, np.int32), np.ones(8, np.float32))
    assert set(sums) == {"loss_sum", "correct_sum", "count"}


@pytest.mark.parametrize("batch_size", [8, 16, 24])
def test_evaluate_counts_every_test_example_once(batch_size):
    # 13 test examples, record i labelled i; no batch size here divides 13, and 24 exceeds it.
    num_test = 13
    dataset, _ = labelled_dataset(num_test)
    seen = []

    def stub_eval_step(state, batch):
        del state
        label, mask = np.asarray(batch["label"]), np.asarray(batch["mask"])
        seen.append((label, mask))
        return {
            "loss_sum": jnp.sum(mask * label),
            "correct_sum": jnp.sum(mask * label**2),
            "count": jnp.sum(mask),
        }

    scalars = evaluate(stub_eval_step, None, dataset, batch_size, make_mesh())
    labels = np.concatenate([label for label, _ in seen])
    masks = np.concatenate([mask for _, mask in seen])
    assert sorted(labels[masks == 1]) == list(range(num_test))
    assert len(seen) == -(-num_test // batch_size) and set(masks) == {0.0, 1.0}
    # Means over exactly the 13 examples: of i, 6; of i^2, 650 / 13 = 50.
    assert scalars == {"eval/loss": 6.0, "eval/accuracy": 50.0}
