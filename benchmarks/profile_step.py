"""Where a train step's time goes: the library's compiled train step (as `train_step.py` builds
it) traced with `jax.profiler`, each XLA operation's time summed by what it computes.

    .venv/bin/python benchmarks/profile_step.py --models resnet20,cnn,resnet18

For each model it prints the step's wall time and a table: convolution forward, its input
gradient, its weight gradient, matmuls (dense layers and the patch-matmul convs), reductions
(normalization statistics, their gradients, the loss), element-wise work, and layout changes
(transposes and copies, with the element-wise work XLA fused into them), each in ms per step
and as a share of the operations' summed time. XLA's CPU runtime runs independent operations
on both cores at once, so the summed time can exceed the wall time. An operation is classified
from the optimized HLO: a fusion by the operations it contains (a convolution, else a dot, else
a reduction, else by its result: a transpose or copy, else element-wise); a convolution as the
weight gradient when its result has a kernel's shape, as the input gradient when JAX's metadata
places it in the backward pass (`transpose(jvp(...))`), else as the forward convolution.
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import statistics
import tempfile

import jax
import library_step

from bnresearch import host_allocator

# Trace events that are not XLA operations: the runtime's own spans and Python frames.
NOT_OPERATIONS = re.compile(
    r"^(\$|ThunkExecutor|SlinkyThreadPool|PjitFunction|ParseArguments|end: |CommonPjRt|PjRt)"
)
CATEGORIES = (
    "convolution forward",
    "convolution input gradient",
    "convolution weight gradient",
    "matmul (dense, patch-matmul convs)",
    "reductions",
    "element-wise",
    "layout changes (transposes, copies, and what XLA fused into them)",
)
INSTRUCTION_RE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* ([\w\-]+)\(")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,cnn,resnet18")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=5, help="traced steps (after 3 untimed)")
    args = parser.parse_args(argv)
    args.models = library_step.model_names(args.models, parser)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def _computations(hlo: str) -> dict[str, list[str]]:
    """The optimized module's computations by name: the lines of each."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            name = header.group(1)
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    return computations


def _instructions(lines: list[str]) -> dict[str, tuple[str, tuple[int, ...], str, str]]:
    """name -> (opcode, result dims, callee computation or '', the whole line)."""
    found = {}
    for line in lines:
        match = INSTRUCTION_RE.match(line)
        if match:
            name, _dtype, dims, opcode = match.groups()
            callee = re.search(r"calls=%([\w.\-]+)", line)
            shape = tuple(int(d) for d in dims.split(",") if d)
            found[name] = (opcode, shape, callee.group(1) if callee else "", line)
    return found


def _root_opcode(lines: list[str]) -> str:
    """The opcode of a computation's result (its ROOT line; a lone instruction's own)."""
    roots = [line for line in lines if "ROOT " in line] or lines
    match = INSTRUCTION_RE.match(roots[0]) if roots else None
    return match.group(4) if match else ""


def classify(hlo: str, kernel_shapes: set) -> dict[str, str]:
    """Each operation of the optimized module (by the name the profiler shows) -> a category."""
    computations = _computations(hlo)
    every = {}
    for lines in computations.values():
        every.update(_instructions(lines))
    categories = {}
    for name, (opcode, shape, callee, line) in every.items():
        body = _instructions(computations.get(callee, [])) if callee else {name: every[name]}
        ops = {op for op, *_ in body.values()}
        convolutions = [b for b in body.values() if b[0] == "convolution"]
        if convolutions:
            _, conv_shape, _, conv_line = convolutions[0]
            # XLA's rewrites of the weight gradient can drop JAX's metadata: its kernel-shaped
            # result (in any dimension order) is what tells it apart.
            if tuple(sorted(conv_shape)) in kernel_shapes:
                categories[name] = CATEGORIES[2]
            elif "transpose(jvp(" in conv_line:
                categories[name] = CATEGORIES[1]
            else:
                categories[name] = CATEGORIES[0]
        elif "dot" in ops:
            categories[name] = CATEGORIES[3]
        elif ops & {"reduce", "reduce-window"}:
            categories[name] = CATEGORIES[4]
        elif _root_opcode(computations.get(callee, [line])) in ("transpose", "copy"):
            categories[name] = CATEGORIES[6]
        else:
            categories[name] = CATEGORIES[5]
    return categories


def operation_times(trace_dir: pathlib.Path, steps: int) -> dict[str, float]:
    """Microseconds per step of each XLA operation in the trace."""
    trace = next(trace_dir.rglob("*.trace.json.gz"))
    with gzip.open(trace) as handle:
        events = json.load(handle)["traceEvents"]
    totals = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or NOT_OPERATIONS.match(name):
            continue
        totals[name] += event["dur"] / steps
    return totals


def profile(model: str, dtype: str, steps: int) -> tuple[float, dict[str, float]]:
    """The step's wall ms and ms per step by category."""
    case = library_step.MODEL_CASES[model]
    step = library_step.LibraryStep(case, case.default_batch_size, dtype)
    step.train(3)
    kernel_shapes = {
        tuple(sorted(leaf.shape)) for leaf in jax.tree.leaves(step._state.params) if leaf.ndim == 4
    }
    categories = classify(step._train.as_text(), kernel_shapes)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            step.train(steps)
        times = operation_times(pathlib.Path(trace_dir), steps)
    wall = [step.train(steps)[0] / steps * 1e3 for _ in range(3)]
    by_category = collections.Counter()
    for name, micros in times.items():
        by_category[categories.get(name, categories.get(re.sub(r"\.\d+$", "", name), ""))] += (
            micros / 1e3
        )
    unknown = by_category.pop("", 0.0)
    if unknown:
        by_category["other (not in the optimized HLO)"] = unknown
    return statistics.median(wall), dict(by_category)


def table(model: str, dtype: str, wall_ms: float, by_category: dict[str, float]) -> str:
    case = library_step.MODEL_CASES[model]
    total = sum(by_category.values())
    lines = [
        f"{model}, batch {case.default_batch_size}, {dtype}: {wall_ms:.1f} ms per step wall "
        f"({case.default_batch_size / wall_ms * 1e3:,.0f} images/s); operations sum to "
        f"{total:.1f} ms",
        "",
        "| operations | ms/step | share |",
        "|---|---|---|",
    ]
    order = [c for c in CATEGORIES if c in by_category] + sorted(set(by_category) - set(CATEGORIES))
    for category in order:
        ms = by_category[category]
        lines.append(f"| {category} | {ms:.1f} | {100 * ms / total:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    for model in args.models:
        wall_ms, by_category = profile(model, args.dtype, args.steps)
        print(table(model, args.dtype, wall_ms, by_category))
        print()


if __name__ == "__main__":
    main()
