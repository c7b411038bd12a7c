"""The rewrite that gives a loop body's convolutions the order XLA's CPU backend runs fast: every
convolution of the program ends up in that order, inside jitted functions too, and the values
are those of the program as written."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnresearch.train.canonical_convolutions import canonical_convolutions

CANONICAL = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def convolution_orders(fn, *args):
    """The dimension numbers of every convolution of `fn`'s program, jitted calls included."""

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive is lax.conv_general_dilated_p:
                yield eqn.params["dimension_numbers"]
            if eqn.primitive.name == "jit":
                yield from collect(eqn.params["jaxpr"].jaxpr)

    return list(collect(jax.make_jaxpr(fn)(*args).jaxpr))


@jax.jit
def conv(x, kernel):
    return lax.conv_general_dilated(
        x, kernel, (2, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def both_gradients(x, kernel):
    # JAX writes the input's and the kernel's gradients as convolutions in other orders.
    return jax.grad(lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel))), argnums=(0, 1))(x, kernel)


def test_the_gradients_convolutions_become_canonical_with_the_same_values():
    x = jax.random.normal(jax.random.key(0), (4, 6, 5, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 2, 3, 8))
    assert set(convolution_orders(both_gradients, x, kernel)) - {CANONICAL}  # some are not
    rewritten = canonical_convolutions(both_gradients)
    assert set(convolution_orders(rewritten, x, kernel)) == {CANONICAL}
    for got, expected in zip(jax.jit(rewritten)(x, kernel), jax.jit(both_gradients)(x, kernel)):
        np.testing.assert_array_equal(got, expected)
