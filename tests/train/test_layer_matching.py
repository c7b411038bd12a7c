"""How a model's layers match a checkpoint's, on shapes alone (transfer.match_layers)."""

import pytest

from bnresearch.errors import UsageError
from bnresearch.train.transfer import match_layers

# A small network as (collection, leaf path) -> shape.
SOURCE = {
    ("params", "stem_conv/kernel"): (3, 3, 1, 16),
    ("params", "stem_norm/scale"): (16,),
    ("params", "stem_norm/bias"): (16,),
    ("batch_stats", "stem_norm/mean"): (16,),
    ("batch_stats", "stem_norm/var"): (16,),
    ("params", "block/conv/kernel"): (3, 3, 16, 16),
    ("params", "extra/kernel"): (4, 4),
    ("params", "head/kernel"): (16, 10),
    ("params", "head/bias"): (10,),
}


def target(changes=None):
    """The source's shapes without its `extra` layer, with `changes`."""
    shapes = {key: shape for key, shape in SOURCE.items() if key[1] != "extra/kernel"}
    return {**shapes, **(changes or {})}


def test_other_input_channels_and_classes_reinitialise_those_layers_only():
    shapes = target(
        {
            ("params", "stem_conv/kernel"): (3, 3, 3, 16),
            ("params", "head/kernel"): (16, 5),
            ("params", "head/bias"): (5,),
        }
    )
    loaded, reinitialized, unused = match_layers(shapes, SOURCE, reinit=())
    assert set(loaded) == {"stem_norm", "block/conv"}
    assert reinitialized == {
        "stem_conv": "kernel: (3, 3, 1, 16) in the checkpoint, (3, 3, 3, 16) here",
        "head": "kernel: (16, 10) in the checkpoint, (16, 5) here; "
        "bias: (10,) in the checkpoint, (5,) here",
    }
    assert unused == ("extra",)


def test_reinit_patterns_reinitialise_layers_that_fit():
    loaded, reinitialized, _ = match_layers(target(), SOURCE, reinit=("head", "stem_*"))
    assert loaded == ("block/conv",)
    assert reinitialized == {
        "stem_conv": "init_from.reinit 'stem_*'",
        "stem_norm": "init_from.reinit 'stem_*'",
        "head": "init_from.reinit 'head'",
    }


def test_a_layer_the_checkpoint_lacks_is_refused_unless_reinit_names_it():
    shapes = target({("params", "new_block/conv/kernel"): (3, 3, 16, 16)})
    with pytest.raises(UsageError, match=r"lacks 1 of this model's layers \(new_block/conv/kernel"):
        match_layers(shapes, SOURCE, reinit=())
    _, reinitialized, _ = match_layers(shapes, SOURCE, reinit=("new_block",))
    assert reinitialized == {"new_block/conv": "init_from.reinit 'new_block'"}
