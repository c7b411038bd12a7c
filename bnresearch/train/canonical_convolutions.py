"""Convolutions in the dimension order XLA's CPU backend runs fast, for a train step that runs in
a compiled loop (a call of `steps_per_call` > 1 updates).

XLA's CPU backend runs a convolution with its fast library kernels only when the input and the
output are (batch, spatial..., feature) and the kernel (spatial..., in, out). Its pass that brings
other convolutions to that order by transposing their operands (`ConvCanonicalization`) visits
the top level of a program only, not the body of a loop: there the gradients' convolutions, which
JAX writes in other orders, fall to a generic loop, about three times slower for the quickstart
CNN and summing in another order, so that a scan of K train steps would not give the numbers of
K calls of one. `canonical_convolutions(fn)` makes that pass's rewrite in `fn`'s traced program,
before XLA sees it: the same transposes around the same convolution, so that in a scan the step
compiles as it does at the top level (`tests/train/test_steps_per_call.py` checks that the
numbers are bitwise those of single steps).
"""

import jax
import numpy as np
from jax import lax
from jax.extend import core


def _canonical(ndim: int) -> lax.ConvDimensionNumbers:
    """(batch, spatial..., feature) input and output, (spatial..., in, out) kernel."""
    channels_last = (0, ndim - 1, *range(1, ndim - 1))
    return lax.ConvDimensionNumbers(
        channels_last, (ndim - 1, ndim - 2, *range(ndim - 2)), channels_last
    )


def _to_channels_last(spec) -> tuple[int, ...]:
    """The permutation to (batch, spatial..., feature) of an operand laid out as `spec`."""
    return (spec[0], *spec[2:], spec[1])


def _canonical_convolution(lhs, rhs, *, dimension_numbers, **params):
    """The convolution as XLA's pass rewrites it: the operands transposed to the canonical order,
    the result transposed back."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    out = lax.conv_general_dilated_p.bind(
        lhs.transpose(_to_channels_last(lhs_spec)),
        rhs.transpose((*rhs_spec[2:], rhs_spec[1], rhs_spec[0])),
        dimension_numbers=_canonical(lhs.ndim),
        **params,
    )
    return out.transpose(tuple(int(axis) for axis in np.argsort(_to_channels_last(out_spec))))


def _evaluate(jaxpr, consts, *args) -> list:
    """`jaxpr` traced again on `args`, with every convolution in the canonical order; the calls
    of jitted functions are inlined (XLA inlines them too), so theirs as well."""
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    read = lambda var: var.val if isinstance(var, core.Literal) else env[var]
    for eqn in jaxpr.eqns:
        inputs = [read(var) for var in eqn.invars]
        if eqn.primitive is lax.conv_general_dilated_p and eqn.params[
            "dimension_numbers"
        ] != _canonical(eqn.invars[0].aval.ndim):
            outputs = [_canonical_convolution(*inputs, **eqn.params)]
        elif eqn.primitive.name == "jit":
            inner = eqn.params["jaxpr"]
            outputs = _evaluate(inner.jaxpr, inner.consts, *inputs)
        else:
            with eqn.ctx.manager:
                outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
            outputs = outputs if eqn.primitive.multiple_results else [outputs]
        env.update(zip(eqn.outvars, outputs))
    return [read(var) for var in jaxpr.outvars]


def canonical_convolutions(fn):
    """`fn` with every convolution of its program in the order XLA's CPU backend runs fast."""

    def rewritten(*args):
        traced, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        outputs = _evaluate(traced.jaxpr, traced.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), outputs)

    return rewritten
