"""Every model lists its stages in order, and every parameter falls in exactly one of them."""

import jax
import jax.numpy as jnp
import pytest

from bnresearch import models
from bnresearch.optim.groups import matches, path_name

# One model of each family, at an input it takes.
CASES = [
    ("mlp", (8, 8, 1)),
    ("cnn", (8, 8, 1)),
    ("resnet20", (8, 8, 3)),
    ("preact_resnet20", (8, 8, 3)),
    ("preact_resnet164", (8, 8, 3)),
    ("wrn", (8, 8, 3)),
    ("resnet18", (32, 32, 3)),
    ("resnet50", (32, 32, 3)),
    ("vgg11", (32, 32, 3)),
    ("inception", (32, 32, 3)),
    ("bnn_mlp", (8, 8, 1)),
    ("bnn_vgg", (8, 8, 3)),
]


@pytest.mark.parametrize("name, image_shape", CASES)
def test_every_parameter_lies_in_exactly_one_stage_and_the_classifier_is_last(name, image_shape):
    model = models.build_model(name, num_classes=7)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    images = jax.ShapeDtypeStruct((4, *image_shape), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(keys, x, train=True), images)["params"]
    stages = models.stages(model)
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        leaf = path_name(path)
        assert sum(matches(leaf, stage) for stage in stages) == 1, leaf
    # The last stage is the classifier (with its normalization in the binarized networks).
    assert matches("head/kernel", stages[-1])
    assert not any(matches(f"{top}/x", stages[-1]) for top in params if not top.startswith("head"))


def test_stages_are_in_forward_order():
    assert models.stages(models.build_model("resnet20", num_classes=2)) == (
        ("stem_*",),
        ("stage1_*",),
        ("stage2_*",),
        ("stage3_*",),
        ("head",),
    )
