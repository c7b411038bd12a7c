"""The errors `launch.py` prints as one line: what went wrong and what to do.

`launch.py` prints them and exits non-zero (2 for bad input, 1 for a failure around the run);
anything else is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input: an unknown name, an impossible size, a workdir of another experiment."""


class EnvironmentFailure(RuntimeError):
    """Something around the run failed, not its command or config: a helper process was killed.
    The message says what happened to the run and what to do."""
