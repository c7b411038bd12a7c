"""Each convolution of a benchmarked model timed alone, forward and both gradients, through XLA
(with the kit's XLA options) and, with `--peer torch`, through PyTorch's eager kernels:

    .venv/bin/python benchmarks/conv_kernels.py --models resnet20,cnn,resnet18 --peer torch

The convolutions are read from the library's own model, as `benchmarks/train_step.py` builds it
(`library_step.build_setup`), at the model's batch size: every ``conv_general_dilated`` of the
training forward pass, grouped by shape, stride and padding, with how often the model has it.
The library computes convs with at most 4 output positions as a matmul of the input's patches
(bnresearch/layers/convolution.py); they are no convolution in XLA and are not listed. A train
step runs every listed conv forward, its weight gradient, and its input gradient except where
the input is the images (the stem's, parenthesized). The table gives the milliseconds of one
call of each per framework and the sums over one train step: where the step's distance to
PyTorch lies, kernel by kernel. Each number is the median of `--repeats` rounds of `--calls`
calls, the frameworks in turn.
"""

import argparse
import collections
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import library_step
import numpy as np
from train_step import load_peer

from bnresearch import host_allocator  # the import applies the kit's XLA options
from bnresearch.layers.convolution import conv_general_dilated
from bnresearch.train import steps

OPERATIONS = ("forward", "input gradient", "weight gradient")
CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")  # every conv of the kit


@dataclasses.dataclass(frozen=True)
class Conv:
    input_shape: tuple[int, ...]  # (N, H, W, C_in)
    kernel_shape: tuple[int, ...]  # (KH, KW, C_in, C_out)
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (low, high) per spatial axis

    def label(self) -> str:
        _, height, width, channels = self.input_shape
        kh, kw, _, out_channels = self.kernel_shape
        stride = "x".join(map(str, self.strides))
        return f"{height}x{width}x{channels} -> {out_channels}, {kh}x{kw} stride {stride}"


def _convs_in(jaxpr, found: list) -> list:
    """The conv equations of `jaxpr` and of the jaxprs inside it, in order."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    _convs_in(inner, found)
    return found


def model_convs(case: library_step.ModelCase, batch_size: int) -> collections.Counter:
    """Conv -> how often the training forward pass of `case`'s model computes it."""
    setup = library_step.build_setup(case, batch_size, "float32")
    key = jax.random.PRNGKey(library_step.SEED)
    images = jax.ShapeDtypeStruct((batch_size, *case.image_shape), jnp.float32)
    state = jax.eval_shape(setup.init, key, images)
    batch = {"image": images, "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    forward = functools.partial(steps.objective, model=setup.model, label_smoothing=0.0)
    jaxpr = jax.make_jaxpr(forward)(state.params, state.batch_stats, batch, key)
    convs = collections.Counter()
    for eqn in _convs_in(jaxpr.jaxpr, []):
        numbers = eqn.params["dimension_numbers"]
        if numbers != jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, CHANNELS_LAST):
            raise ValueError(f"a conv that is not channels-last: {numbers}")
        convs[
            Conv(
                tuple(eqn.invars[0].aval.shape),
                tuple(eqn.invars[1].aval.shape),
                tuple(eqn.params["window_strides"]),
                tuple(map(tuple, eqn.params["padding"])),
            )
        ] += 1
    return convs


def arrays(conv: Conv) -> dict:
    """Standard-normal input, kernel and output gradient, channels-last."""
    rng = np.random.default_rng(library_step.SEED)
    x = rng.standard_normal(conv.input_shape, dtype=np.float32)
    w = rng.standard_normal(conv.kernel_shape, dtype=np.float32)
    y = jax.eval_shape(lambda x, w: _forward(conv, x, w), x, w)
    return {"x": x, "w": w, "dy": rng.standard_normal(y.shape, dtype=np.float32)}


def _forward(conv: Conv, x, w):
    """The conv as every layer of the kit computes it."""
    return conv_general_dilated(x, w, conv.strides, conv.padding, dimension_numbers=CHANNELS_LAST)


class XlaConv:
    """The three programs as JAX builds them for a train step: the forward conv and its VJP's
    two halves, each jitted alone."""

    name = "bnresearch"

    def __init__(self, conv: Conv, data: dict):
        forward = functools.partial(_forward, conv)
        x, w, dy = (jax.device_put(data[name]) for name in ("x", "w", "dy"))
        input_gradient = lambda x, w, dy: jax.vjp(lambda x: forward(x, w), x)[1](dy)[0]
        weight_gradient = lambda x, w, dy: jax.vjp(lambda w: forward(x, w), w)[1](dy)[0]
        self.calls = {
            "forward": (jax.jit(forward), (x, w)),
            "input gradient": (jax.jit(input_gradient), (x, w, dy)),
            "weight gradient": (jax.jit(weight_gradient), (x, w, dy)),
        }

    def time(self, operation: str, calls: int) -> float:
        function, arguments = self.calls[operation]
        jax.block_until_ready(function(*arguments))  # compiles, and one untimed call
        start = time.perf_counter()
        results = [function(*arguments) for _ in range(calls)]
        jax.block_until_ready(results)
        return (time.perf_counter() - start) / calls


class TorchConv:
    """The same three computations through PyTorch's eager CPU kernels (NCHW)."""

    name = "torch"

    def __init__(self, conv: Conv, data: dict):
        import torch

        self.torch = torch
        to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
        x, dy = to_nchw(data["x"]), to_nchw(data["dy"])
        w = torch.from_numpy(np.ascontiguousarray(data["w"].transpose(3, 2, 0, 1)))
        if any(low != high for low, high in conv.padding):
            # torch pads both sides alike: pad the input once, outside the timed calls.
            pads = [side for low_high in reversed(conv.padding) for side in low_high]
            x, padding = torch.nn.functional.pad(x, pads), [0, 0]
        else:
            padding = [low for low, _ in conv.padding]
        stride = list(conv.strides)
        backward = torch.ops.aten.convolution_backward

        def gradient(which):
            return lambda: backward(
                dy, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, which
            )

        self.calls = {
            "forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=padding),
            "input gradient": gradient([True, False, False]),
            "weight gradient": gradient([False, True, False]),
        }

    def time(self, operation: str, calls: int) -> float:
        function = self.calls[operation]
        with self.torch.no_grad():
            function()  # one untimed call, as on XLA's side
            start = time.perf_counter()
            for _ in range(calls):
                function()
        return (time.perf_counter() - start) / calls


def measure(conv: Conv, frameworks, calls: int, repeats: int) -> dict:
    """(framework, operation) -> median seconds per call; frameworks alternate per round."""
    data = arrays(conv)
    sides = [framework(conv, data) for framework in frameworks]
    rounds = collections.defaultdict(list)
    for _ in range(repeats):
        for operation in OPERATIONS:
            for side in sides:
                rounds[side.name, operation].append(side.time(operation, calls))
    return {key: statistics.median(seconds) for key, seconds in rounds.items()}


def table(model: str, image_shape, results: list, names: list[str]) -> str:
    """The markdown table of one model: a row per conv, then the sums over one train step."""
    columns = [f"{op} ms ({name})" for op in OPERATIONS for name in names]
    lines = ["| conv | count | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    totals = collections.Counter()
    for conv, count, seconds in results:
        reads_images = conv.input_shape[1:] == tuple(image_shape)  # no input gradient needed
        cells = []
        for operation in OPERATIONS:
            used = operation != "input gradient" or not reads_images
            for name in names:
                milliseconds = 1e3 * seconds[name, operation]
                cells.append(f"{milliseconds:.2f}" if used else f"({milliseconds:.2f})")
                totals[name, operation] += count * milliseconds if used else 0.0
        lines.append(f"| {conv.label()} | {count} | " + " | ".join(cells) + " |")
    cells = [f"**{totals[name, op]:.1f}**" for op in OPERATIONS for name in names]
    lines.append(f"| {model}'s train step (count x ms) | | " + " | ".join(cells) + " |")
    summary = ", ".join(
        f"{name} {sum(totals[name, op] for op in OPERATIONS):.1f} ms" for name in names
    )
    return "\n".join(lines) + f"\n\nAll listed convolutions of one train step: {summary}."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="resnet20",
        help=f"comma-separated, of {', '.join(library_step.MODEL_CASES)}",
    )
    parser.add_argument("--peer", choices=("none", "torch"), default="none")
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is shown")
    args = parser.parse_args(argv)
    models = library_step.model_names(args.models, parser)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    frameworks = [XlaConv]
    peer = load_peer(args.peer)
    if peer is not None:
        peer.use_all_cores()  # one intra-op thread per core, as in train_step.py
        frameworks.append(TorchConv)
    names = [framework.name for framework in frameworks]
    for model in models:
        case = library_step.MODEL_CASES[model]
        results = []
        for conv, count in model_convs(case, case.default_batch_size).items():
            print(f"{model}: {conv.label()} ...", flush=True)
            results.append((conv, count, measure(conv, frameworks, args.calls, args.repeats)))
        print(f"\n{model}, batch {case.default_batch_size}, float32:\n")
        print(table(model, case.image_shape, results, names))
        print()


if __name__ == "__main__":
    main()
