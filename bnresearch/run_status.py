"""The words of a run's status, as status.json spells them and as the status views show them;
how the run files are written, and how a reader tells a running run from a dead one.

A run writes RUNNING (with its host and pid) when it starts, then DONE, DIVERGED, PREEMPTED or
FAILED (train/loop.py). Readers of run directories add PENDING for a run that has written
nothing yet and INTERRUPTED for one ended before it could save: its status still says RUNNING
but its process is gone (`process_gone`), or, for a sweep point, a signal ended its launch
(sweep/points.py). A leaf module of the standard library only: the sweep parent and the report
import it, and neither imports JAX.
"""

import contextlib
import json
import os
import pathlib
import socket

DONE = "done"
DIVERGED = "diverged"
RUNNING = "running"
PREEMPTED = "preempted"
FAILED = "failed"
INTERRUPTED = "interrupted"
PENDING = "pending"

# Runs with a result: never launched again; reports average DONE ones and count DIVERGED ones.
FINISHED = (DONE, DIVERGED)


def this_process() -> dict:
    """What a RUNNING status records of the process writing it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_gone(status: dict) -> bool:
    """Whether the process a RUNNING status names has ended (killed, or crashed past its handlers).

    Known only on the host that ran it; elsewhere (a SLURM node, another machine of the cluster)
    the run may well be alive, so it is not called gone. A pid reused since by another process
    reads as alive: the status then stays RUNNING, as it was before anyone looked.
    """
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def observed(status: dict) -> str:
    """The state a reader shows for a run's status.json: PENDING without one, INTERRUPTED for a
    RUNNING run whose process is gone (killed before it could say so), else its status."""
    state = status.get("status", PENDING)
    if state == RUNNING and process_gone(status):
        return INTERRUPTED
    return state


def write_json(path, value) -> None:
    """Writes `value` as JSON to `path` atomically (see `write_atomically`)."""
    write_atomically(path, json.dumps(value, indent=2) + "\n")


def write_atomically(path, text: str) -> None:
    """Writes `text` to `path` atomically: readers, and a relaunch after a kill or a full disk,
    see the old file or the new one, never a part.

    The bytes go to a temporary file in the same directory (a rename is atomic only within one
    filesystem), reach the disk (fsync) before the rename, and the directory is synced after it,
    so even a power cut leaves one of the two whole files. A write that fails leaves the old file
    and removes its temporary one. Callers guarantee one writer per file (the workdir's lock, the
    sweep's lock), so the temporary name needs no uniqueness of its own.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        # Some filesystems cannot sync a directory; the rename itself is done by then.
        with contextlib.suppress(OSError):
            os.fsync(directory)
    finally:
        os.close(directory)
