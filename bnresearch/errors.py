"""The error a user can fix by changing their command or config.

`launch.py` prints it as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""


class UsageError(ValueError):
    """Bad input: an unknown name, an impossible size, a workdir of another experiment."""
