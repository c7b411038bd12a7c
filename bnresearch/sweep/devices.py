"""How a machine's devices are divided among the points a local sweep runs at once.

GPUs are found without importing JAX (the sweep parent must hold no accelerator): the ids in
CUDA_VISIBLE_DEVICES if it is set, else the lines of `nvidia-smi -L`. With G GPUs and N points
at once, each slot owns G // N GPUs through CUDA_VISIBLE_DEVICES. Without GPUs, each slot owns a
disjoint equal share of the CPU cores through the CPU affinity of its processes: XLA's CPU client
sizes its thread pools by the cores it may schedule on (tsl::port::MaxParallelism reads the
affinity mask), so the points neither oversubscribe the cores nor fight for them.
"""

import dataclasses
import os
import shutil
import subprocess

from bnresearch.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Slot:
    label: str  # e.g. "GPU 2" or "CPU cores 0-7", for the console
    env: dict  # variables set for the point's process
    cpus: frozenset | None = None  # CPU affinity of the point's process (None: inherited)


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        lines = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = [line for line in lines if line.startswith("GPU ")]
    return [str(index) for index in range(len(gpus))]


def _ranges(numbers) -> str:
    numbers, parts, start = sorted(numbers), [], None
    for index, number in enumerate(numbers):
        if start is None:
            start = number
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            parts.append(str(start) if start == number else f"{start}-{number}")
            start = None
    return ",".join(parts)


def _split(items: list, parts: int) -> list[list]:
    """`parts` contiguous equal shares of `items` (a remainder stays unused): every point sees
    the same number of devices, so its numbers do not depend on the slot it ran in."""
    size = len(items) // parts
    return [items[index * size : (index + 1) * size] for index in range(parts)]


def device_slots(parallel: int) -> list[Slot]:
    if parallel < 1:
        raise UsageError(f"--parallel={parallel}: run at least 1 point at a time")
    gpus = visible_gpus()
    if gpus:
        if parallel > len(gpus):
            raise UsageError(
                f"--parallel={parallel} needs as many GPUs; this machine shows "
                f"{len(gpus)} ({','.join(gpus)})"
            )
        return [
            Slot(f"GPU {','.join(share)}", {"CUDA_VISIBLE_DEVICES": ",".join(share)})
            for share in _split(gpus, parallel)
        ]
    cores = sorted(os.sched_getaffinity(0))
    if parallel == 1:
        return [Slot(f"CPU cores {_ranges(cores)}", {})]
    if parallel > len(cores):
        raise UsageError(
            f"--parallel={parallel} exceeds the {len(cores)} CPU cores this "
            f"process may use ({_ranges(cores)}); use at most {len(cores)}"
        )
    return [
        Slot(f"CPU cores {_ranges(share)}", {}, frozenset(share))
        for share in _split(cores, parallel)
    ]
