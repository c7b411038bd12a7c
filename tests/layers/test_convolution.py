"""The kit's convolution against a direct NumPy convolution, and its gradients against XLA's."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from bnresearch.layers.convolution import (
    PATCH_MATMUL_MAX_POSITIONS,
    conv_general_dilated,
    convs_per_member,
)

CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")


def numpy_conv(x, w, strides, pads):
    """out[n, i, j, o] = sum over (a, b, c) of padded_x[n, i*s + a, j*s + b, c] w[a, b, c, o]."""
    padded = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    kh, kw = w.shape[:2]
    out_h = (padded.shape[1] - kh) // strides[0] + 1
    out_w = (padded.shape[2] - kw) // strides[1] + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
    for i, j in itertools.product(range(out_h), range(out_w)):
        window = padded[
            :, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw
        ]
        out[:, i, j] = np.einsum("nabc,abco->no", window, w)
    return out


# (input side, kernel side, stride, padding): outputs of 1 to 4 positions take the patch matmul,
# the others XLA's convolution.
CASES = [
    (2, 3, 1, "SAME"),
    (4, 3, 2, "SAME"),
    (3, 3, 2, "SAME"),
    (2, 1, 1, "VALID"),
    (4, 3, 1, "VALID"),
    (5, 3, 2, ((0, 1), (2, 0))),
    (1, 3, 1, "SAME"),
    (6, 3, 1, "SAME"),
    (8, 3, 2, "SAME"),
]


def _pads(side, kernel, stride, padding):
    if isinstance(padding, str):
        return lax.padtype_to_pads((side, side), (kernel, kernel), (stride, stride), padding)
    return padding


@pytest.mark.parametrize("side,kernel,stride,padding", CASES)
def test_equals_a_direct_convolution(side, kernel, stride, padding):
    rng = np.random.default_rng(side * 10 + kernel)
    x = rng.standard_normal((3, side, side, 5)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 5, 4)).astype(np.float32)
    got = conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=CHANNELS_LAST)
    want = numpy_conv(x, w, (stride, stride), _pads(side, kernel, stride, padding))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side,kernel,stride,padding", CASES)
def test_gradients_equal_xlas(side, kernel, stride, padding):
    rng = np.random.default_rng(side + kernel)
    x = jnp.asarray(rng.standard_normal((2, side, side, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 2)), jnp.float32)

    def loss(conv, x, w):
        return jnp.sum(
            jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=CHANNELS_LAST))
        )

    got = jax.grad(lambda x, w: loss(conv_general_dilated, x, w), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: loss(lax.conv_general_dilated, x, w), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


def _uses_xla_conv(side, kernel, stride):
    x = jnp.zeros((2, side, side, 3))
    w = jnp.zeros((kernel, kernel, 3, 2))
    jaxpr = jax.make_jaxpr(
        lambda x, w: conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=CHANNELS_LAST
        )
    )(x, w)
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.eqns)


def test_only_outputs_of_at_most_four_positions_become_matmuls():
    assert PATCH_MATMUL_MAX_POSITIONS == 4
    assert not _uses_xla_conv(2, 3, 1)  # 2x2 output
    assert not _uses_xla_conv(4, 3, 2)  # 2x2 output, stride 2
    assert _uses_xla_conv(3, 3, 1)  # 3x3 output
    assert _uses_xla_conv(32, 3, 1)


def test_dilated_and_grouped_convolutions_stay_xlas():
    x = jnp.ones((1, 2, 2, 4))
    w = jnp.ones((3, 3, 2, 4))
    grouped = jax.make_jaxpr(
        lambda x, w: conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=CHANNELS_LAST, feature_group_count=2
        )
    )(x, w)
    assert any(eqn.primitive.name == "conv_general_dilated" for eqn in grouped.eqns)


@pytest.mark.parametrize("side,kernel,stride,padding", [(2, 3, 1, "SAME"), (6, 3, 2, "SAME")])
def test_convs_per_member_are_each_members_own_conv_with_its_gradients(
    side, kernel, stride, padding
):
    # A population's vmap over members, each with its own kernel: inside convs_per_member the
    # conv and both its gradients are, bitwise, those of each member's conv computed alone.
    members, batch, c_in, c_out = 3, 4, 2, 5
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((members, batch, side, side, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((members, kernel, kernel, c_in, c_out)), jnp.float32)

    def conv(x, w):
        return conv_general_dilated(
            x, w, (stride, stride), padding, dimension_numbers=CHANNELS_LAST
        )

    def loss_and_grads(x, w):
        return jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)

    def population(x, w):
        with convs_per_member():
            return jax.vmap(loss_and_grads)(x, w)

    together = jax.jit(population)(x, w)
    for member in range(members):
        alone = jax.jit(loss_and_grads)(x[member], w[member])
        for got, expected in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(got[member], expected)
    # And the forward pass against NumPy, member by member.
    with convs_per_member():
        out = jax.jit(jax.vmap(conv))(x, w)
    pads = lax.padtype_to_pads((side, side), (kernel, kernel), (stride, stride), padding)
    for member in range(members):
        np.testing.assert_allclose(
            out[member],
            numpy_conv(np.asarray(x[member]), np.asarray(w[member]), (stride,) * 2, pads),
            rtol=1e-5,
            atol=1e-5,
        )
