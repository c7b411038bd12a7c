"""The study's README results table, from the sweep's report.csv (no number typed by hand):

    python experiments/norm_comparison/tables.py experiments/norm_comparison/report.csv

prints one row per variant, best final test accuracy first: final and best test accuracy (mean
± sample std over seeds) and the steps to 90% test accuracy (mean ± std over the runs that
reached it, and how many did).
"""

import csv
import pathlib
import sys


def mean_std(row: dict, name: str, digits: int) -> str:
    mean, std = float(row[f"{name}_mean"]), float(row[f"{name}_std"] or 0)
    text = f"{mean:.{digits}f}"
    return text if round(std, digits) == 0 else f"{text} ± {std:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | final test accuracy | best | steps to 90% (runs reaching it) |",
        "|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda row: -float(row["final_accuracy_mean"])):
        steps = mean_std(row, "steps_to_target", 0) if row["steps_to_target_mean"] else "never"
        lines.append(
            f"| {row['variant']} | {mean_std(row, 'final_accuracy', 4)} | "
            f"{mean_std(row, 'best_accuracy', 4)} | {steps} "
            f"({row['reached_target']}/{row['points']}) |"
        )
    return "\n".join(lines)


def main(report_csv: str) -> None:
    with pathlib.Path(report_csv).open() as file:
        print(table(list(csv.DictReader(file))))


if __name__ == "__main__":
    main(sys.argv[1])
