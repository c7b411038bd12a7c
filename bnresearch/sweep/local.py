"""Runs sweep points on this machine: separate processes, up to one per device slot at a time;
a group of points that trains as one population (`spec.group_points`) is one process.

Each point's process is forked from the sweep's zygote (zygote.py), which has imported what the
points run once for all of them. It gets its slot's devices (devices.py), its own process group
(a Ctrl-C in the terminal reaches only this parent) and, on Linux, a SIGTERM should this parent
die. The first Ctrl-C or SIGTERM stops launching points and forwards SIGTERM to the running
ones, which save a checkpoint and stop (launch.py's preemption handling); a second one kills
them.
"""

import contextlib
import dataclasses
import datetime
import os
import pathlib
import shlex
import signal
import time
from typing import Callable

from bnresearch.persistent_cache import DIRECTORY_VARIABLE
from bnresearch.report.sweep_file import Point, Sweep
from bnresearch.sweep import points as point_files
from bnresearch.sweep.devices import Slot
from bnresearch.sweep.spec import point_command, population_command
from bnresearch.sweep.zygote import Zygote

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
    pid: int
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
                os.kill(run.pid, signal.SIGTERM)
        else:
            for run in self._running.values():
                os.killpg(run.pid, signal.SIGKILL)

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
    zygote = Zygote({**compilation_cache(sweep_dir), **os.environ})
    stop = _Stop(running)
    try:
        while pending or running:
            while pending and free and not stop.signals:
                group, slot = pending.pop(0), free.pop(0)
                running[slot] = _start(zygote, sweep, sweep_dir, group, slots[slot])
                for point in group:
                    on_start(point, slots[slot])
            if not running:
                break
            time.sleep(poll_s)
            exited = zygote.exited()
            for slot, run in list(running.items()):
                if run.pid not in exited:
                    continue
                del running[slot]
                free.append(slot)
                log = point_files.log_path(sweep_dir, run.points[0])
                for point in run.points:
                    point_files.record_exit(sweep_dir, point, exited[run.pid], log)
                    on_end(point, exited[run.pid], time.perf_counter() - run.started)
    finally:
        stop.restore()
        for run in running.values():  # left by an error here: they save a checkpoint and stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGTERM)
        zygote.close()
    return not stop.signals


def _start(
    zygote: Zygote, sweep: Sweep, sweep_dir, group: tuple[Point, ...], slot: Slot
) -> _Running:
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
    env = {**compilation_cache(sweep_dir), **os.environ, **slot.env}
    return _Running(group, zygote.fork(command, env, slot.cpus, log), time.perf_counter())
