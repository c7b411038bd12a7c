"""Tiny experiments on digits, in-process or through launch.py, for the training tests."""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import jax
import orbax.checkpoint as ocp

from bnresearch.config.fields import set_fields
from bnresearch.train.loop import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[2]

# A few dozen steps of the quickstart CNN: enough to exercise every periodic action.
TINY_OVERRIDES = {
    "batch_size": 32,
    "base_batch_size": 32,
    "eval_batch_size": 64,
    "train_duration": "24 steps",
    "log_every": "1 steps",
    "eval_every": "12 steps",
    "checkpoint.every": "6 steps",
}


def tiny_config(data_dir, **overrides):
    from configs import quickstart

    config = quickstart.get_config()
    config.dataset.data_dir = data_dir
    set_fields(config, {**TINY_OVERRIDES, **overrides})
    config.lock()
    return config


def launch(
    workdir,
    data_dir,
    *,
    devices=8,
    wait=True,
    env=None,
    config="quickstart",
    tiny=True,
    **overrides,
):
    """Runs launch.py on `configs/<config>.py` (shortened by TINY_OVERRIDES unless not `tiny`)
    in a fresh process, with `env` added to its environment; returns the CompletedProcess (or
    Popen if not wait)."""
    base = TINY_OVERRIDES if tiny else {}
    flags = [f"--config.{key}={value}" for key, value in {**base, **overrides}.items()]
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={REPO}/configs/{config}.py",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        *flags,
    ]
    # Full XLA optimization: these runs are long enough that run time, not compile time, counts.
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "0",
        **(env or {}),
    }
    if not wait:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def read_metrics(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def read_status(workdir):
    return json.loads((pathlib.Path(workdir) / "status.json").read_text())


def final_state(workdir):
    """The train state of the last checkpoint of `workdir`, as saved."""
    checkpoints = pathlib.Path(workdir) / "checkpoints"
    last = max(int(path.name) for path in checkpoints.iterdir() if path.name.isdigit())
    with warnings.catch_warnings():  # that the shardings are read from the checkpoint: wanted
        warnings.simplefilter("ignore", UserWarning)
        return ocp.PyTreeCheckpointer().restore(checkpoints / str(last) / "state")


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax's event per XLA compilation


def train_and_record_compilations(config, workdir, status="done") -> list[str]:
    """Runs `config` (to the end, or to `status`); returns the names of the functions XLA
    compiled meanwhile. JAX's in-memory caches are emptied first, so programs that an earlier
    run of this process compiled count again: each run is counted as a launch would be."""
    jax.clear_caches()
    compiled = []

    def count(event, duration, **details):
        if event == COMPILE_EVENT:
            compiled.append(details.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        assert train_and_evaluate(config, str(workdir)) == status
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    return compiled


class StopAt:
    """A preemption notice that arrives at one chosen step."""

    def __init__(self, step):
        self._step = step

    def should_stop(self, step):
        return step == self._step

    def close(self):
        pass
