"""The study's README table and bar figure, from the sweep's report.csv (no number typed by hand):

    python experiments/cifar_norms/tables.py experiments/cifar_norms/report.csv

prints the markdown table (final test accuracy per variant at batch 128 and batch 8, mean ± sample
std over seeds, diverged runs counted apart) and writes accuracy_by_batch.png next to the csv.
"""

import csv
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BATCHES = (128, 8)


def read_rows(path: pathlib.Path) -> dict[tuple[str, int], dict]:
    """(variant, batch) -> its report row; report rows are named '<variant>,batch=<B>'."""
    rows = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            variant, batch = row["variant"].rsplit(",batch=", 1)
            rows[variant, int(batch)] = row
    return rows


def cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    finished = int(row["done"])
    if not finished:
        return f"diverged ({row['diverged']}/{row['points']})"
    text = f"{100 * float(row['final_accuracy_mean']):.1f}"
    if finished > 1:
        text += f" ± {100 * float(row['final_accuracy_std']):.1f}"
    if int(row["diverged"]):
        text += f" ({row['diverged']}/{row['points']} diverged)"
    return text


def table(rows: dict) -> str:
    variants = list(dict.fromkeys(variant for variant, _ in rows))
    lines = [
        "| variant | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "|---|" + "---|" * len(BATCHES),
    ]
    for variant in variants:
        cells = [cell(rows.get((variant, batch))) for batch in BATCHES]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: dict, path: pathlib.Path) -> None:
    variants = list(dict.fromkeys(variant for variant, _ in rows))
    fig, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.4
    for offset, batch in enumerate(BATCHES):
        xs, means, stds = [], [], []
        for index, variant in enumerate(variants):
            row = rows.get((variant, batch))
            if row is None or not int(row["done"]):
                continue
            xs.append(index + (offset - 0.5) * width)
            means.append(100 * float(row["final_accuracy_mean"]))
            stds.append(100 * float(row["final_accuracy_std"] or 0))
        axis.bar(xs, means, width, yerr=stds, capsize=2, label=f"batch {batch}")
    axis.set_xticks(range(len(variants)), variants, rotation=45, ha="right")
    axis.set_ylabel("final test accuracy (%)")
    axis.set_title("ResNet-20, 1 epoch of the CIFAR-10 subset (mean and std over seeds)")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(csv_path: str) -> None:
    path = pathlib.Path(csv_path)
    rows = read_rows(path)
    print(table(rows))
    figure(rows, path.with_name("accuracy_by_batch.png"))


if __name__ == "__main__":
    main(sys.argv[1])
