"""Launching a sweep: claim its directory, skip what is finished, run the rest, report.

Idempotent: finished points (done or diverged) are never launched again; interrupted ones
resume from their checkpoints (launch.py does that); failed ones are launched again only with
retry_failed. A point that fails or diverges never stops the others.
"""

import collections
import datetime
import fcntl
import pathlib

from bnresearch.errors import UsageError
from bnresearch.report import text
from bnresearch.report.make import (
    DEFAULT_TARGET_ACCURACY,
    check_target_accuracy,
    make_report,
    regenerate_command,
)
from bnresearch.report.runs import summarize_run
from bnresearch.report.sweep_file import Point, Sweep
from bnresearch.run_status import FAILED, FINISHED, PENDING
from bnresearch.sweep import points as point_files
from bnresearch.sweep.devices import device_slots
from bnresearch.sweep.spec import claim, group_points


def _say(message: str) -> None:
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", flush=True)


def _ended(sweep_dir, point: Point, exit_code: int, seconds: float) -> None:
    state = point_files.state(sweep_dir, point)
    run = summarize_run(point_files.run_dir(sweep_dir, point))
    if state == FAILED:
        error = point_files.error_of(sweep_dir, point)
        _say(
            f"{'FAILED':<11} {point.name} (exit {exit_code}): {error}"
            f"  [log: {point_files.log_path(sweep_dir, point)}]"
        )
        return
    details = f"step {run.step}/{run.total_steps}" if run.total_steps else ""
    if run.best_accuracy is not None:
        details += f", best eval accuracy {run.best_accuracy:.4f}"
    _say(f"{state:<11} {point.name}: {details} ({text.duration(seconds)})")


def _hold_lock(sweep_dir: pathlib.Path):
    """One launch at a time per sweep directory: two would train the same points at once."""
    path = sweep_dir / point_files.LOGS / "launch.lock"
    path.parent.mkdir(exist_ok=True)
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"another launch is running the sweep in {sweep_dir}; wait for it "
            "to end or stop it first"
        ) from None
    return handle


def launch_sweep(
    sweep: Sweep,
    sweep_dir,
    *,
    parallel: int = 1,
    retry_failed: bool = False,
    executor: str = "local",
    slurm: dict | None = None,
    target_accuracy: float | None = None,
    vectorize: str = "seeds",
) -> int:
    """Runs what is left of `sweep` in `sweep_dir`; returns 0 when every point has finished.

    `vectorize` (local executor): which points train together as one population in one process
    (bnresearch/train/members.py): those differing only in their seed, in any member field
    ('hyperparameters'), or none ('off')."""
    sweep_dir = pathlib.Path(sweep_dir)
    if target_accuracy is not None:
        check_target_accuracy(target_accuracy)  # now, not after the training
    slots = device_slots(parallel) if executor == "local" else None  # bad --parallel: no files
    if executor != "local":
        from bnresearch.sweep.slurm import check_settings  # submitit only when asked for

        check_settings(executor, slurm or {})
    claim(sweep, sweep_dir)
    lock = _hold_lock(sweep_dir)  # noqa: F841  (held until this process exits)
    states = {point.name: point_files.state(sweep_dir, point) for point in sweep.points}
    to_run = [
        point
        for point in sweep.points
        if states[point.name] not in FINISHED and (retry_failed or states[point.name] != FAILED)
    ]
    counts = collections.Counter(states.values())
    known = point_files.counted({**counts, PENDING: 0})
    skipped = counts[FAILED] if not retry_failed else 0
    _say(
        f"sweep {sweep_dir}: {len(sweep.points)} points"
        + (f" ({known})" if known else "")
        + f"; {len(to_run)} to run"
        + (f"; {skipped} failed skipped (--retry_failed runs them)" if skipped else "")
    )

    completed = True
    if to_run and executor == "local":
        from bnresearch.sweep.local import run_local

        groups = group_points(sweep, to_run, vectorize)
        populations = [group for group in groups if len(group) > 1]
        if populations:
            _say(
                f"{sum(map(len, populations))} points train in {len(populations)} populations "
                f"(--vectorize={vectorize}), one process each"
            )
        _say(
            f"{min(parallel, len(groups))} processes at a time on "
            + "; ".join(slot.label for slot in slots[: len(groups)])
            + f"; logs in {sweep_dir / point_files.LOGS}"
        )
        completed = run_local(
            sweep,
            sweep_dir,
            groups,
            slots,
            on_start=lambda point, slot: _say(f"{'start':<11} {point.name} on {slot.label}"),
            on_end=lambda point, code, seconds: _ended(sweep_dir, point, code, seconds),
        )
    elif to_run:
        from bnresearch.sweep.slurm import run_submitit

        completed = run_submitit(
            sweep,
            sweep_dir,
            to_run,
            executor=executor,
            settings=slurm or {},
            parallel=parallel,
            on_end=lambda point, code, seconds: _ended(sweep_dir, point, code, seconds),
            say=_say,
        )
    return _finish(sweep, sweep_dir, completed, target_accuracy)


def _finish(sweep: Sweep, sweep_dir: pathlib.Path, completed: bool, target_accuracy) -> int:
    """Prints the table and writes the report when some point has a result (done or diverged:
    a sweep whose points all diverged reports just that); returns the sweep's exit status."""
    states = {point.name: point_files.state(sweep_dir, point) for point in sweep.points}
    unfinished = [name for name, state in states.items() if state not in FINISHED]
    status = 1 if unfinished else 0
    if any(state in FINISHED for state in states.values()):
        target = target_accuracy or DEFAULT_TARGET_ACCURACY
        try:
            report = make_report(sweep_dir, target)
        except Exception as error:  # a bug in the report must not hide how the sweep ended
            _say(
                f"error: the report failed ({type(error).__name__}: {error}); the runs are "
                f"intact; once fixed: {regenerate_command(sweep_dir, target)}"
            )
            status = 1
        else:
            print("\n" + report.table + "\n")
            print("report: " + ", ".join(str(path) for path in report.files), flush=True)
    if not unfinished:
        _say(
            f"all {len(states)} points finished "
            f"({point_files.counted(collections.Counter(states.values()))})"
        )
        return status
    counts = collections.Counter(states[name] for name in unfinished)
    _say(
        ("stopped early; " if not completed else "")
        + point_files.counted(counts)
        + f" of {len(states)} points; status: python launch.py --workdir {sweep_dir} --status"
    )
    return 1
