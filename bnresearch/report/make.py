"""A sweep directory -> DIR/report.md, DIR/report.csv and DIR/*.png, and a terminal table."""

import csv
import dataclasses
import math
import pathlib
import shlex
import subprocess

from bnresearch.errors import UsageError
from bnresearch.report import figures, text
from bnresearch.report.naming import short_labels
from bnresearch.report.sweep_file import read_sweep
from bnresearch.report.table import variant_row, variants

DEFAULT_TARGET_ACCURACY = 0.9


@dataclasses.dataclass(frozen=True)
class Report:
    table: str  # the comparison table, for a terminal
    files: list[pathlib.Path]  # report.md, report.csv and the figures


def _csv_value(value):
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def _shown_config(config_file: str) -> str:
    """The config file relative to the git checkout that holds it, as a command run there names
    it (configs/...), whatever directory the report runs in; else its path as recorded."""
    path = pathlib.Path(config_file)
    try:
        checkout = subprocess.run(
            ["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not in a checkout, or the path is gone
        return str(path)
    # A recorded path through a symbolic link may not lie below git's resolved checkout path.
    return str(path.relative_to(checkout)) if path.is_relative_to(checkout) else str(path)


def regenerate_command(sweep_dir, target_accuracy: float) -> str:
    """The command that writes this report again: the directory as given, relative to the
    current directory where it lies below it; the target in full (repr), so the same."""
    sweep_dir = pathlib.Path(sweep_dir)
    if sweep_dir.is_absolute() and sweep_dir.is_relative_to(pathlib.Path.cwd()):
        sweep_dir = sweep_dir.relative_to(pathlib.Path.cwd())
    return shlex.join(
        [
            "python",
            "-m",
            "bnresearch.report",
            str(sweep_dir),
            f"--target_accuracy={float(target_accuracy)!r}",
        ]
    )


def check_target_accuracy(target_accuracy: float) -> None:
    if not 0 < target_accuracy <= 1:
        raise UsageError(f"target accuracy {target_accuracy} must be in (0, 1]")


def make_report(sweep_dir, target_accuracy: float = DEFAULT_TARGET_ACCURACY) -> Report:
    sweep_dir = pathlib.Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    if sweep is None:
        raise UsageError(f"{sweep_dir} holds no sweep.json: a report needs a sweep directory")
    check_target_accuracy(target_accuracy)
    groups = variants(sweep, sweep_dir, target_accuracy)
    rows = [variant_row(variant) for variant in groups]

    csv_path = sweep_dir / "report.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)

    figure_paths = [sweep_dir / "curves.png"]
    figures.learning_curves(groups, sweep_dir, figure_paths[0])
    labels = short_labels(f for v in groups for f in v.values)
    for field in figures.numeric_fields(groups):
        figure_paths.append(sweep_dir / f"final_accuracy_vs_{labels[field]}.png")
        figures.final_accuracy_against(groups, field, figure_paths[-1])
    figure_paths += figures.probe_figures(groups, sweep_dir, sweep_dir)

    headers = [
        "variant",
        "done",
        "diverged",
        "final eval acc",
        "best eval acc",
        f"steps to {target_accuracy:g}",
        f"epochs to {target_accuracy:g}",
        "wall time",
    ]
    cells = [
        [
            r["variant"],
            f"{r['done']}/{r['points']}",
            str(r["diverged"]),
            text.mean_std(r["final_accuracy_mean"], r["final_accuracy_std"]),
            text.mean_std(r["best_accuracy_mean"], r["best_accuracy_std"]),
            (
                text.mean_std(r["steps_to_target_mean"], r["steps_to_target_std"], 0)
                + (f" ({r['reached_target']}/{r['done']})" if r["reached_target"] else "")
            )
            if r["reached_target"]
            else "",
            text.mean_std(r["epochs_to_target_mean"], r["epochs_to_target_std"], 2),
            text.duration(r["wall_time_s_mean"]),
        ]
        for r in rows
    ]

    config = _shown_config(sweep.config_file) + (f":{sweep.arg}" if sweep.arg else "")
    note = (
        "Mean ± sample standard deviation (ddof=1) over the seeds that finished; diverged "
        f"points are counted, not averaged. Steps to {target_accuracy:g}: first evaluated "
        "step at or above it (reached/finished), and the epochs trained by then, the "
        "measure that compares across batch sizes. Wall time: mean training time of a point."
    )
    markdown = [
        f"# Sweep report: {sweep_dir.resolve().name}",
        "",
        f"Config `{config}`, {len(sweep.points)} points in {len(groups)} variants. "
        f"Regenerate with `{regenerate_command(sweep_dir, target_accuracy)}`.",
        "",
        text.markdown_table(headers, cells),
        "",
        note,
        "",
    ]
    markdown += [f"![{path.stem}]({path.name})\n" for path in figure_paths]
    md_path = sweep_dir / "report.md"
    md_path.write_text("\n".join(markdown))
    return Report(
        text.table(headers, cells, right={1, 2, 5, 6, 7}), [md_path, csv_path, *figure_paths]
    )
