"""Results that the session's test workers share: a fixture whose runs take tens of seconds is
computed by the first worker that needs it and read by the others, instead of once per worker
(pytest-xdist gives every worker its own session, so its own module and session fixtures)."""

import fcntl
import json
import os
import pathlib
import shutil
from typing import Callable


def computed_once(tmp_path_factory, name: str, compute: Callable[[pathlib.Path], dict]):
    """The folder `name` of this test session and the JSON-able facts that `compute(folder)`
    returned when it filled it: computed by the first worker to ask, under a lock the others
    wait on. A compute that failed leaves no facts; the next worker to ask starts over."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # the session's folder, above each worker's own
    folder, facts_file = base / name, base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not facts_file.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            facts_file.write_text(json.dumps(compute(folder)))
    return folder, json.loads(facts_file.read_text())
