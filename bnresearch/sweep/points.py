"""Where a sweep's points stand, from their files alone.

Each point has its run directory DIR/<name>/ (written by launch.py) and, outside it so the run
directory stays a plain run directory, DIR/logs/<name>.log (its console output, appended per
launch) and DIR/logs/<name>.exit.json (how its last launch ended). A point is

    done, diverged  finished: never launched again
    failed          its last launch exited with an error: launched again only on --retry_failed
    preempted       stopped by a signal after saving: the next launch resumes
    interrupted     ended before it could save: by a signal, or its status says running but its
                    process is gone (killed); the next launch resumes or restarts
    running         launched and not ended (or running on another host, where this one cannot
                    look): the next launch resumes
    pending         never launched
"""

import pathlib

from bnresearch.report.runs import read_json
from bnresearch.report.sweep_file import Point
from bnresearch.run_status import (
    DIVERGED,
    DONE,
    FAILED,
    FINISHED,
    INTERRUPTED,
    PENDING,
    PREEMPTED,
    RUNNING,
    observed,
    write_json,
)

LOGS = "logs"
STATES = (DONE, DIVERGED, RUNNING, PREEMPTED, INTERRUPTED, FAILED, PENDING)


def counted(counts) -> str:
    """'3 done, 1 failed': a Counter of states, in the order of STATES."""
    return ", ".join(f"{counts[s]} {s}" for s in STATES if counts.get(s))


def log_path(sweep_dir, point: Point) -> pathlib.Path:
    return pathlib.Path(sweep_dir) / LOGS / f"{point.name}.log"


def exit_path(sweep_dir, point: Point) -> pathlib.Path:
    return pathlib.Path(sweep_dir) / LOGS / f"{point.name}.exit.json"


def run_dir(sweep_dir, point: Point) -> pathlib.Path:
    return pathlib.Path(sweep_dir) / point.name


def last_error(log: pathlib.Path) -> str:
    """The `error: ...` line of a failed launch, else its last line."""
    if not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1]


def record_exit(sweep_dir, point: Point, exit_code: int, log: pathlib.Path | None = None) -> None:
    """Called when a launch of the point ends; a negative code is the signal that ended it.
    `log`: the launch's log, where not the point's own (a population's is its first point's)."""
    record = {"exit_code": exit_code}
    if exit_code > 0:
        record["error"] = last_error(log or log_path(sweep_dir, point))
    write_json(exit_path(sweep_dir, point), record)


def state(sweep_dir, point: Point) -> str:
    record = read_json(run_dir(sweep_dir, point) / "status.json")
    status = record.get("status")
    if status in FINISHED:
        return status
    exit_code = read_json(exit_path(sweep_dir, point)).get("exit_code")
    if (exit_code or 0) > 0 or status == FAILED:
        return FAILED
    if exit_code is not None and exit_code < 0 and status in (None, RUNNING):
        return INTERRUPTED  # a signal ended it before it could save (e.g. while compiling)
    return observed(record)  # INTERRUPTED too if killed with its sweep, or by hand


def error_of(sweep_dir, point: Point) -> str:
    return read_json(exit_path(sweep_dir, point)).get("error", "")
