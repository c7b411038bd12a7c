"""Reading run directories: status, metrics and what a person wants from them.

Reads the files a run leaves (see bnresearch/train/rundir.py) and imports no training code, so
status views and reports work anywhere the files are, during or after training.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np

from bnresearch.run_status import DONE, FINISHED, observed


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # absent, or mid-rename on a slow disk
        return {}


def read_metrics(run_dir) -> list[dict]:
    """The records of metrics.jsonl; a last line cut by a kill mid-write is skipped."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record holding `key`."""
    return [(record["step"], record[key]) for record in metrics if key in record]


def epochs_at(metrics: list[dict], steps: list[int]) -> list[float] | None:
    """The epochs trained at `steps`, read off the train records' train/epoch: exact at the logged
    steps and linear between them (so exact wherever the batch size stayed the same in between);
    None for a run that logged no epochs."""
    logged = series(metrics, "train/epoch")
    if not logged:
        return None
    logged_steps, epochs = zip(*logged)
    return [float(np.interp(step, (0, *logged_steps), (0.0, *epochs))) for step in steps]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    # A word of bnresearch.run_status (PENDING: no status.json; INTERRUPTED: it says RUNNING
    # but its process is gone).
    status: str
    step: int  # last step with metrics (or the status's step)
    total_steps: int | None
    final_accuracy: float | None  # eval accuracy at the end of a finished run
    best_accuracy: float | None  # best eval accuracy seen so far
    wall_time_s: float | None  # training time of the run, summed over launches
    steps_to_target: int | None  # first evaluated step with eval accuracy >= the target
    epochs_to_target: float | None  # the epochs trained at that step (see epochs_at)


def summarize_run(run_dir, target_accuracy: float | None = None) -> RunSummary:
    run_dir = pathlib.Path(run_dir)
    status = read_json(run_dir / "status.json")
    metrics = read_metrics(run_dir)
    evals = [
        (step, value) for step, value in series(metrics, "eval/accuracy") if math.isfinite(value)
    ]
    final = None
    if status.get("status") == DONE and evals and evals[-1][0] == status.get("step"):
        final = evals[-1][1]
    reached = [
        step for step, value in evals if target_accuracy is not None and value >= target_accuracy
    ]
    epochs_to_target = epochs_at(metrics, reached[:1]) if reached else None  # [epoch] or None
    state = observed(status)
    return RunSummary(
        status=state,
        step=(
            status["step"]
            if status.get("status") in FINISHED
            else max([record["step"] for record in metrics] + [status.get("step", 0)])
        ),
        total_steps=status.get("total_steps"),
        final_accuracy=final,
        best_accuracy=max((value for _, value in evals), default=None),
        wall_time_s=status.get("wall_time_s"),
        steps_to_target=reached[0] if reached else None,
        epochs_to_target=epochs_to_target[0] if epochs_to_target else None,
    )
