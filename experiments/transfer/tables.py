"""The study's README table and figure, from the sweep's report.csv (no number typed by hand):

    python experiments/transfer/tables.py experiments/transfer/report.csv

prints the markdown table (final test accuracy per variant at 20, 100 and 500 training images
per class, mean ± sample std over seeds) and writes accuracy_by_size.png next to the csv.
"""

import csv
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZES = (20, 100, 500)


def read_rows(path: pathlib.Path) -> dict[tuple[str, int], dict]:
    """(variant, images per class) -> its report row; rows are named '<variant>,n=<N>'."""
    rows = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            variant, n = row["variant"].rsplit(",n=", 1)
            rows[variant, int(n)] = row
    return rows


def cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    finished = int(row["done"])
    if not finished:
        return f"not finished ({row['points']} runs)"
    text = f"{100 * float(row['final_accuracy_mean']):.1f}"
    if finished > 1:
        text += f" ± {100 * float(row['final_accuracy_std']):.1f}"
    return text


def table(rows: dict) -> str:
    variants = list(dict.fromkeys(variant for variant, _ in rows))
    lines = [
        "| variant | " + " | ".join(f"{n} per class" for n in SIZES) + " |",
        "|---|" + "---|" * len(SIZES),
    ]
    for variant in variants:
        cells = [cell(rows.get((variant, n))) for n in SIZES]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: dict, path: pathlib.Path) -> None:
    variants = list(dict.fromkeys(variant for variant, _ in rows))
    fig, axis = plt.subplots(figsize=(8, 5))
    for variant in variants:
        points = [(n, rows[variant, n]) for n in SIZES if (variant, n) in rows]
        points = [(n, row) for n, row in points if int(row["done"])]
        axis.errorbar(
            [n for n, _ in points],
            [100 * float(row["final_accuracy_mean"]) for _, row in points],
            yerr=[100 * float(row["final_accuracy_std"] or 0) for _, row in points],
            marker="o",
            capsize=3,
            label=variant,
            linestyle="--" if variant == "scratch" else "-",
        )
    axis.set_xscale("log")
    axis.set_xticks(SIZES, [str(n) for n in SIZES])
    axis.minorticks_off()
    axis.set_xlabel("training images per class (classes 5-9)")
    axis.set_ylabel("final test accuracy (%), 1,000 test images")
    axis.set_title("ResNet-20 pretrained on CIFAR-10 classes 0-4, fine-tuned on 5-9")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(csv_path: str) -> None:
    path = pathlib.Path(csv_path)
    rows = read_rows(path)
    print(table(rows))
    figure(rows, path.with_name("accuracy_by_size.png"))


if __name__ == "__main__":
    main(sys.argv[1])
