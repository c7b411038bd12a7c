"""The study's README table, from the sweep's report.csv (no number typed by hand):

    python experiments/cifar_augment/tables.py experiments/cifar_augment/report.csv

prints final and best test accuracy (%) per augmentation, mean ± sample std over seeds, and the
change of the final accuracy from no augmentation.
"""

import csv
import sys


def main(csv_path: str) -> None:
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    baseline = next(float(row["final_accuracy_mean"]) for row in rows if row["variant"] == "none")
    print("| augmentation | final test accuracy | best | change from none |")
    print("|---|---|---|---|")
    for row in rows:
        final, best = (100 * float(row[f"{kind}_accuracy_mean"]) for kind in ("final", "best"))
        final_std, best_std = (
            100 * float(row[f"{kind}_accuracy_std"]) for kind in ("final", "best")
        )
        change = 100 * (float(row["final_accuracy_mean"]) - baseline)
        print(
            f"| {row['variant']} | {final:.1f} ± {final_std:.1f} | {best:.1f} ± {best_std:.1f}"
            f" | {change:+.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
