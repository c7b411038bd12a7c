"""Frozen parameters get exactly zero updates and no optimizer state; body and head take their
own learning rates; the frozen set follows patterns and stages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.optim.freezing import Partition, frozen_patterns
from bnresearch.optim.optimizers import make_optimizer

RNG = np.random.default_rng(0)
PARAMS = {
    "stem": {"kernel": RNG.normal(size=(3, 4)).astype(np.float32)},
    "stage1_block1": {"conv": {"kernel": RNG.normal(size=(4, 4)).astype(np.float32)}},
    "head": {
        "kernel": RNG.normal(size=(4, 2)).astype(np.float32),
        "bias": RNG.normal(size=(2,)).astype(np.float32),
    },
}
GRADS = jax.tree.map(lambda p: RNG.normal(size=p.shape).astype(np.float32), PARAMS)
PARTITION = Partition(frozen=("stem",), head=("head",), body_lr=0.5, head_lr=2.0)


def optimizer(name="momentum", **fields):
    config = base_config().optimizer
    config.name, config.weight_decay = name, 0.0
    config.update(fields)
    return make_optimizer(config, optax.constant_schedule(0.1), PARTITION)


def test_frozen_parameters_get_zero_updates_and_have_no_optimizer_state():
    opt = optimizer()
    state = opt.init(PARAMS)
    # Momentum keeps one trace per trained parameter: 16 + 8 + 2 values, none for the stem's 12.
    sizes = sorted(leaf.size for leaf in jax.tree.leaves(state) if jnp.ndim(leaf) > 0)
    assert sizes == [2, 8, 16]
    for _ in range(3):
        updates, state = opt.update(GRADS, state, PARAMS)
        assert np.asarray(updates["stem"]["kernel"]).tobytes() == bytes(12 * 4)
    new = optax.apply_updates(PARAMS, updates)
    assert np.asarray(new["stem"]["kernel"]).tobytes() == PARAMS["stem"]["kernel"].tobytes()


def test_body_and_head_step_at_their_own_learning_rates():
    updates, _ = optimizer("sgd").update(GRADS, optimizer("sgd").init(PARAMS), PARAMS)
    np.testing.assert_allclose(
        updates["stage1_block1"]["conv"]["kernel"],
        -0.1 * 0.5 * GRADS["stage1_block1"]["conv"]["kernel"],
        rtol=1e-6,
    )
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            updates["head"][name], -0.1 * 2.0 * GRADS["head"][name], rtol=1e-6
        )


def test_gradient_clipping_sees_only_the_trained_gradients():
    updates, _ = optimizer("sgd", grad_clip_norm=1.0).update(
        GRADS, optimizer("sgd", grad_clip_norm=1.0).init(PARAMS), PARAMS
    )
    trained = [
        GRADS["stage1_block1"]["conv"]["kernel"],
        GRADS["head"]["kernel"],
        GRADS["head"]["bias"],
    ]
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in trained))
    np.testing.assert_allclose(
        updates["head"]["bias"], -0.1 * 2.0 * GRADS["head"]["bias"] / max(norm, 1.0), rtol=1e-5
    )


STAGES = (("stem",), ("stage1_*",), ("head",))
NAMES = ["stem/kernel", "stage1_block1/conv/kernel", "head/kernel", "head/bias"]


def test_all_but_the_last_n_stages_are_frozen():
    assert frozen_patterns(NAMES, STAGES, (), 0) == ()
    assert frozen_patterns(NAMES, STAGES, (), 1) == ("stem", "stage1_*")
    assert frozen_patterns(NAMES, STAGES, ("head",), 3) == ("head",)


@pytest.mark.parametrize(
    "freeze, last, message",
    [
        (("stage2_*",), 0, "pattern 'stage2_\\*' names no parameter; the model's top-level"),
        ((), 4, "train_last_stages=4 but the model has 3 stages"),
        (("stem", "stage1_*", "head"), 0, "freeze every parameter"),
    ],
)
def test_freezing_that_cannot_be_meant_is_refused(freeze, last, message):
    with pytest.raises(UsageError, match=message):
        frozen_patterns(NAMES, STAGES, freeze, last)
