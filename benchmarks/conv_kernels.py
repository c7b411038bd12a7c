"""Each convolution of ResNet-20 at batch 128 timed alone, forward and both gradients, through XLA
(with the kit's XLA options) and, with `--peer torch`, through PyTorch's eager kernels:

    .venv/bin/python benchmarks/conv_kernels.py --peer torch

A train step runs every conv forward, its weight gradient, and its input gradient except for the
stem's (the images need none). The table gives each distinct conv (its input, output channels,
kernel, stride and how often ResNet-20 has it), the milliseconds of one call of each of the three
per framework, and the sum over the model, counted as a train step counts them: where the step's
distance to PyTorch lies, kernel by kernel. Every call is timed as the median of `--repeats`
rounds of `--calls` calls, each framework in turn.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax
import numpy as np

from bnresearch import host_allocator  # the import applies the kit's XLA options

BATCH = 128
OPERATIONS = ("forward", "input gradient", "weight gradient")


@dataclasses.dataclass(frozen=True)
class Conv:
    size: int  # input height = width
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    count: int  # how often ResNet-20 (projection shortcuts) has it
    needs_input_gradient: bool = True  # False for the stem: the images need none

    def label(self) -> str:
        return (
            f"{self.size}x{self.size}x{self.in_channels} -> {self.out_channels}, "
            f"{self.kernel}x{self.kernel} stride {self.stride}"
        )


# ResNet-20 as benchmarks/train_step.py runs it (projection shortcuts): the stem, 3 stages of
# 3 basic blocks (16, 32, 64 channels), stride 2 and a 1x1 projection at stages 2 and 3.
RESNET20 = (
    Conv(32, 3, 16, 3, 1, 1, needs_input_gradient=False),
    Conv(32, 16, 16, 3, 1, 6),
    Conv(32, 16, 32, 3, 2, 1),
    Conv(32, 16, 32, 1, 2, 1),
    Conv(16, 32, 32, 3, 1, 5),
    Conv(16, 32, 64, 3, 2, 1),
    Conv(16, 32, 64, 1, 2, 1),
    Conv(8, 64, 64, 3, 1, 5),
)


def arrays(conv: Conv, seed: int = 0) -> dict:
    """Standard-normal input (NHWC), kernel (HWIO) and output gradient (NHWC)."""
    rng = np.random.default_rng(seed)
    out_size = -(-conv.size // conv.stride)
    shapes = {
        "x": (BATCH, conv.size, conv.size, conv.in_channels),
        "w": (conv.kernel, conv.kernel, conv.in_channels, conv.out_channels),
        "dy": (BATCH, out_size, out_size, conv.out_channels),
    }
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


class XlaConv:
    """The three programs as JAX builds them for a train step: the forward conv (padded by
    kernel // 2 on each side, as the library's convs are) and its VJP's two halves."""

    name = "bnresearch"

    def __init__(self, conv: Conv, data: dict):
        pad = conv.kernel // 2
        stride = (conv.stride, conv.stride)

        def forward(x, w):
            return jax.lax.conv_general_dilated(
                x, w, stride, ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        x, w, dy = (jax.device_put(data[name]) for name in ("x", "w", "dy"))
        self.calls = {
            "forward": (jax.jit(forward), (x, w)),
            "input gradient": (
                jax.jit(lambda x, w, dy: jax.vjp(lambda x: forward(x, w), x)[1](dy)[0]),
                (x, w, dy),
            ),
            "weight gradient": (
                jax.jit(lambda x, w, dy: jax.vjp(lambda w: forward(x, w), w)[1](dy)[0]),
                (x, w, dy),
            ),
        }

    def time(self, operation: str, calls: int) -> float:
        function, arguments = self.calls[operation]
        jax.block_until_ready(function(*arguments))  # compiles
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
        stride, pad = [conv.stride] * 2, [conv.kernel // 2] * 2
        backward = torch.ops.aten.convolution_backward

        def gradient(which):
            return lambda: backward(dy, x, w, None, stride, pad, [1, 1], False, [0, 0], 1, which)

        self.calls = {
            "forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad),
            "input gradient": gradient([True, False, False]),
            "weight gradient": gradient([False, True, False]),
        }

    def time(self, operation: str, calls: int) -> float:
        function = self.calls[operation]
        with self.torch.no_grad():
            function()
            start = time.perf_counter()
            for _ in range(calls):
                function()
        return (time.perf_counter() - start) / calls


def measure(conv: Conv, frameworks, calls: int, repeats: int) -> dict:
    """(framework, operation) -> median seconds per call; frameworks alternate per round."""
    data = arrays(conv)
    sides = [framework(conv, data) for framework in frameworks]
    rounds = {(side.name, op): [] for side in sides for op in OPERATIONS}
    for _ in range(repeats):
        for operation in OPERATIONS:
            for side in sides:
                rounds[side.name, operation].append(side.time(operation, calls))
    return {key: statistics.median(seconds) for key, seconds in rounds.items()}


def table(results: list[tuple[Conv, dict]], names: list[str]) -> str:
    columns = [f"{op} ms ({name})" for op in OPERATIONS for name in names]
    lines = ["| conv | count | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    totals = {(name, op): 0.0 for name in names for op in OPERATIONS}
    for conv, seconds in results:
        cells = []
        for operation in OPERATIONS:
            used = operation != "input gradient" or conv.needs_input_gradient
            for name in names:
                milliseconds = 1e3 * seconds[name, operation]
                cells.append(f"{milliseconds:.2f}" if used else f"({milliseconds:.2f})")
                if used:
                    totals[name, operation] += conv.count * milliseconds
        lines.append(f"| {conv.label()} | {conv.count} | " + " | ".join(cells) + " |")
    cells = [f"**{totals[name, op]:.1f}**" for op in OPERATIONS for name in names]
    lines.append("| ResNet-20's train step (count x ms) | | " + " | ".join(cells) + " |")
    summary = ", ".join(
        f"{name} {sum(totals[name, op] for op in OPERATIONS):.1f} ms" for name in names
    )
    return "\n".join(lines) + f"\n\nAll convolutions of one train step: {summary}."


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=("none", "torch"), default="none")
    parser.add_argument("--calls", type=int, default=10, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is shown")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    frameworks = [XlaConv]
    if args.peer == "torch":
        try:
            import torch
        except ModuleNotFoundError:
            sys.exit(
                "--peer torch needs torch: .venv/bin/pip install -r benchmarks/requirements.txt"
            )
        torch.set_num_threads(os.cpu_count())  # as benchmarks/torch_peer.py
        frameworks.append(TorchConv)
    results = []
    for conv in RESNET20:
        print(f"{conv.label()} ...", flush=True)
        results.append((conv, measure(conv, frameworks, args.calls, args.repeats)))
    print()
    print(table(results, [framework.name for framework in frameworks]))


if __name__ == "__main__":
    main()
