"""Training-step benchmark: bnresearch's compiled train and eval steps per model x batch size x
compute dtype, optionally against a PyTorch eager peer in the same process, and the input
pipeline's throughput. Prints markdown tables and a line describing the machine.

    .venv/bin/python benchmarks/train_step.py --peer torch --pipeline \\
        --image_folder ../shared/data/cifar10-jpeg-subset --json results.json

Every flag and column is described in benchmarks/README.md.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
from importlib import metadata

import input_pipeline
import jax
import library_step

from bnresearch import host_allocator

DTYPES = ("float32", "bfloat16")
# Batch norm, each model's own; 'none' shows what the step costs without normalization (both
# frameworks' convs then get a bias), i.e. how far the convolutions alone are from the peer's.
NORMS = ("batch", "none")
MIB = 2**20
DIGITS_BATCH_SIZE = 64  # the quickstart's (configs/quickstart.py)
FOLDER_BATCH_SIZE = 128  # ResNet-20's on CIFAR-sized images


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default="resnet20,cnn,resnet18",
        help=f"comma-separated, of {', '.join(library_step.MODEL_CASES)}",
    )
    parser.add_argument(
        "--batch_sizes",
        default="",
        help="comma-separated; default: each model's own (resnet20 and resnet18 128, cnn 64)",
    )
    parser.add_argument(
        "--dtypes",
        default="float32",
        help=f"comma-separated compute dtypes, of {', '.join(DTYPES)}",
    )
    parser.add_argument(
        "--norms",
        default="batch",
        help=f"comma-separated normalizations of the models, of {', '.join(NORMS)}",
    )
    parser.add_argument("--steps", type=int, default=20, help="steps (batches) per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps before the repeats (at least 1)"
    )
    parser.add_argument(
        "--peer",
        choices=("none", "torch"),
        default="none",
        help="also run the PyTorch eager peer, alternating repeats",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also measure the input pipeline (digits, and --image_folder)",
    )
    parser.add_argument(
        "--image_folder",
        default="",
        help="with --pipeline: an image folder (train/<class>/*, test/<class>/*)",
    )
    parser.add_argument(
        "--data_dir",
        default="",
        help="with --pipeline: where datasets are prepared; default: a "
        "temporary directory, removed at the end",
    )
    parser.add_argument(
        "--matmul_size",
        type=int,
        default=2048,
        help="side of the float32 matmul that measures the machine's FLOP/s",
    )
    parser.add_argument("--json", default="", help="also write every number to this file")
    args = parser.parse_args(argv)
    args.models = _names(args.models, library_step.MODEL_CASES, "--models", parser)
    args.dtypes = _names(args.dtypes, DTYPES, "--dtypes", parser)
    args.norms = _names(args.norms, NORMS, "--norms", parser)
    try:
        args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size]
    except ValueError:
        parser.error(f"--batch_sizes must be comma-separated integers, got {args.batch_sizes!r}")
    for flag in ("steps", "repeats", "warmup", "matmul_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if any(size < 2 for size in args.batch_sizes):
        parser.error("--batch_sizes must be at least 2 (batch norm needs two values)")
    return args


def _names(value: str, valid, flag: str, parser) -> list[str]:
    names = [name for name in value.split(",") if name]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        parser.error(
            f"{flag}: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(valid)}"
        )
    return names


# ---------------------------------------------------------------------------------------------
# The machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine(peer) -> dict:
    """The facts a measured number depends on. XLA_FLAGS is read after bnresearch is imported,
    so flags the library sets for itself appear too."""
    machine = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **{package: _version(package) for package in ("jax", "jaxlib", "flax", "optax")},
        "jax_backend": jax.default_backend(),
        "jax_devices": len(jax.devices()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    if peer is not None:
        machine["torch"] = peer.torch.__version__
        machine["torch_threads"] = peer.use_all_cores()
    return machine


def machine_line(machine: dict) -> str:
    torch = ""
    if "torch" in machine:
        torch = f", torch {machine['torch']} ({machine['torch_threads']} threads)"
    matmul = f"XLA {machine['matmul_gflops_xla']:.1f} GFLOP/s"
    if "matmul_gflops_torch" in machine:
        matmul += f", torch {machine['matmul_gflops_torch']:.1f} GFLOP/s"
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable); "
        f"Python {machine['python']}, jax {machine['jax']}, jaxlib {machine['jaxlib']}, "
        f"flax {machine['flax']}, optax {machine['optax']}{torch}; JAX backend "
        f"{machine['jax_backend']} ({machine['jax_devices']} device(s)); "
        f"XLA_FLAGS={machine['xla_flags'] or '(unset)'}; "
        f"GLIBC_TUNABLES={machine['glibc_tunables'] or '(unset)'}; float32 matmul "
        f"{machine['matmul_size']}x{machine['matmul_size']}: {matmul}"
    )


# ---------------------------------------------------------------------------------------------
# Train and eval steps


@dataclasses.dataclass
class SideResult:
    """One framework's numbers for one model x batch size x dtype."""

    framework: str
    parameters: int
    first_loss: float  # of the first step on the fixed batch
    last_loss: float  # of the last timed step: lower, if the step trains
    train_images_per_s: list[float] = dataclasses.field(default_factory=list)  # per repeat
    eval_images_per_s: list[float] = dataclasses.field(default_factory=list)
    compile_s: float | None = None  # bnresearch only: the train step's lower + compile
    eval_compile_s: float | None = None
    memory_bytes: dict | None = None  # bnresearch only: the compiled train step's buffers


@dataclasses.dataclass
class CaseResult:
    model: str
    norm: str
    batch_size: int
    dtype: str
    flops_per_step: float  # XLA's count for the compiled train step; the same model on both
    sides: list[SideResult]
    max_rss_bytes: int  # the process's peak so far: all frameworks and cases before it


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _alternate(sides, results, measure, label: str, repeats: int) -> None:
    """`measure(side)` -> images/s for each side in turn, `repeats` rounds, so that a change of
    the machine's load during the run hits every side alike; prints each round."""
    for repeat in range(1, repeats + 1):
        rates = [measure(side) for side in sides]
        for result, rate in zip(results, rates):
            getattr(result, f"{label}_images_per_s").append(rate)
        shown = " | ".join(f"{side.name} {rate:.1f}" for side, rate in zip(sides, rates))
        print(f"  {label} repeat {repeat}/{repeats} (images/s): {shown}", flush=True)


def _start(side, warmup: int) -> SideResult:
    """The first step's loss, then the warm-up steps and one eval step, untimed."""
    _, first_loss = side.train(1)
    if warmup > 1:
        side.train(warmup - 1)
    side.evaluate(1)
    return SideResult(side.name, side.parameter_count(), first_loss, float("nan"))


def measure_case(model: str, norm: str, batch_size: int, dtype: str, args, peer) -> CaseResult:
    case = library_step.MODEL_CASES[model]
    print(f"{model}, norm {norm}, batch {batch_size}, {dtype}:", flush=True)
    library = library_step.LibraryStep(case, batch_size, dtype, norm)
    sides = [library]
    if peer is not None:
        sides.append(
            peer.TorchPeer(
                case.name,
                batch_size=batch_size,
                dtype=dtype,
                image_shape=case.image_shape,
                num_classes=case.num_classes,
                norm=norm,
            )
        )
    results = [_start(side, args.warmup) for side in sides]
    results[0].compile_s, results[0].eval_compile_s = library.compile_s, library.eval_compile_s
    results[0].memory_bytes = library.memory

    def train(side):
        seconds, loss = side.train(args.steps)
        results[sides.index(side)].last_loss = loss
        return args.steps * batch_size / seconds

    _alternate(sides, results, train, "train", args.repeats)
    evaluate = lambda side: args.steps * batch_size / side.evaluate(args.steps)
    _alternate(sides, results, evaluate, "eval", args.repeats)
    _report_sanity(results)
    return CaseResult(
        model, norm, batch_size, dtype, library.flops_per_step, results, _max_rss_bytes()
    )


def _report_sanity(results: list[SideResult]) -> None:
    """Both sides train (the loss on the fixed batch falls) and have the same parameters."""
    for result in results:
        print(
            f"  {result.framework}: {result.parameters} parameters; loss on the fixed batch "
            f"{result.first_loss:.4f} (first step) -> {result.last_loss:.4f} (last)"
        )
    if len({result.parameters for result in results}) > 1:
        print("  WARNING: the frameworks' parameter counts differ: not the same architecture")


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(results: list[SideResult], label: str) -> str:
    if len(results) < 2:
        return "—"
    medians = [statistics.median(getattr(r, f"{label}_images_per_s")) for r in results[:2]]
    return f"{medians[0] / medians[1]:.2f}x"


def step_table(cases: list[CaseResult], matmul: dict) -> str:
    header = (
        "| model | norm | batch | dtype | framework | train images/s | train repeats | "
        "eval images/s | compile s | GFLOP/step | GFLOP/s | % of matmul | step MiB | "
        "max RSS MiB | train vs torch | eval vs torch |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for case in cases:
        for index, side in enumerate(case.sides):
            train = statistics.median(side.train_images_per_s)
            flops_per_s = case.flops_per_step * train / case.batch_size
            memory = side.memory_bytes["step"] / MIB if side.memory_bytes else None
            first = index == 0
            lines.append(
                " | ".join(
                    [
                        f"| {case.model}",
                        case.norm,
                        str(case.batch_size),
                        case.dtype,
                        side.framework,
                        _fmt(train),
                        ", ".join(_fmt(rate) for rate in side.train_images_per_s),
                        _fmt(statistics.median(side.eval_images_per_s)),
                        _fmt(side.compile_s),
                        _fmt(case.flops_per_step / 1e9, 2),
                        _fmt(flops_per_s / 1e9),
                        _fmt(100 * flops_per_s / matmul[side.framework]),
                        _fmt(memory),
                        _fmt(case.max_rss_bytes / MIB if first else None),
                        _ratio(case.sides, "train") if first else "—",
                        _ratio(case.sides, "eval") if first else "—",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def pipeline_table(results: list[input_pipeline.PipelineResult]) -> str:
    lines = [
        "| dataset | batch | augment | image shape | load s | images/s | repeats |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        shape = "x".join(map(str, result.image_shape))
        repeats = ", ".join(_fmt(rate) for rate in result.images_per_s)
        lines.append(
            f"| {result.dataset} | {result.batch_size} | {result.augment} | {shape} | "
            f"{_fmt(result.load_s)} | {_fmt(result.median)} | {repeats} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The run


def measure_matmul(args, peer) -> dict:
    calls = 10
    matmul = {"bnresearch": library_step.matmul_flops_per_s(args.matmul_size, calls, args.repeats)}
    if peer is not None:
        matmul["torch"] = peer.matmul_flops_per_s(args.matmul_size, calls, args.repeats)
    return matmul


def measure_pipelines(args, data_dir: str) -> list[input_pipeline.PipelineResult]:
    datasets = [("digits", DIGITS_BATCH_SIZE)]
    if args.image_folder:
        datasets.append((f"imagefolder:{os.path.abspath(args.image_folder)}", FOLDER_BATCH_SIZE))
    results = []
    for name, batch_size in datasets:
        print(f"input pipeline: {name}, batch {batch_size}", flush=True)
        results.append(
            input_pipeline.measure_pipeline(
                name,
                data_dir,
                batch_size=batch_size,
                batches=args.steps,
                repeats=args.repeats,
                warmup=args.warmup,
            )
        )
    return results


def run_pipelines(args) -> list[input_pipeline.PipelineResult]:
    if args.data_dir:
        return measure_pipelines(args, os.path.abspath(args.data_dir))
    with tempfile.TemporaryDirectory(prefix="bnresearch-benchmark-") as data_dir:
        return measure_pipelines(args, data_dir)


def load_peer(name: str):
    """The peer's module, imported only when asked for: torch is an optional dependency of the
    benchmark alone."""
    if name == "none":
        return None
    try:
        import torch_peer
    except ModuleNotFoundError as error:
        sys.exit(
            f"--peer torch needs {error.name}: .venv/bin/pip install -r benchmarks/requirements.txt"
        )
    return torch_peer


def main(argv=None) -> None:
    args = parse_args(argv)
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    peer = load_peer(args.peer)
    machine = describe_machine(peer)
    matmul = measure_matmul(args, peer)
    machine["matmul_size"] = args.matmul_size
    machine["matmul_gflops_xla"] = matmul["bnresearch"] / 1e9
    if "torch" in matmul:
        machine["matmul_gflops_torch"] = matmul["torch"] / 1e9
    cases = [
        measure_case(model, norm, batch_size, dtype, args, peer)
        for model in args.models
        for norm in args.norms
        for batch_size in args.batch_sizes or [library_step.MODEL_CASES[model].default_batch_size]
        for dtype in args.dtypes
    ]
    pipelines = run_pipelines(args) if args.pipeline else []
    print()
    print(machine_line(machine))
    print()
    print(step_table(cases, matmul))
    if pipelines:
        print()
        print(pipeline_table(pipelines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "machine": machine,
                    "arguments": sys.argv[1:],
                    "steps": [dataclasses.asdict(case) for case in cases],
                    "pipelines": [dataclasses.asdict(p) for p in pipelines],
                },
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
