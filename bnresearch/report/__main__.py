"""python -m bnresearch.report DIR [--target_accuracy=0.95]: writes DIR/report.md, report.csv and
the PNG figures, and prints the comparison table."""

import argparse
import sys

from bnresearch.errors import UsageError
from bnresearch.report.make import DEFAULT_TARGET_ACCURACY, make_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnresearch.report", description=__doc__)
    parser.add_argument("sweep_dir", help="a sweep directory (holding sweep.json)")
    parser.add_argument(
        "--target_accuracy",
        type=float,
        default=DEFAULT_TARGET_ACCURACY,
        help="eval accuracy of the 'steps to' column (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        report = make_report(args.sweep_dir, args.target_accuracy)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.table)
    print("\n" + "\n".join(str(path) for path in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
