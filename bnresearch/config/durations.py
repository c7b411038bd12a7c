"""Durations written as steps or epochs ("500 steps", "30 epochs", "0.5 ep").

They are resolved to steps in one place, ``bnresearch.optim.batch_size_schedule.Timeline``, where
an epoch's length in steps can change with the batch size.
"""

import re

from bnresearch.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(steps?|st|epochs?|ep)\s*$")


def parse_duration(text: str) -> tuple[float, str]:
    """Returns (amount, 'steps' | 'epochs'); raises a one-line UsageError on anything else."""
    match = _DURATION.match(str(text))
    if not match:
        raise UsageError(
            f"bad duration {text!r}: write '<number> steps' or '<number> epochs' "
            "(e.g. '500 steps', '30 epochs', '0.5 ep')"
        )
    amount, unit = float(match.group(1)), match.group(2)
    if unit.startswith("s"):
        if amount != int(amount):
            raise UsageError(f"bad duration {text!r}: a number of steps must be whole")
        return amount, "steps"
    return amount, "epochs"
