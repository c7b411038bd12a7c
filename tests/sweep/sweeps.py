"""Running launch.py sweeps of tests/sweep/tiny_sweep.py in fresh processes, and reading them."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "sweep" / "tiny_sweep.py"


def sweep_env() -> dict:
    # One device and few XLA optimizations: the points are a handful of steps of a tiny MLP.
    # They share DIR/compilation_cache as a real sweep's do (bnresearch/persistent_cache.py).
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }


def launch_sweep(workdir, data_dir, *flags, arg=None, wait=True, timeout=300):
    config = f"{TINY}:{arg}" if arg else str(TINY)
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        "--sweep",
        f"--config.dataset.data_dir={data_dir}",
        *flags,
    ]
    if not wait:
        return subprocess.Popen(
            command, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, env=sweep_env(), capture_output=True, text=True, timeout=timeout)


def status_view(workdir):
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), f"--workdir={workdir}", "--status"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(directory):
    return {p: p.read_bytes() for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}
