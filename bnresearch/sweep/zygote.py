"""A process that imports what a point's process needs once, then forks every point of a local
sweep from itself: the points skip the interpreter's start and the imports of JAX, flax, TFDS,
grain and orbax (1.2 s per process on the 2-core development machine), which the sweep would
otherwise pay once per point: the README's sweep of 13 populations took 68-69 s before, 55.9-61.2 s
with it (median 56.3 s).

Each forked point is still a process of its own, as `python -m bnresearch.launch ...` started
by the sweep would be: its own process group, CPU affinity, environment and log, the same code
from `launch.main` on, and an exit code the sweep reads as before. The zygote imports modules
only: it starts no JAX backend (which reads ``XLA_FLAGS``, ``CUDA_VISIBLE_DEVICES`` and the CPU
affinity when a point first computes) and no thread of its own, so forking it is safe.

The zygote starts with the sweep's environment; a point's own variables (a slot's
``CUDA_VISIBLE_DEVICES``) are set in the point before anything reads them. Variables that JAX
reads when it is imported, or glibc when a process starts, are the sweep's for every point.

Protocol, one JSON object per line: the sweep writes ``{"command", "env", "cpus", "log"}`` to
the zygote's stdin for each point; the zygote answers ``{"started": pid}`` and, when a point
ends, ``{"exited": pid, "code": code}`` (the code as `subprocess.Popen.returncode` gives it:
negative for a signal). The zygote ends when its stdin closes, or with the sweep's process
(a SIGTERM, which its points get in turn and answer by saving a checkpoint).
"""

import atexit
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import traceback

from bnresearch import host_allocator
from bnresearch.errors import EnvironmentFailure

# The module a point's command runs (bnresearch/sweep/spec.py): the zygote runs it in the fork.
LAUNCH_MODULE = "bnresearch.launch"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """This process gets a SIGTERM when its parent ends (Linux; elsewhere it outlives it)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Zygote:
    """The sweep's handle on its zygote process."""

    def __init__(self, env: dict):
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            process_group=0,  # a Ctrl-C in the terminal reaches the sweep alone
        )
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self._exited = {}

    def fork(self, command: list[str], env: dict, cpus, log) -> int:
        """Starts `command` (``python -m bnresearch.launch ...``) as a fork of the zygote, with
        `env`, affinity to `cpus` (None: the zygote's) and its output appended to `log`;
        returns its pid."""
        if command[1:3] != ["-m", LAUNCH_MODULE]:
            raise ValueError(f"the zygote runs {LAUNCH_MODULE} only, not {command}")
        request = {"command": command, "env": env, "cpus": sorted(cpus or []), "log": str(log)}
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        self._process.stdin.flush()
        while True:
            for message in self._read(wait=True):
                if "started" in message:
                    return message["started"]

    def exited(self) -> dict[int, int]:
        """The points that ended since the last call: pid -> exit code. Raises
        EnvironmentFailure if the zygote itself ended (its points end with it)."""
        self._read(wait=False)
        exited, self._exited = self._exited, {}
        return exited

    def close(self) -> None:
        """Ends the zygote; call it once no point runs."""
        self._process.stdin.close()
        self._process.wait()
        self._selector.close()

    def _read(self, wait: bool) -> list[dict]:
        """The messages the zygote has written; with `wait`, blocks until there is one."""
        messages = []
        while self._selector.select(None if wait and not messages else 0):
            chunk = os.read(self._process.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EnvironmentFailure(
                    "the process that starts the sweep's points (bnresearch/sweep/zygote.py) "
                    f"ended with exit code {self._process.wait()} (a negative code is the signal "
                    "that ended it); its points stopped with it, each saving a checkpoint once it "
                    "had begun training: launch the same command again to resume them"
                )
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            messages += map(json.loads, lines)
        for message in messages:
            if "exited" in message:
                self._exited[message["exited"]] = message["code"]
        return messages


# ----- the zygote's side ------------------------------------------------------------------------


def _run_point(request: dict) -> int:
    """In the fork: becomes the point's process, runs its launch command, returns its exit
    code as the interpreter would (a traceback in the log and 1 for an uncaught exception)."""
    from bnresearch import launch, xla_flags

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    die_with_parent()
    if request["cpus"]:
        os.sched_setaffinity(0, request["cpus"])
    os.environ.clear()
    os.environ.update(request["env"])
    xla_flags.apply()  # the kit's XLA options, which the sweep's environment may lack
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(source, target)
    os.close(log)
    os.close(null)
    sys.argv = [LAUNCH_MODULE, *request["command"][3:]]
    try:
        launch.run(sys.argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # os._exit skips them; a normal interpreter exit runs them
    sys.stdout.flush()
    sys.stderr.flush()
    return code or 0


def _answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    """Collects every point that has ended and tells the sweep its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _answer({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _requests():
    """The sweep's requests, one per line of stdin, as they come, until stdin closes; between
    them, reports the points that have ended."""
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    buffer = b""
    while True:
        if selector.select(timeout=0.05):
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from map(json.loads, lines)
        _reap()


def serve() -> None:
    """The zygote: imports, then forks a point per request until its stdin closes."""
    # Here, not in a preexec_fn of the sweep's Popen, which would make Python fork a process
    # that may hold JAX's threads (tests start zygotes from such processes). A sweep that dies
    # before this line has sent no request: the zygote then reads the end of its stdin and ends.
    die_with_parent()
    host_allocator.restart_with_tunables()  # the points' allocator setting, as launch.run's
    import bnresearch.launch  # noqa: F401  (what every point runs: the imports to share)
    import bnresearch.train.loop  # noqa: F401
    import bnresearch.train.population  # noqa: F401

    for request in _requests():
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            os._exit(_run_point(request))
        try:
            os.setpgid(pid, pid)  # as the child does: whichever runs first, no race
        except (ProcessLookupError, PermissionError):  # it has ended already
            pass
        _answer({"started": pid})
    while True:  # stdin closed: the sweep waits for no point; collect any left
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    serve()
