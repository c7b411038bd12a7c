"""What sharding the train state saves, and what it costs: per-device memory of the parameters
and the optimizer state, and the train step's speed, for each optimizer x sharding strategy.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/sharding.py

Each row is a run's own step, built by the library as `launch.py` builds it (`resolve`, then
`loop.compile_steps`) with `mesh.shape` and `sharding.strategy` set as the row says: replicated
on a mesh of {data: N}, fsdp on {data: 1, fsdp: N}. The memory columns come from two
independent places: the bytes of the state's shards on one device, summed from the layout
(`parameters`, `optimizer state`), and XLA's memory analysis of the compiled step (`step
arguments`: the state plus the batch's shard, per device; `step temporaries`: the activations,
gradients and gathered parameters it holds at once). Flags and what the README's table measured:
benchmarks/README.md ("Sharding the state").
"""

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import library_step

from bnresearch import host_allocator
from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import make_mesh
from bnresearch.parallel.sharding import bytes_per_device
from bnresearch.train import loop
from bnresearch.train.preflight import check_config, resolve

MIB = 2**20
# ResNet-50 with ImageNet's 1000-class head. The state does not depend on the image size, so
# small images keep the compile and the step affordable on a CPU; the step's temporaries do.
RESNET50 = library_step.ModelCase("resnet50", "resnet50", (64, 64, 3), 1000, 16)
STRATEGIES = ("replicated", "fsdp")
OPTIMIZERS = ("momentum", "lamb")


@dataclasses.dataclass(frozen=True)
class Row:
    optimizer: str
    strategy: str
    mesh: dict
    parameters_mib: float
    optimizer_state_mib: float
    arguments_mib: float
    temporaries_mib: float
    compile_s: float
    images_per_s: list[float]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--batch_size", type=int, default=RESNET50.default_batch_size)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.optimizers = args.optimizers.split(",")
    args.strategies = args.strategies.split(",")
    return args


def row_config(optimizer: str, strategy: str, batch_size: int):
    config = library_step.benchmark_config(RESNET50, batch_size, "float32")
    config.optimizer.name = optimizer
    config.optimizer.weight_decay_style = "auto"  # coupled for momentum, decoupled for LAMB
    config.sharding.strategy = strategy
    devices = jax.device_count()
    config.mesh.shape.data, config.mesh.shape.fsdp = (
        (devices, 1) if strategy == "replicated" else (1, devices)
    )
    check_config(config)
    return config


def measure(optimizer: str, strategy: str, args) -> Row:
    config = row_config(optimizer, strategy, args.batch_size)
    mesh = make_mesh(config.mesh.shape.to_dict())
    setup = resolve(config, library_step.RandomData.like(RESNET50, args.batch_size), mesh)
    start = time.perf_counter()
    train = loop.compile_steps(setup, start_step=0).train[args.batch_size]
    compile_s = time.perf_counter() - start
    memory = train.memory_analysis()

    batch = library_step.random_batch(RESNET50, args.batch_size, mesh)
    state = jax.jit(
        setup.init, out_shardings=setup.layout.sharding, compiler_options=setup.compiler_options
    )(jax.random.PRNGKey(0), batch["image"])
    state, _ = train(state, batch)  # warm-up
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = train(state, batch)
        jax.block_until_ready(metrics)
        rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    return Row(
        optimizer=optimizer,
        strategy=strategy,
        mesh=dict(mesh.shape),
        parameters_mib=bytes_per_device(setup.layout.abstract.params) / MIB,
        optimizer_state_mib=bytes_per_device(setup.layout.abstract.opt_state) / MIB,
        arguments_mib=memory.argument_size_in_bytes / MIB,
        temporaries_mib=memory.temp_size_in_bytes / MIB,
        compile_s=compile_s,
        images_per_s=rates,
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| optimizer | strategy | mesh | parameters (MiB/device) | optimizer state (MiB/device) "
        "| step arguments (MiB/device) | step temporaries (MiB/device) | compile (s) "
        "| train images/s (median; repeats) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        mesh = ", ".join(f"{axis}: {size}" for axis, size in row.mesh.items())
        repeats = ", ".join(f"{rate:.1f}" for rate in row.images_per_s)
        lines.append(
            f"| {row.optimizer} | {row.strategy} | {{{mesh}}} | {row.parameters_mib:.1f} "
            f"| {row.optimizer_state_mib:.1f} | {row.arguments_mib:.1f} "
            f"| {row.temporaries_mib:.1f} | {row.compile_s:.0f} "
            f"| {statistics.median(row.images_per_s):.1f} ({repeats}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    try:
        for name in args.optimizers:
            if name not in OPTIMIZERS:
                raise UsageError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
        for name in args.strategies:
            if name not in STRATEGIES:
                raise UsageError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
        rows = [
            measure(optimizer, strategy, args)
            for optimizer in args.optimizers
            for strategy in args.strategies
        ]
    except UsageError as error:
        sys.exit(f"error: {error}")
    print(
        f"ResNet-50 (1000 classes), {RESNET50.image_shape[0]}x{RESNET50.image_shape[1]} images, "
        f"batch {args.batch_size}, float32, on {jax.device_count()} "
        f"{jax.devices()[0].platform.upper()} devices"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
