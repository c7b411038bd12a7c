"""What training K runs as one population (bnresearch/train/population.py) gains over K runs one
after another (issue 14), in two tables:

1. End to end, the quickstart CNN on digits (configs/quickstart.py, 660 steps) with K seeds:
   `launch.py --sweep --parallel 1` of `benchmarks/population_sweep.py:members=K`, once with
   `--vectorize=seeds` (one process trains the K seeds) and once with `--vectorize=off` (K
   processes, one after another), each in a fresh sweep directory, so with a compilation cache
   that starts empty (the first launch compiles, the others load its programs), as a user's
   first sweep would. Wall time of each, and their ratio.
2. The train step alone, in this process, on random data of each model's shape (the quickstart
   CNN at batch 64, ResNet-20 at batch 128 on 32x32x3): the population's step for K members
   against the single run's step, as member-steps per second, and the compile time of each.

    .venv/bin/python benchmarks/population.py [--members 1,4,8,16] [--models cnn,resnet20]
        [--steps 20] [--no-end_to_end] [--optimizers same|differing]
        [--layer_options same|differing]

`--optimizers differing` gives the members of the second table each its own weight decay and
momentum, so that each member computes every member's optimizer update (population.py);
`--layer_options differing` each its own epsilon in every normalization (member k: k + 1 times
the model's), passed to the layers as traced values (bnresearch/layers/options.py).

Run it on an otherwise idle machine.
"""

import argparse
import dataclasses
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.library_step import (  # noqa: E402
    MODEL_CASES,
    SEED,
    RandomData,
    build_setup,
    random_batch,
)
from bnresearch import host_allocator  # noqa: E402
from bnresearch.layers import options  # noqa: E402
from bnresearch.train import loop  # noqa: E402
from bnresearch.train.population import (  # noqa: E402
    Population,
    compile_population_steps,
    first_images,
    stacked_layout,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP_CONFIG = REPO / "benchmarks" / "population_sweep.py"


def end_to_end(members: int) -> dict:
    """Wall seconds of the K-seed quickstart sweep trained as one population and as K runs."""
    seconds = {}
    for vectorize in ("seeds", "off"):
        with tempfile.TemporaryDirectory() as workdir:
            command = [
                sys.executable,
                str(REPO / "launch.py"),
                f"--config={SWEEP_CONFIG}:members={members}",
                f"--workdir={workdir}/sweep",
                "--sweep",
                "--parallel=1",
                f"--vectorize={vectorize}",
            ]
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            seconds[vectorize] = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return seconds


def _time_steps(step, state, batch, steps: int, *extra):
    """Seconds for `steps` calls after one untimed call, waiting once at the end."""
    state, *_ = step(state, batch, *extra)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, *_ = step(state, batch, *extra)
    jax.block_until_ready(state)
    return time.perf_counter() - start


def own_optimizers(setup, members: int) -> tuple:
    """`members` copies of `setup`, member k with weight decay (k + 1) times the config's and
    momentum from 0.5 to 0.9."""
    copies = []
    for k in range(members):
        config = setup.config.copy_and_resolve_references()
        config.optimizer.weight_decay = setup.config.optimizer.weight_decay * (k + 1)
        config.optimizer.momentum = 0.5 + 0.4 * k / max(members - 1, 1)
        copies.append(dataclasses.replace(setup, config=config))
    return tuple(copies)


def own_layer_options(setup, members: int, dataset) -> dict:
    """The population's member_options when member k's normalizations have k + 1 times the
    model's epsilon (its other layer options as the model's)."""
    images = first_images(setup, dataset)
    recorded = options.recorded_options(setup.init, jax.random.key(0), images)
    scaled = lambda k: {
        key: value * (k + 1) if key[-1] == "epsilon" else value for key, value in recorded.items()
    }
    return options.differing_options([scaled(k) for k in range(members)])


def train_step(
    model: str, members: int, steps: int, optimizers: str = "same", layer_options: str = "same"
) -> dict:
    """Member-steps per second of the single run's step and of the population's step for
    `members` members (each with its own seed's state, and with `optimizers="differing"` its own
    weight decay and momentum), and the compile seconds of each."""
    case = MODEL_CASES[model]
    batch_size = case.default_batch_size
    setup = build_setup(case, batch_size, "float32")
    batch = random_batch(case, batch_size, setup.mesh)
    key = jax.random.PRNGKey(SEED)
    init = jax.jit(setup.init, out_shardings=setup.layout.sharding)
    start = time.perf_counter()
    solo = loop.compile_steps(setup, start_step=0).train[batch_size]
    solo_compile = time.perf_counter() - start
    solo_s = _time_steps(solo, init(key, batch["image"]), batch, steps)

    setups = own_optimizers(setup, members) if optimizers == "differing" else (setup,) * members
    dataset = RandomData.like(case, batch_size)
    differing = layer_options == "differing" and members > 1
    population = Population(
        setups=setups,
        mesh=setup.mesh,
        dataset=dataset,
        member_options=own_layer_options(setup, members, dataset) if differing else {},
    )
    layout = stacked_layout(population)
    start = time.perf_counter()
    train = compile_population_steps(population, 0, layout).train
    population_compile = time.perf_counter() - start
    keys = [jax.random.PRNGKey(seed) for seed in range(members)]
    states = jax.device_put(
        jax.tree.map(lambda *leaves: np.stack(leaves), *[init(k, batch["image"]) for k in keys]),
        layout[1],
    )
    batches = jax.device_put(
        jax.tree.map(lambda leaf: np.stack([leaf] * members), batch),
        train[batch_size].input_shardings[0][1],
    )
    alive = jax.device_put(np.ones(members, bool), train[batch_size].input_shardings[0][2])
    population_s = _time_steps(train[batch_size], states, batches, steps, alive)
    return {
        "solo": steps / solo_s,
        "population": steps * members / population_s,
        "solo_compile": solo_compile,
        "population_compile": population_compile,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,4,8,16")
    parser.add_argument("--models", default="cnn,resnet20")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--end_to_end", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--optimizers", choices=("same", "differing"), default="same")
    parser.add_argument("--layer_options", choices=("same", "differing"), default="same")
    args = parser.parse_args()
    host_allocator.restart_with_tunables()  # as launch.py runs: see bnresearch/host_allocator.py
    sizes = [int(k) for k in args.members.split(",")]
    print(
        f"{platform.processor() or platform.machine()}, {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}), jax {jax.__version__}, python {platform.python_version()}"
    )
    if args.end_to_end:
        print("\n| K seeds | K runs, one after another | one population | speed-up |")
        print("|---|---|---|---|")
        for members in sizes:
            seconds = end_to_end(members)
            print(
                f"| {members} | {seconds['off']:.1f} s | {seconds['seeds']:.1f} s | "
                f"{seconds['off'] / seconds['seeds']:.2f}x |",
                flush=True,
            )
    print(
        f"\n| model | K | single run, steps/s | population ({args.optimizers} optimizers, "
        f"{args.layer_options} layer options), "
        "member-steps/s | ratio | compile single / population |"
    )
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for members in sizes:
            rates = train_step(model, members, args.steps, args.optimizers, args.layer_options)
            print(
                f"| {model} | {members} | {rates['solo']:.1f} | {rates['population']:.1f} | "
                f"{rates['population'] / rates['solo']:.2f}x | {rates['solo_compile']:.1f} s / "
                f"{rates['population_compile']:.1f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
