"""A Python program in a fresh process, for tests of what happens when a process starts."""

import os
import subprocess
import sys


def run_python(program: str, env: dict, without=()) -> subprocess.CompletedProcess:
    """`python -c program` with this process's environment less the variables `without`, plus
    `env`; its output captured, failing if it fails."""
    clean = {key: value for key, value in os.environ.items() if key not in without}
    return subprocess.run(
        [sys.executable, "-c", program],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
