"""The study's README tables (no number typed by hand).

python experiments/why_bn/tables.py experiments/why_bn/report.csv
    prints the accuracy table from the sweep's report.csv.
python experiments/why_bn/tables.py --probes runs/why_bn experiments/why_bn/probes.csv
    reads the probes' records of every run of the sweep directory, writes probes.csv (per
    variant: the median over a run's measurements, then mean and std over seeds) and prints
    its table; probes.csv is committed, as the run directories are not.
"""

import csv
import json
import pathlib
import statistics
import sys

# (metric, column title) of the probes table; the training loss and accuracy are the last
# logged window's (the last 10 updates), the rest the median over a run's measurements.
LAST = (("train/loss", "final train loss"), ("train/accuracy", "final train accuracy"))
PROBES = (
    ("landscape/loss_range", "loss range"),
    ("landscape/gradient_predictiveness", "grad. predictiveness"),
    ("landscape/beta_smoothness", "beta-smoothness"),
    ("ics/mean_l2", "ICS l2"),
    ("ics/mean_cosine", "ICS cosine"),
)


def _pm(mean: str, std: str, scale: float = 1.0, digits: int = 1) -> str:
    if mean == "nan":
        return "not measured"
    text = f"{scale * float(mean):.{digits}f}"
    return text + (f" ± {scale * float(std):.{digits}f}" if std else "")


def accuracy_table(csv_path: str) -> str:
    lines = [
        "| variant | runs done of (diverged) | final test accuracy (%) | best test accuracy (%) |",
        "|---|---|---|---|",
    ]
    with open(csv_path) as file:
        for row in csv.DictReader(file):
            lines.append(
                f"| {row['variant']} | {row['done']} of {row['points']} ({row['diverged']}) | "
                f"{_pm(row['final_accuracy_mean'], row['final_accuracy_std'], 100)} | "
                f"{_pm(row['best_accuracy_mean'], row['best_accuracy_std'], 100)} |"
            )
    return "\n".join(lines)


def probe_rows(sweep_dir: pathlib.Path) -> list[dict]:
    """Per variant (a run's name less `,seed=N`; finished runs only), each probe's median over
    the run's measurements, mean and sample std over seeds."""
    runs: dict[str, list[dict]] = {}
    for metrics in sorted(sweep_dir.glob("*/metrics.jsonl")):
        status = metrics.parent / "status.json"
        if not status.exists() or json.loads(status.read_text())["status"] != "done":
            continue
        variant = metrics.parent.name.rsplit(",seed=", 1)[0]
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        medians = {key: [r[key] for r in records if key in r][-1] for key, _ in LAST}
        for key, _ in PROBES:
            values = [r[key] for r in records if key in r]
            medians[key] = statistics.median(values) if values else float("nan")
        runs.setdefault(variant, []).append(medians)
    rows = []
    for variant, medians in runs.items():
        row = {"variant": variant, "runs": len(medians)}
        for key, _ in LAST + PROBES:
            values = [m[key] for m in medians]
            measured = all(value == value for value in values)  # NaN: never measured
            row[f"{key}_mean"] = statistics.mean(values) if measured else float("nan")
            row[f"{key}_std"] = statistics.stdev(values) if measured and len(values) > 1 else ""
        rows.append(row)
    return rows


def probes_table(csv_path: str) -> str:
    lines = [
        "| variant | " + " | ".join(title for _, title in LAST + PROBES) + " |",
        "|---|" + "---|" * len(LAST + PROBES),
    ]
    with open(csv_path) as file:
        for row in csv.DictReader(file):
            cells = [
                _pm(row[f"{key}_mean"], row[f"{key}_std"], digits=3) for key, _ in LAST + PROBES
            ]
            lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[0] == "--probes":
        rows = probe_rows(pathlib.Path(argv[1]))
        with open(argv[2], "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(probes_table(argv[2]))
    else:
        print(accuracy_table(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
