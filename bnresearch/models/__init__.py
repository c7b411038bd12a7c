"""Models chosen by name.

``build_model`` resolves the normalization and activation by name, checks every name, option and
option value, and returns an unbound linen Module: it computes nothing (given the run's image
shape and batch sizes it traces the model abstractly, shapes only), so it is the cheap up-front
check of a configuration as well. A model family is one module class in its own file;
registering it (or a ``functools.partial`` that fixes some of its fields) below is all it takes.
Every model is called as ``model.apply(variables, x, train=...)`` on channels-last images and
returns float32 logits of shape (N, num_classes).

Beyond the normalization and activation, ``build_model`` assembles the rest of the ``LayerKit``
from the config: the weight init, quantized weight layers, dropout rates at the model's three
placements, stochastic depth, and the self-normalizing (SELU) switch.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax.typing import Dtype

from bnresearch.errors import UsageError
from bnresearch.layers.activations import get_activation
from bnresearch.layers.kit import LayerKit, check_weight_init, plain_conv, plain_dense
from bnresearch.layers.normalization import (
    NORMALIZATIONS,
    bind_facts,
    check_normalization_batch_sizes,
    check_normalization_features,
    get_normalization,
)
from bnresearch.layers.quantization import quantization_spec, quantized_weight_layers
from bnresearch.layers.registry import ModuleFactory, has_field, lookup
from bnresearch.layers.regularization import DROPOUT_PLACEMENTS, check_drop_rate
from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.models.bnn import BinarizedMLP, BinarizedVGG
from bnresearch.models.cifar_resnet import CifarResNet
from bnresearch.models.cnn import CNN
from bnresearch.models.inception import InceptionNet
from bnresearch.models.mlp import MLP
from bnresearch.models.preact_resnet import PreActResNet, WideResNet
from bnresearch.models.resnet import ResNet
from bnresearch.models.vgg import VGG

MODELS: dict[str, ModuleFactory] = {
    "mlp": MLP,
    "cnn": CNN,
    # CIFAR ResNets (He et al. 2016a, section 4.2)
    **{
        f"resnet{depth}": functools.partial(CifarResNet, depth=depth)
        for depth in (20, 32, 44, 56, 110)
    },
    # CIFAR pre-activation ResNets (He et al. 2016b)
    **{
        f"preact_resnet{depth}": functools.partial(PreActResNet, depth=depth, block="basic")
        for depth in (20, 56, 110)
    },
    **{
        f"preact_resnet{depth}": functools.partial(PreActResNet, depth=depth, block="bottleneck")
        for depth in (164, 1001)
    },
    "wrn": WideResNet,  # WRN-depth-width: options depth (28) and width (10)
    # ImageNet ResNets (He et al. 2016a, table 1)
    **{
        f"resnet{depth}": functools.partial(ResNet, depth=depth) for depth in (18, 34, 50, 101, 152)
    },
    **{f"vgg{depth}": functools.partial(VGG, depth=depth) for depth in (11, 13, 16, 19)},
    "inception": InceptionNet,
    "bnn_mlp": BinarizedMLP,
    "bnn_vgg": BinarizedVGG,
}
MODEL_NAMES = tuple(MODELS)

# Fields every model has that build_model fills in itself rather than taking as model options.
BUILD_ARGUMENTS = ("num_classes", "layers")


def build_model(
    name: str,
    *,
    num_classes: int,
    norm: str = "batch",
    norm_kwargs: dict | None = None,
    activation: str = "relu",
    activation_kwargs: dict | None = None,
    weight_init: str | None = None,
    self_normalizing: bool = False,
    dropout: dict | None = None,
    stochastic_depth: float = 0.0,
    quantization: dict | None = None,
    dtype: Dtype = jnp.float32,
    batch_sizes: Sequence[int] = (),
    eval_batch_size: int | None = None,
    images_per_epoch: int | None = None,
    accumulation_steps: int = 1,
    frozen_statistics: bool = False,
    image_shape: tuple[int, ...] | None = None,
    **model_options,
) -> nn.Module:
    """Model `name` with the named normalization and activation everywhere.

    `weight_init`: by name (see ``bnresearch/layers/kit.py``), None for the default.
    `self_normalizing`: Klambauer et al.'s SELU network: needs activation 'selu', and sets
    LeCun-normal init for every weight layer and alpha-dropout for every dropout.
    `dropout`: drop rates at the 'input', 'hidden' and 'head' placements. `stochastic_depth`:
    1 - p_L (residual models only). `quantization`: the options of ``quantization_spec``
    (method, bits, ...). `dtype` is the compute dtype; parameters stay float32 and logits are
    float32.

    Raises a one-line UsageError naming the valid choices for an unknown model, normalization,
    activation, init, quantization method or option, for an invalid option value or combination,
    and for a normalization that cannot handle one of the model's widths (e.g. group norm with
    a group count that does not divide it).

    The facts of a run, where given, let the build check what depends on them, still before any
    compute: `batch_sizes` (every global batch a training step sees: a batch-size schedule has
    several) and `eval_batch_size` for normalizations that need particular batch sizes (ghost
    batch norm's virtual batches); `images_per_epoch`, the training images of an epoch
    (examples times batch augmentation's copies), for normalizations that count epochs
    (batch_layer); `accumulation_steps`, the forward passes of one optimizer update, for those
    that count updates (batch_renorm); `frozen_statistics`, whether training normalizes with the
    running statistics (fine-tuning's ``fine_tune.norm``: frozen, reestimate; normalizations
    without the field refuse it in ``check_frozen_statistics``); and with `image_shape` (H, W, C)
    the model
    is traced abstractly (shapes only) in training mode at each of `batch_sizes` and in
    evaluation mode at `eval_batch_size`, which raises the shape-dependent errors, e.g. batch
    statistics over one value per channel at batch size 1.
    """
    model = lookup("model", MODELS, name, model_options, reserved=BUILD_ARGUMENTS)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UsageError(f"dtype must be a floating-point dtype, got {dtype!r}")
    if self_normalizing:
        if activation != "selu":
            raise UsageError(
                f"model.self_normalizing needs model.activation 'selu', got {activation!r}"
            )
        if weight_init not in (None, "lecun_normal"):
            raise UsageError(
                f"model.self_normalizing uses lecun_normal init; model.weight_init="
                f"{weight_init!r} contradicts it"
            )
        weight_init = "lecun_normal"
    rates = dict(dropout or {})
    unknown = sorted(set(rates) - set(DROPOUT_PLACEMENTS))
    if unknown:
        raise UsageError(
            f"unknown model.dropout placement(s) {', '.join(unknown)}; valid: "
            f"{', '.join(DROPOUT_PLACEMENTS)}"
        )
    for placement in DROPOUT_PLACEMENTS:
        check_drop_rate(f"model.dropout.{placement}", rates.setdefault(placement, 0.0))
    check_drop_rate("model.stochastic_depth", stochastic_depth)
    spec = quantization_spec(**(quantization or {}))
    # LayerKit checks it as well; checked here so that its error comes before the lookups below.
    check_weight_init(weight_init)
    if spec.method == "none":
        conv_factory, dense_factory = plain_conv, plain_dense
    else:
        conv_factory, dense_factory = quantized_weight_layers(spec)
    norm_factory = bind_facts(
        get_normalization(norm, **(norm_kwargs or {})),
        images_per_epoch=images_per_epoch,
        accumulation_steps=accumulation_steps,
        frozen_statistics=frozen_statistics,
    )
    layers = LayerKit(
        norm_factory=norm_factory,
        activation_factory=get_activation(activation, **(activation_kwargs or {})),
        conv_factory=conv_factory,
        dense_factory=dense_factory,
        weight_init=weight_init,
        dtype=dtype,
        input_dropout=rates["input"],
        hidden_dropout=rates["hidden"],
        head_dropout=rates["head"],
        alpha_dropout=self_normalizing,
        stochastic_depth_rate=stochastic_depth,
    )
    # Last: a normalization that replaces other layers (weight norm's weight layers, FRN's
    # activation) sees the kit the config built and refuses what it cannot combine with.
    layers = norm_factory(parent=None).adapt_kit(layers)
    model = model(num_classes=num_classes, layers=layers)
    if stochastic_depth and not getattr(model, "has_residual_blocks", False):
        raise UsageError(
            f"model.stochastic_depth needs a model with residual blocks; {name!r} has none"
        )
    for num_features in model.normalized_features():
        check_normalization_features(layers.norm_factory, num_features)
    for batch_size in sorted(set(batch_sizes)):
        check_model_at_batch_size(model, batch_size, image_shape, eval_batch_size)
    return model


def stages(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """The model's stages, in order from the input to the logits: each a tuple of path patterns
    (``optim.groups.matches``) of its top-level layers. Every model has them and every parameter
    falls in exactly one; fine-tuning freezes "all but the last N" by them
    (``fine_tune.train_last_stages``), the last being the classifier alone."""
    return model.stages()


def check_frozen_statistics(norm: str) -> None:
    """Raises UsageError unless normalization `norm` can train with its running statistics
    frozen (and re-estimate them): those whose running statistics are plain EMAs of batch
    statistics."""
    valid = [
        name for name, entry in NORMALIZATIONS.items() if has_field(entry, "frozen_statistics")
    ]
    if norm not in valid:
        raise UsageError(
            f"model.norm {norm!r} has no running statistics to freeze or re-estimate; "
            f"fine_tune.norm frozen and reestimate work with: {', '.join(valid)}"
        )


def with_batch_statistics(model: nn.Module) -> nn.Module:
    """`model` with its normalizations using batch statistics in training (running ones frozen
    undone): the forward that re-estimating the population statistics runs."""
    norm_factory = bind_facts(model.layers.norm_factory, frozen_statistics=False)
    return model.clone(layers=dataclasses.replace(model.layers, norm_factory=norm_factory))


def trace_at_batch_sizes(
    model: nn.Module,
    image_shape: tuple[int, ...],
    batch_size: int,
    eval_batch_size: int | None = None,
) -> None:
    """Traces `model` on abstract images, as training's init and evaluation would call it:
    computes nothing, but raises what tracing raises (UsageErrors of the layers included)."""
    keys = {"params": jax.random.key(0), RNG_STREAM: jax.random.key(1)}
    images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=True), keys, images)
    if eval_batch_size is not None:
        state = {key: value for key, value in variables.items() if key in ("params", STATE)}
        jax.eval_shape(
            functools.partial(model.apply, train=False),
            state,
            jax.ShapeDtypeStruct((eval_batch_size, *image_shape), jnp.float32),
        )


def set_options(options: ml_collections.ConfigDict) -> dict:
    """The options a config actually sets: its option blocks hold a placeholder (None) for every
    option of every variant, and None means "the variant's own default"."""
    return {key: value for key, value in options.to_dict().items() if value is not None}


def model_from_config(
    model_config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    dtype: Dtype = jnp.float32,
    **facts,
) -> nn.Module:
    """``build_model`` from the config's ``model`` block (see ``bnresearch/config/defaults.py``)
    and the run's `facts` (batch_sizes, eval_batch_size, images_per_epoch, accumulation_steps,
    image_shape; see there)."""
    return build_model(
        model_config.name,
        num_classes=num_classes,
        norm=model_config.norm,
        norm_kwargs=set_options(model_config.norm_kwargs),
        activation=model_config.activation,
        activation_kwargs=set_options(model_config.activation_kwargs),
        weight_init=model_config.weight_init,
        self_normalizing=model_config.self_normalizing,
        dropout=model_config.dropout.to_dict(),
        stochastic_depth=model_config.stochastic_depth,
        quantization=set_options(model_config.quantization),
        dtype=dtype,
        **facts,
        **set_options(model_config.options),
    )


def check_model_config(
    model_config: ml_collections.ConfigDict, *, batch_sizes: Sequence[int], eval_batch_size: int
) -> None:
    """Raises a one-line UsageError for anything wrong with the config's ``model`` block that
    shows without data: names, options, option values, and batch sizes the normalization cannot
    take. Builds nothing that is kept and traces nothing."""
    model_from_config(
        model_config, num_classes=2, batch_sizes=batch_sizes, eval_batch_size=eval_batch_size
    )


def check_model_at_batch_size(
    model: nn.Module,
    batch_size: int,
    image_shape: tuple[int, ...] | None = None,
    eval_batch_size: int | None = None,
) -> None:
    """Raises UsageError if `model` cannot train on batches of `batch_size` images (or evaluate
    on `eval_batch_size`): its normalization's check and, given `image_shape`, an abstract trace
    (shapes only). ``build_model`` runs it at the run's batch sizes, preflight at the noise
    scale's sub-batches."""
    check_normalization_batch_sizes(model.layers.norm_factory, batch_size, eval_batch_size)
    if image_shape is not None:
        trace_at_batch_sizes(model, tuple(image_shape), batch_size, eval_batch_size)
