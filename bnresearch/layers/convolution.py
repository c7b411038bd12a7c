"""The convolution every weight layer of the kit computes (``nn.Conv``'s, weight normalization's,
the quantized layers'): ``lax.conv_general_dilated``, except on the smallest feature maps.

Where a conv's output has at most ``PATCH_MATMUL_MAX_POSITIONS`` spatial positions (the 2x2 maps
at the end of the quickstart CNN, of ResNet-18 on 64x64 images, of VGG on CIFAR), it is computed
as one matmul of the input's patches with the flattened kernel. The two are the same sum in
another order (they agree to float rounding). XLA's CPU backend rewrites such convs, whose window
covers most of the padded input, into a form it runs with a generic loop, and there the matmul is
much faster (train step, forward and both gradients, batch 64, float32, 2-core CPU, measured by
``benchmarks/train_step.py``'s profile, see ``benchmarks/README.md``):

======================  ==========  ============
conv (input -> output)  XLA conv    patch matmul
======================  ==========  ============
2x2x128 -> 2x2x128      32.8 ms     3.0 ms
4x4x64 -> 2x2x128, s2   8.0 ms      1.4 ms
4x4x64 -> 4x4x64        1.7 ms      2.9 ms
======================  ==========  ============

Larger maps stay with XLA's convolution, which is faster there. The patches of a 2x2 output are at
most 4 x window copies of the input, so the rewrite costs no memory worth counting. The choice
depends on shapes only, so it is the same on every backend and every run of a config.

Under ``jax.vmap`` over a population of runs (``bnresearch/train/population.py``) each member has
its own kernel, and JAX's batching rule turns the conv into one grouped conv of all members, which
XLA's CPU backend runs slowly (the quickstart CNN, 8 members: 40 ms a step against 24 ms for
one conv per member). Inside ``convs_per_member()`` the conv and its two gradients are computed
member by member instead, each the conv a single run computes.
"""

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

# Convs with at most this many output positions are computed as patch matmuls (see above).
PATCH_MATMUL_MAX_POSITIONS = 4


def _channels_last(dimension_numbers, ndim: int) -> bool:
    """Whether `dimension_numbers` (any form lax accepts) is (N, spatial..., C) inputs and
    outputs with a (spatial..., C_in, C_out) kernel, the layout every layer of the kit uses."""
    numbers = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    channels_last = (0, ndim - 1, *range(1, ndim - 1))
    kernel = (ndim - 1, ndim - 2, *range(ndim - 2))
    return numbers == lax.ConvDimensionNumbers(channels_last, kernel, channels_last)


def _patch_matmul(lhs, rhs, window_strides: Sequence[int], pads, out_shape, precision):
    """The conv of channels-last `lhs` with `rhs` as (patches of lhs) @ (rhs flattened), its
    output's spatial shape being `out_shape`."""
    window = rhs.shape[:-2]
    padded = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    # One slice per window offset, channels innermost: the order of rhs.reshape(-1, C_out).
    patches = [
        lax.slice(
            padded,
            (0, *offset, 0),
            (
                padded.shape[0],
                *(o + (n - 1) * s + 1 for o, n, s in zip(offset, out_shape, window_strides)),
                padded.shape[-1],
            ),
            (1, *window_strides, 1),
        )
        for offset in itertools.product(*(range(extent) for extent in window))
    ]
    return jnp.matmul(
        jnp.concatenate(patches, axis=-1), rhs.reshape(-1, rhs.shape[-1]), precision=precision
    )


_PER_MEMBER = contextvars.ContextVar("convs_per_member", default=False)


@contextlib.contextmanager
def convs_per_member():
    """While a population's step is traced: vmapped convs run one per member (module docstring)."""
    token = _PER_MEMBER.set(True)
    try:
        yield
    finally:
        _PER_MEMBER.reset(token)


def _one_call_per_member(fn):
    """`fn` whose batching rule calls it once per member and stacks the results."""
    batched_fn = custom_vmap(fn)

    @batched_fn.def_vmap
    def rule(axis_size, in_batched, *args):
        results = [
            fn(*(arg[member] if batched else arg for arg, batched in zip(args, in_batched)))
            for member in range(axis_size)
        ]
        stacked = jax.tree.map(lambda *values: jnp.stack(values), *results)
        return stacked, jax.tree.map(lambda _: True, stacked)

    return batched_fn


def _conv_per_member(conv):
    """`conv(lhs, rhs)` differentiable, with forward and backward one call per member under vmap
    (custom_vmap has no transpose, so the gradient is given by a custom_vjp)."""
    forward = _one_call_per_member(conv)
    backward = _one_call_per_member(lambda lhs, rhs, g: jax.vjp(conv, lhs, rhs)[1](g))

    @jax.custom_vjp
    def member_conv(lhs, rhs):
        return forward(lhs, rhs)

    member_conv.defvjp(
        lambda lhs, rhs: (forward(lhs, rhs), (lhs, rhs)), lambda res, g: backward(*res, g)
    )
    return member_conv


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated``, with the same arguments and result; channels-last convs
    without dilation or groups whose output is tiny go through ``_patch_matmul`` (module
    docstring). ``nn.Conv(conv_general_dilated=...)`` takes it as is."""
    conv = functools.partial(
        _conv,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if _PER_MEMBER.get():
        return _conv_per_member(conv)(lhs, rhs)
    return conv(lhs, rhs)


def _conv(lhs, rhs, **params) -> jax.Array:
    """The conv itself, `params` those of ``lax.conv_general_dilated``: a patch matmul for tiny
    outputs (module docstring), else XLA's."""
    window_strides, padding = params["window_strides"], params["padding"]
    window = rhs.shape[:-2] if rhs.ndim >= 3 else ()
    plain = (
        lhs.ndim >= 3
        and _channels_last(params["dimension_numbers"], lhs.ndim)
        and all(d == 1 for d in params["lhs_dilation"] or ())
        and all(d == 1 for d in params["rhs_dilation"] or ())
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
        and params["preferred_element_type"] is None
    )
    if plain:
        pads = (
            lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
            if isinstance(padding, str)
            else [tuple(pad) for pad in padding]
        )
        out_shape = [
            (size + low + high - extent) // stride + 1
            for size, (low, high), extent, stride in zip(
                lhs.shape[1:-1], pads, window, window_strides, strict=True
            )
        ]
        if all(n > 0 for n in out_shape) and math.prod(out_shape) <= PATCH_MATMUL_MAX_POSITIONS:
            return _patch_matmul(lhs, rhs, window_strides, pads, out_shape, params["precision"])
    return lax.conv_general_dilated(lhs, rhs, **params)
