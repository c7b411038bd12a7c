"""The status view of a sweep directory (or of one run directory): files only, no JAX.

python launch.py --workdir DIR --status
"""

import collections
import pathlib

from bnresearch.errors import UsageError
from bnresearch.report import text
from bnresearch.report.runs import summarize_run
from bnresearch.report.sweep_file import read_sweep
from bnresearch.run_status import FAILED
from bnresearch.sweep import points as point_files

HEADERS = ["point", "status", "step", "best eval acc", "wall time"]


def _row(name: str, state: str, run_dir) -> list[str]:
    run = summarize_run(run_dir)
    step = f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step or "")
    return [name, state, step, text.number(run.best_accuracy), text.duration(run.wall_time_s)]


def status_text(directory) -> str:
    directory = pathlib.Path(directory)
    sweep = read_sweep(directory)
    if sweep is None:
        if not (directory / "config.json").exists():
            raise UsageError(
                f"{directory} holds neither a sweep (sweep.json) nor a run (config.json)"
            )
        return text.table(
            HEADERS,
            [_row(directory.name, summarize_run(directory).status, directory)],
            right={2, 3, 4},
        )
    rows, counts, errors = [], collections.Counter(), []
    for point in sweep.points:
        state = point_files.state(directory, point)
        counts[state] += 1
        rows.append(_row(point.name, state, point_files.run_dir(directory, point)))
        if state == FAILED:
            error = point_files.error_of(directory, point) or "see its log"
            errors.append(f"  {point.name}: {error}  ({point_files.log_path(directory, point)})")
    lines = [
        f"{directory}: {len(sweep.points)} points: {point_files.counted(counts)}",
        "",
        text.table(HEADERS, rows, right={2, 3, 4}),
    ]
    if errors:
        lines += ["", "failed:", *errors]
    return "\n".join(lines)
