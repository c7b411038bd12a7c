"""The files a run leaves in its workdir, and the guard that keeps experiments apart.

    config.json       the resolved config; a different config is refused in this workdir
    environment.json  one record per launch: packages, devices, code version, start step, and
                      the start-up (seconds to the first step, of which compiling)
    metrics.jsonl     one JSON object per event: {"step": ..., "train/loss": ..., ...}
    events.out.tfevents.*  the same scalars for TensorBoard
    transfer.json     a fine-tuning run's start (bnresearch/train/transfer.py): the source run's
                      workdir, step and config, the layers loaded, re-initialised (and why)
                      and frozen, the normalization mode
    status.json       {"status": ..., "step": ...}: RUNNING (with host and pid), then DONE,
                      DIVERGED, PREEMPTED or FAILED (bnresearch/run_status.py)
    checkpoints/      orbax checkpoints (bnresearch.checkpoint)
    run.lock          the lock of the launch writing here (its host and pid): one at a time

config.json and status.json are replaced atomically; metrics.jsonl is appended a line at a time,
and a last line cut by a kill or a full disk is dropped when the next launch opens it.
"""

import contextlib
import datetime
import errno
import fcntl
import importlib.metadata
import json
import logging
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np

from bnresearch.config.compare import differences, summarize
from bnresearch.config.defaults import LAYOUT_FIELDS, base_config
from bnresearch.errors import UsageError
from bnresearch.run_status import (
    RUNNING,
    process_gone,
    this_process,
    write_atomically,
    write_json,
)

log = logging.getLogger(__name__)

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "ml-collections",
    "numpy",
)


LOCK_FILE = "run.lock"
# What a launch killed between taking the lock and recording its config leaves: the workdir is
# still empty of any run.
_NOT_A_RUN = {LOCK_FILE, "config.json.tmp"}


class WorkdirError(UsageError):
    """The workdir cannot hold this run: another experiment, another launch, a file, damage."""


def jsonable(config: ml_collections.ConfigDict) -> dict:
    # A JSON round trip turns tuples into lists, so stored and fresh configs compare equal.
    return json.loads(config.to_json())


def _code_version() -> str:
    # Asked from this file's directory, git finds the checkout holding the code that runs.
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty.strip() else "")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_record(start_step: int, layout: dict) -> dict:
    """This launch's machine, code and packages; `layout`: its mesh shape and state sharding,
    which a resumed run may change (LAYOUT_FIELDS)."""
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
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "cpus": _cpus(),
        **layout,
    }


def _cpus() -> list[int] | None:
    """The CPU cores this process may run on (a sweep's point: its slot's), which XLA's CPU
    client sizes its threads by; None where the system does not say (macOS)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


class RunDirectory:
    """Reads and writes a run's files. Only process 0 writes; every process may read."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir)
        self.writer = jax.process_index() == 0

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints"

    def check(self, config: ml_collections.ConfigDict) -> None:
        """Refuses a workdir that cannot be this run's: a file, one this user cannot write, a
        damaged config.json, another experiment's, another launch's; reads, never writes."""
        if self.writer:
            self._check_writable()
            _check_not_held(self.path / LOCK_FILE)
        self._check_experiment(config)

    def _check_experiment(self, config: ml_collections.ConfigDict) -> None:
        stored_file = self.path / "config.json"
        if stored_file.exists():
            # A field added to the kit since the run began, at its default, is the same run; so
            # is one that only lays the run out over the devices (left out of the comparison).
            experiment = lambda fields: {
                key: value for key, value in fields.items() if key not in LAYOUT_FIELDS
            }
            changes = list(
                differences(
                    experiment(_read_config(stored_file)),
                    experiment(jsonable(config)),
                    defaults=jsonable(base_config()),
                )
            )
            if changes:
                shown = summarize(changes)
                raise WorkdirError(
                    f"workdir {self.path} holds another experiment ({shown}); "
                    "use a new --workdir or the same config"
                )
        elif self.writer and self.path.exists():
            if {entry.name for entry in self.path.iterdir()} - _NOT_A_RUN:
                raise WorkdirError(
                    f"workdir {self.path} is not empty and holds no config.json; "
                    "use a new --workdir"
                )

    def _check_writable(self) -> None:
        """The workdir, or the nearest of its parents that exists, is a directory this user can
        write: else writing the first file would fail with a traceback after all the start-up."""
        existing = next(path for path in (self.path, *self.path.parents) if path.exists())
        if not existing.is_dir():
            where = "" if existing == self.path else f": {existing}"
            raise WorkdirError(
                f"workdir {self.path}{where} is a file, not a directory; use another --workdir"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise WorkdirError(
                f"workdir {self.path}: {existing} is not writable by this user; "
                "make it writable or use another --workdir"
            )

    @contextlib.contextmanager
    def hold(self, config: ml_collections.ConfigDict):
        """Holds the workdir's lock while the block runs: one launch writes a workdir at a time.

        Taken after preflight, before anything is written: the workdir is created here if new,
        and a launch refused here has written nothing. A second launch is refused at once with
        the holder's host and pid. The lock is an flock, which the kernel releases when its
        process ends however it ends, so a lock left by a dead process is simply taken over
        (a SLURM requeue, a relaunch after a kill); the host and pid in the file only name the
        holder. Only process 0, the writer, takes it.
        """
        if not self.writer:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.path / LOCK_FILE):
            # Another launch may have claimed this workdir between preflight's look and the lock.
            self._check_experiment(config)
            yield

    def claim(self, config: ml_collections.ConfigDict) -> None:
        """Records the config of a new run (a resumed run has it already)."""
        stored_file = self.path / "config.json"
        if self.writer and not stored_file.exists():
            write_json(stored_file, jsonable(config))

    def status(self) -> dict:
        status_file = self.path / "status.json"
        try:
            return json.loads(status_file.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):  # damaged by hand or a disk error
            log.warning("%s is damaged; this launch rewrites it", status_file)
            return {}

    def set_status(self, status: str, step: int, **details) -> None:
        """Records how the run stands; while it runs, with the host and pid running it, so that
        readers can tell a killed run (process gone, status still RUNNING) from a live one."""
        if self.writer:
            running = this_process() if status == RUNNING else {}
            record = {"status": status, "step": step, **running, **details}
            write_json(self.path / "status.json", record)

    def record_environment(self, start_step: int, layout: dict) -> None:
        if not self.writer:
            return
        records_file = self.path / "environment.json"
        records = json.loads(records_file.read_text()) if records_file.exists() else []
        write_json(records_file, records + [environment_record(start_step, layout)])

    def record_fine_tune(self, record: dict) -> None:
        """Writes transfer.json: where a fine-tuning run started from and what it trains."""
        if self.writer:
            write_json(self.path / "transfer.json", record)

    def record_startup(self, first_step_s: float, compiling_s: float) -> None:
        """Adds this launch's start-up to its environment record: the seconds from its start to
        its first step done, and how many of them JAX spent compiling."""
        if not self.writer:
            return
        records_file = self.path / "environment.json"
        records = json.loads(records_file.read_text())
        records[-1].update(
            first_step_after_s=round(first_step_s, 2), compiling_s=round(compiling_s, 2)
        )
        write_json(records_file, records)


def _read_config(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        damage = "empty" if not path.read_bytes().strip() else f"not JSON: {error}"
        raise WorkdirError(
            f"{path} is damaged ({damage}), so the experiment in this workdir is unknown; "
            "restore the file (the resolved config the run started with, e.g. from a backup or a "
            "run of the same config) or use a new --workdir"
        ) from None


# What flock raises on a filesystem without locks (some network filesystems).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _check_not_held(path: pathlib.Path) -> None:
    """Refuses a workdir whose lock another launch holds, early (before the dataset and the
    model), without writing: a shared lock is refused while the holder's exclusive one stands."""
    try:
        file = open(path)
    except FileNotFoundError:
        return
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path, file.read()) from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
        # Closing the file drops the shared lock at once.


def _in_use(path: pathlib.Path, holder_text: str) -> WorkdirError:
    return WorkdirError(
        f"workdir {path.parent} is in use by {_holder(holder_text)}: one launch per workdir; "
        "wait for it to end or stop it, or use another --workdir"
    )


# How long the lock is tried before a launch is refused: `_check_not_held` of another launch
# holds it (shared) for microseconds, a running launch for its whole run.
_LOCK_TRIES, _LOCK_WAIT_S = 10, 0.05


@contextlib.contextmanager
def _exclusive_lock(path: pathlib.Path):
    """Holds an exclusive flock on `path` (host and pid written in it), or refuses at once."""
    # Opened without truncating: until the lock is held, the file names the current holder.
    with open(path, "a+") as file:
        try:
            for attempt in range(_LOCK_TRIES):
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _LOCK_TRIES - 1:
                        file.seek(0)
                        raise _in_use(path, file.read()) from None
                    time.sleep(_LOCK_WAIT_S)
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            log.warning(
                "%s: the filesystem has no locks; nothing keeps a second launch out "
                "of this workdir",
                path.parent,
            )
        file.seek(0)
        file.truncate()
        holder = {**this_process(), "since": _now()}
        file.write(json.dumps(holder) + "\n")
        file.flush()
        yield  # closing the file releases the lock


def _holder(text: str) -> str:
    """The holder a lock file names, in words."""
    try:
        holder = json.loads(text)
        named = f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (json.JSONDecodeError, KeyError, TypeError):  # its holder is still writing it
        return "another launch"
    if process_gone(holder):
        # An flock outlives its process only in a child that inherited the file.
        named += ", which has ended, but a process it started still holds the lock"
    return named


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _TensorBoardEvents:
    """A run's TensorBoard event file: scalars and histograms, in TensorBoard's own protos and
    file writer, without TensorFlow.

    With TensorFlow installed (TFDS needs it to prepare datasets) TensorBoard's writers import
    all of it, 3 s per run, only for their file I/O. TensorBoard's own switch, an importable
    `tensorboard.compat.notf`, selects its built-in file I/O instead, which handles the local
    paths run directories are.
    """

    def __init__(self, path: pathlib.Path):
        sys.modules.setdefault(
            "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf")
        )
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.histogram import metadata as histogram_metadata
        from tensorboard.plugins.scalar import metadata as scalar_metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tensorboard.util import tensor_util

        self._event, self._tensor = event_pb2.Event, tensor_util.make_tensor_proto
        self._scalar_metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=scalar_metadata.PLUGIN_NAME
            ),
            data_class=summary_pb2.DataClass.DATA_CLASS_SCALAR,
        )
        self._histogram_metadata = histogram_metadata.create_summary_metadata(None, None)
        self._writer = EventFileWriter(str(path))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._add(tag, self._tensor(np.float32(value)), self._scalar_metadata, step)

    def add_histogram(self, tag: str, buckets: np.ndarray, step: int) -> None:
        """`buckets`: [k, 3] rows of (left edge, right edge, count), TensorBoard's histogram."""
        tensor = self._tensor(np.asarray(buckets, np.float64))
        self._add(tag, tensor, self._histogram_metadata, step)

    def _add(self, tag, tensor, metadata, step: int) -> None:
        event = self._event(wall_time=time.time(), step=int(step))
        event.summary.value.add(tag=tag, tensor=tensor, metadata=metadata)
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsLog:
    """metrics.jsonl plus TensorBoard, written by process 0 only. A value with a shape of
    [k, 3] is a histogram (``_TensorBoardEvents.add_histogram``): TensorBoard only; every other
    value is a scalar, for both.

    On resume the records after the restored step are dropped, so the file reads exactly as if
    the run had never stopped; so is a last line cut short by a kill or a full disk (reported in
    one line), the one damage an interrupted append can do.
    """

    def __init__(self, rundir: RunDirectory, resume_step: int):
        self._enabled = rundir.writer
        self._jsonl_path = rundir.path / "metrics.jsonl"
        if not self._enabled:
            return
        if self._jsonl_path.exists():
            kept = [
                line
                for line, record in _complete_records(self._jsonl_path)
                if record["step"] <= resume_step
            ]
            write_atomically(self._jsonl_path, "".join(line + "\n" for line in kept))
        self._tensorboard = _TensorBoardEvents(rundir.path)
        self._jsonl = self._jsonl_path.open("a")

    def write(self, step: int, values: dict) -> None:
        if not self._enabled:
            return
        histograms = {k: v for k, v in values.items() if np.ndim(v) == 2}
        scalars = {k: v for k, v in values.items() if k not in histograms}
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        # A whole line per flush, one write(2) of it (a line is far below the buffer's size): an
        # interruption can cut only the last line, which the next launch drops.
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            if math.isfinite(float(value)):
                self._tensorboard.add_scalar(key, float(value), int(step))
        for key, buckets in histograms.items():
            self._tensorboard.add_histogram(key, buckets, step)

    def flush(self) -> None:
        if self._enabled:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _complete_records(path: pathlib.Path) -> list[tuple[str, dict]]:
    """(line, record) of every complete line of metrics.jsonl.

    An append cut short leaves a last line without its newline (`{"s`): dropped, with a warning
    (its step is past the last checkpoint, whose records were all written before it was saved).
    Any other line that does not parse is damage of another kind: refused in one line.
    """
    *lines, last = path.read_text(errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            raise WorkdirError(
                f"{path}: line {number} is not JSON ({line[:40]!r}), which no interrupted write "
                "leaves; restore the file or delete that line, then launch again"
            ) from None
    if last:
        log.warning(
            "%s: dropped its last line %r, cut short by an interrupted write", path, last[:40]
        )
    return records
