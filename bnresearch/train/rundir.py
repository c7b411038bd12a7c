"""The files a run leaves in its workdir, and the guard that keeps experiments apart.

    config.json       the resolved config; a different config is refused in this workdir
    environment.json  one record per launch: packages, devices, code version, start step
    metrics.jsonl     one JSON object per event: {"step": ..., "train/loss": ..., ...}
    events.out.tfevents.*  the same scalars for TensorBoard
    status.json       {"status": ..., "step": ...}: RUNNING, then DONE, DIVERGED, PREEMPTED or
                      FAILED (bnresearch/run_status.py)
    checkpoints/      orbax checkpoints (bnresearch.checkpoint)
"""
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import types

import jax
import ml_collections

from bnresearch.config.compare import differences, summarize
from bnresearch.errors import UsageError

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "ml-collections", "numpy")


class WorkdirError(UsageError):
    """The workdir belongs to another experiment."""


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    # A JSON round trip turns tuples into lists, so stored and fresh configs compare equal.
    return json.loads(config.to_json())


def _code_version() -> str:
    # Asked from this file's directory, git finds the checkout holding the code that runs.
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty.strip() else "")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_record(start_step: int) -> dict:
    devices = jax.devices()
    return {
        "launched": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "start_step": start_step,
        "code": _code_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class RunDirectory:
    """Reads and writes a run's files. Only process 0 writes; every process may read."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir)
        self.writer = jax.process_index() == 0

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints"

    def check(self, config: ml_collections.ConfigDict) -> None:
        """Refuses a workdir that holds another experiment; reads, never writes."""
        stored_file = self.path / "config.json"
        if stored_file.exists():
            stored = json.loads(stored_file.read_text())
            changes = list(differences(stored, _jsonable(config)))
            if changes:
                shown = summarize(changes)
                raise WorkdirError(
                    f"workdir {self.path} holds another experiment ({shown}); "
                    "use a new --workdir or the same config")
        elif self.path.exists() and any(self.path.iterdir()) and self.writer:
            raise WorkdirError(
                f"workdir {self.path} is not empty and holds no config.json; use a new --workdir")

    def claim(self, config: ml_collections.ConfigDict) -> None:
        """Records the config of a new run (a resumed run has it already)."""
        stored_file = self.path / "config.json"
        if self.writer and not stored_file.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            _write_json(stored_file, _jsonable(config))

    def status(self) -> dict:
        status_file = self.path / "status.json"
        return json.loads(status_file.read_text()) if status_file.exists() else {}

    def set_status(self, status: str, step: int, **details) -> None:
        if self.writer:
            _write_json(self.path / "status.json", {"status": status, "step": step, **details})

    def record_environment(self, start_step: int) -> None:
        if not self.writer:
            return
        records_file = self.path / "environment.json"
        records = json.loads(records_file.read_text()) if records_file.exists() else []
        _write_json(records_file, records + [environment_record(start_step)])


def _write_json(path: pathlib.Path, value) -> None:
    # Write then rename, so a kill mid-write never leaves a truncated file behind.
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def _tensorboard_writer(path: pathlib.Path):
    """TensorBoard's event writer, without TensorFlow.

    With TensorFlow installed (TFDS needs it to prepare datasets) the writer imports all of it,
    3 s per run, only for its file I/O. TensorBoard's own switch, an importable
    `tensorboard.compat.notf`, selects its built-in file I/O instead, which handles the local
    paths run directories are.
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.summary import Writer
    return Writer(str(path))


class MetricsLog:
    """metrics.jsonl plus TensorBoard scalars, written by process 0 only.

    On resume the records after the restored step are dropped, so the file reads exactly as if
    the run had never stopped.
    """

    def __init__(self, rundir: RunDirectory, resume_step: int):
        self._enabled = rundir.writer
        self._jsonl_path = rundir.path / "metrics.jsonl"
        if not self._enabled:
            return
        if self._jsonl_path.exists():
            kept = [line for line in self._jsonl_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resume_step]
            self._jsonl_path.write_text("".join(line + "\n" for line in kept))
        self._tensorboard = _tensorboard_writer(rundir.path)
        self._jsonl = self._jsonl_path.open("a")

    def write(self, step: int, scalars: dict) -> None:
        if not self._enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            if math.isfinite(float(value)):
                self._tensorboard.add_scalar(key, float(value), int(step))

    def flush(self) -> None:
        if self._enabled:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()
