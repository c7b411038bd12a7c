"""Runs sweep points on this machine: separate processes, up to one per device slot at a time;
a group of points that trains as one population (`spec.group_points`) is one process.

Each point's process gets its slot's devices (devices.py), its own process group (a Ctrl-C in
the terminal reaches only this parent) and, on Linux, a SIGTERM should this parent die. The first
Ctrl-C or SIGTERM stops launching points and forwards SIGTERM to the running ones, which save a
checkpoint and stop (launch.py's preemption handling); a second one kills them.
"""

import ctypes
import dataclasses
import datetime
import os
import pathlib
import shlex
import signal
import subprocess
import time
from typing import Callable

from bnresearch.persistent_cache import DIRECTORY_VARIABLE
from bnresearch.report.sweep_file import Point, Sweep
from bnresearch.sweep import points as point_files
from bnresearch.sweep.devices import Slot
from bnresearch.sweep.spec import point_command, population_command

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the point outlives a killed parent
        pass


def _child_setup(cpus: frozenset | None) -> Callable[[], None]:
    def setup():  # runs in the child between fork and exec
        if cpus:
            os.sched_setaffinity(0, cpus)
        _die_with_parent()

    return setup


COMPILATION_CACHE = "compilation_cache"


def compilation_cache(sweep_dir) -> dict:
    """The environment that lets the points share JAX's persistent compilation cache in
    DIR/compilation_cache: points that differ only in their seed (or in anything else that is
    an input of the compiled programs) compile the same programs, and all but the first load
    them, the same executables, so the same numbers. On this machine only: executables are
    built for its CPU or accelerator. An explicit JAX_COMPILATION_CACHE_DIR takes precedence,
    as it does for a single run (bnresearch/persistent_cache.py)."""
    cache = pathlib.Path(sweep_dir).absolute() / COMPILATION_CACHE
    return {DIRECTORY_VARIABLE: str(cache)}


@dataclasses.dataclass
class _Running:
    points: tuple[Point, ...]
    process: subprocess.Popen
    started: float


class _Stop:
    """Signal handlers of the parent while points run: forward, then kill on the second."""

    def __init__(self, running: dict):
        self._running = running
        self.signals = 0
        self._previous = {
            s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)
        }

    def _on_signal(self, signum, frame):
        del frame
        self.signals += 1
        if self.signals == 1:
            print(
                f"{signal.Signals(signum).name}: stopping; {len(self._running)} running "
                "point(s) save a checkpoint and stop (again to kill them)",
                flush=True,
            )
            for run in self._running.values():
                run.process.send_signal(signal.SIGTERM)
        else:
            for run in self._running.values():
                os.killpg(run.process.pid, signal.SIGKILL)

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_local(
    sweep: Sweep,
    sweep_dir,
    groups: list[tuple[Point, ...]],
    slots: list[Slot],
    *,
    on_start: Callable,
    on_end: Callable,
    poll_s: float = 0.1,
) -> bool:
    """Runs each group of points (one process each) to its end; returns False if a signal
    stopped the sweep early."""
    pending, running = list(groups), {}
    free = list(range(len(slots)))
    stop = _Stop(running)
    try:
        while pending or running:
            while pending and free and not stop.signals:
                group, slot = pending.pop(0), free.pop(0)
                running[slot] = _start(sweep, sweep_dir, group, slots[slot])
                for point in group:
                    on_start(point, slots[slot])
            if not running:
                break
            time.sleep(poll_s)
            for slot, run in list(running.items()):
                exit_code = run.process.poll()
                if exit_code is None:
                    continue
                del running[slot]
                free.append(slot)
                log = point_files.log_path(sweep_dir, run.points[0])
                for point in run.points:
                    point_files.record_exit(sweep_dir, point, exit_code, log)
                    on_end(point, exit_code, time.perf_counter() - run.started)
    finally:
        stop.restore()
    return not stop.signals


def _start(sweep: Sweep, sweep_dir, group: tuple[Point, ...], slot: Slot) -> _Running:
    """Starts the group's process, its output in the first point's log; the others' logs say
    where it is."""
    if len(group) == 1:
        command = point_command(sweep, group[0], sweep_dir)
    else:
        command = population_command(sweep, group, sweep_dir)
    log = point_files.log_path(sweep_dir, group[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    for point in group:
        point_files.exit_path(sweep_dir, point).unlink(missing_ok=True)
    for point in group[1:]:
        with point_files.log_path(sweep_dir, point).open("a") as other_log:
            other_log.write(f"==== {now} on {slot.label}: in a population; its log: {log}\n")
    with log.open("a") as log_file:
        log_file.write(f"==== {now} on {slot.label}: {shlex.join(command)}\n")
        log_file.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**compilation_cache(sweep_dir), **os.environ, **slot.env},
            process_group=0,
            preexec_fn=_child_setup(slot.cpus),
        )
    return _Running(group, process, time.perf_counter())
