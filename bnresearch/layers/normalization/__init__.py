"""Normalization layers and their registry: every variant, chosen by name in every model.

Each variant is a linen Module in its own file (the file cites the paper), derived from
``base.Normalization``; its dataclass fields are its options (``model.norm_kwargs``). All share:
channels-last inputs, float32 statistics whatever the compute dtype, a per-channel gain named
``scale`` with ``scale_init`` where the variant has a gain (Davis & Frank's small initial gamma;
the kit's ``zero_scale`` for residual branches), persistent state in ``batch_stats``, the
optional heterogeneity measurement (``heterogeneity_threshold``), and statistics over the
global batch under ``jax.jit`` on a mesh.

  batch         batch norm, explicit momentum convention (flax | pytorch), running or batch
                statistics at evaluation                                 batch.py
  ghost_batch   batch norm per virtual batch                             batch.py
  batch_renorm  batch renormalization, r_max / d_max schedule            renorm.py
  batch_kalman  batch Kalman normalization (BKN)                         kalman.py
  batch_layer   batch-layer normalization (BLN)                          batch_layer.py
  layer, group, instance                                                 per_example.py
  frn           filter response normalization with its TLU               filter_response.py
  weight        weight normalization (replaces the weight layers), optional mean-only BN
                                                                         weight.py
  batchless     statistics learned through a Gaussian likelihood term    batchless.py
  none          identity                                                 base.py

Some variants change more of the model than the normalization slot; they say so in
``adapt_kit``, which ``build_model`` applies to the LayerKit (weight: the conv and dense layers;
frn: the activation; batch_kalman: the conv and dense layers, so they report their kernels), and
in ``open_forward``, which every forward pass applies to it (batch_kalman: a fresh record of the
pass, which those layers report to).
"""

import functools

from bnresearch.layers.normalization.base import Identity, Normalization
from bnresearch.layers.normalization.batch import BatchNorm, GhostBatchNorm
from bnresearch.layers.normalization.batch_layer import BatchLayerNorm
from bnresearch.layers.normalization.batchless import BatchlessNorm
from bnresearch.layers.normalization.filter_response import FilterResponseNorm
from bnresearch.layers.normalization.kalman import BatchKalmanNorm
from bnresearch.layers.normalization.per_example import GroupNorm, InstanceNorm, LayerNorm
from bnresearch.layers.normalization.renorm import BatchRenorm
from bnresearch.layers.normalization.weight import WeightNorm
from bnresearch.layers.registry import ModuleFactory, has_field, lookup

NORMALIZATIONS: dict[str, ModuleFactory] = {
    "batch": BatchNorm,
    "ghost_batch": GhostBatchNorm,
    "batch_renorm": BatchRenorm,
    "batch_kalman": BatchKalmanNorm,
    "batch_layer": BatchLayerNorm,
    "layer": LayerNorm,
    "group": GroupNorm,
    "instance": InstanceNorm,
    "frn": FilterResponseNorm,
    "weight": WeightNorm,
    "batchless": BatchlessNorm,
    "none": Identity,
}

# Fields that are facts of the model or the run, filled in by the kit or build_model rather
# than set by users: the compute dtype, the model's activation and the record of the forward
# pass (batch_kalman), the training images a layer sees per epoch (batch_layer) and the forward
# passes of one optimizer update (batch_renorm); whether training uses the running statistics
# (fine-tuning's frozen statistics: batch, ghost_batch).
BUILD_FACTS = (
    "dtype",
    "activation",
    "record",
    "images_per_epoch",
    "accumulation_steps",
    "frozen_statistics",
)


def get_normalization(name: str, **options) -> ModuleFactory:
    """Normalization `name` with `options` bound: a factory called as ``norm(name=..., dtype=...)``.

    Unknown names and options, and invalid option values, raise UsageError here. The build facts
    (``BUILD_FACTS``) are not options.
    """
    factory = lookup("normalization", NORMALIZATIONS, name, options, reserved=BUILD_FACTS)
    factory(parent=None)  # a detached instance, built only so that bad option values raise now
    return factory


def bind_facts(norm: ModuleFactory, **facts) -> ModuleFactory:
    """`norm` with those of `facts` bound that its module has a field for (others are ignored)."""
    relevant = {key: value for key, value in facts.items() if has_field(norm, key)}
    return functools.partial(norm, **relevant) if relevant else norm


def check_normalization_features(norm: ModuleFactory, num_features: int) -> None:
    """Raises UsageError if the normalizations `norm` makes cannot take `num_features` channels."""
    norm(parent=None).check_features(num_features)


def check_normalization_batch_sizes(
    norm: ModuleFactory, batch_size: int, eval_batch_size: int | None = None
) -> None:
    """Raises UsageError if the normalizations `norm` makes cannot work at these batch sizes."""
    norm(parent=None).check_batch_sizes(batch_size, eval_batch_size)


__all__ = [
    "BUILD_FACTS",
    "NORMALIZATIONS",
    "Normalization",
    "bind_facts",
    "check_normalization_batch_sizes",
    "check_normalization_features",
    "get_normalization",
]
