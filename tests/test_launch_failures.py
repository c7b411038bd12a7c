"""Faults a run meets in the field, replayed for real through the command line: a second launch
on a held workdir, SIGKILL, an early SIGTERM, a full disk, a damaged config.json, a missing
config file, a workdir that is a file. Each ends in one line or in a recovery that loses nothing:
the resumed run's metrics equal those of a run that never stopped."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from bnresearch import launch as launch_module
from bnresearch.train import loop
from tests.sweep.sweeps import status_view
from tests.train.runs import TINY_OVERRIDES, launch, read_metrics, read_status, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
# A tiny MLP, quick to compile, for 600 steps (about 3 s on a CPU core): time to stop it midway.
MLP = {"model.name": "mlp", "model.options.hidden_sizes": "(16,)"}
LONG = {
    **MLP,
    "train_duration": "600 steps",
    "log_every": "10 steps",
    "eval_every": "300 steps",
    "checkpoint.every": "100 steps",
}


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def lock_holder(workdir) -> int | None:
    try:
        return json.loads((pathlib.Path(workdir) / "run.lock").read_text())["pid"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def last_step(workdir) -> int:
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    complete = metrics.read_text().splitlines()[:-1] if metrics.exists() else []
    return json.loads(complete[-1])["step"] if complete else 0


def error_line(result) -> str:
    """The one line a failed launch prints; no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def paused_holder(tmp_path_factory, prepared_data_dir):
    """A run whose workdir a second launch tries while the first holds it. The first is paused
    (SIGSTOP) meanwhile, so the second surely meets it; resumed, it runs to its end, so its
    metrics are those of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("held") / "w"
    first = launch(workdir, prepared_data_dir, devices=1, wait=False, **LONG)
    wait_for(lambda: lock_holder(workdir) == first.pid, first)
    first.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        second = launch(workdir, prepared_data_dir, devices=1, **LONG)
        second_s = time.monotonic() - started
    finally:
        first.send_signal(signal.SIGCONT)
    first_output = first.communicate(timeout=240)[0]
    return workdir, first, first_output, second, second_s


@pytest.fixture(scope="module")
def uninterrupted(paused_holder):
    return read_metrics(paused_holder[0])


def test_a_second_launch_on_a_held_workdir_is_refused_naming_the_holder(paused_holder):
    workdir, first, first_output, second, second_s = paused_holder
    assert second.returncode == 2
    assert error_line(second).startswith(
        f"error: workdir {workdir} is in use by process {first.pid} on {socket.gethostname()} "
        "(since "
    )
    assert "compiled" not in second.stderr and second_s < 60  # refused before any real work
    # The first one ends unharmed: one record per logging step, in order, none twice.
    assert first.returncode == 0, first_output
    assert read_status(workdir)["status"] == "done"
    train_steps = [m["step"] for m in read_metrics(workdir) if "train/loss" in m]
    assert train_steps == list(range(10, 601, 10))


def test_a_killed_run_reads_interrupted_and_its_lock_is_taken_over(
    tmp_path, prepared_data_dir, uninterrupted
):
    killed = launch(tmp_path, prepared_data_dir, devices=1, wait=False, **LONG)
    wait_for(lambda: last_step(tmp_path) >= 110, killed)
    killed.kill()
    killed.wait()
    assert read_status(tmp_path)["status"] == "running"  # as the run left it
    view = status_view(tmp_path)
    assert view.returncode == 0, view.stderr
    assert " interrupted " in view.stdout and " running " not in view.stdout, view.stdout
    assert lock_holder(tmp_path) == killed.pid  # its lock file outlives it; the lock does not
    result = launch(tmp_path, prepared_data_dir, devices=1, **LONG)
    assert result.returncode == 0, result.stderr
    assert lock_holder(tmp_path) not in (None, killed.pid)
    assert read_metrics(tmp_path) == uninterrupted
    assert " done " in status_view(tmp_path).stdout


# A full disk during an append to metrics.jsonl: part of the line is written, then ENOSPC.
FULL_DISK_AT_STEP_250 = """
import errno

from bnresearch.train import rundir

write = rundir.MetricsLog.write


def write_until_the_disk_is_full(self, step, scalars):
    if step == 250:
        self._jsonl.write('{"step": 250, "tr')
        self._jsonl.flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    write(self, step, scalars)


rundir.MetricsLog.write = write_until_the_disk_is_full
"""


def launch_with(injection: str, script_dir, workdir, data_dir, **overrides):
    """tests/train/runs.py's `launch` on one device, with `injection` run first in its process."""
    script = pathlib.Path(script_dir) / "injected_launch.py"
    script.write_text(injection + "\nfrom bnresearch import launch\n\nlaunch.run()\n")
    flags = [f"--config.{key}={value}" for key, value in {**TINY_OVERRIDES, **overrides}.items()]
    command = [
        sys.executable,
        str(script),
        f"--config={REPO}/configs/quickstart.py",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_dir}",
        *flags,
    ]
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "0",
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_full_disk_ends_in_one_line_and_the_relaunch_loses_nothing(
    tmp_path, prepared_data_dir, uninterrupted
):
    workdir = tmp_path / "w"
    failed = launch_with(FULL_DISK_AT_STEP_250, tmp_path, workdir, prepared_data_dir, **LONG)
    assert failed.returncode == 1
    assert error_line(failed) == (
        "error: no space left on the device: free some space (or use a --workdir on another "
        "disk), then launch the same command again; the run resumes from its last checkpoint"
    )
    assert (workdir / "metrics.jsonl").read_text().endswith('\n{"step": 250, "tr')
    assert read_status(workdir)["status"] == "failed"
    result = launch(workdir, prepared_data_dir, devices=1, **LONG)
    assert result.returncode == 0, result.stderr
    assert 'metrics.jsonl: dropped its last line \'{"step": 250, "tr\', cut short' in result.stderr
    assert "resumed from the checkpoint at step 200" in result.stderr
    assert read_metrics(workdir) == uninterrupted


def test_sigterm_right_after_the_start_exits_cleanly(tmp_path, prepared_data_dir):
    process = launch(tmp_path, prepared_data_dir, devices=1, wait=False, **LONG)
    wait_for(lambda: lock_holder(tmp_path) == process.pid, process)  # preflight is done
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    status = read_status(tmp_path)
    assert status["status"] == "preempted" and status["step"] < 600, output
    assert "finished with status preempted" in output


def test_a_notice_during_preflight_stops_the_run_before_it_trains(tmp_path, data_dir, monkeypatch):
    real_preflight = loop.preflight

    def preflight_meeting_a_notice(config, rundir):
        os.kill(os.getpid(), signal.SIGTERM)  # as during the dataset's preparation
        return real_preflight(config, rundir)

    monkeypatch.setattr(loop, "preflight", preflight_meeting_a_notice)
    config = tiny_config(data_dir, **{**MLP, "model.options.hidden_sizes": (16,)})
    assert loop.train_and_evaluate(config, str(tmp_path)) == "preempted"
    assert read_status(tmp_path) == {
        "status": "preempted",
        "step": 0,
        "total_steps": 24,
        "wall_time_s": 0.0,
    }
    assert not list((tmp_path / "checkpoints").iterdir())
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_missing_config_file_is_one_line(tmp_path):
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={tmp_path}/nowhere.py",
        f"--workdir={tmp_path}/w",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert error_line(result) == (
        f"error: config file {tmp_path}/nowhere.py not found; give "
        "the path of a config file, e.g. --config=configs/quickstart.py"
    )
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=120)
    assert "Traceback" in verbose.stderr  # asked for
    assert verbose.stderr.strip().splitlines()[-1] == error_line(result)
    assert not (tmp_path / "w").exists()


def test_a_workdir_that_is_a_file_is_one_line_and_nothing_is_created(tmp_path, prepared_data_dir):
    (tmp_path / "file").write_text("notes\n")
    result = launch(tmp_path / "file" / "w", prepared_data_dir, devices=1, **MLP)
    assert result.returncode == 2
    assert error_line(result) == (
        f"error: workdir {tmp_path}/file/w: {tmp_path}/file is a "
        "file, not a directory; use another --workdir"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert (tmp_path / "file").read_text() == "notes\n"


def test_a_truncated_config_json_is_one_line_and_nothing_is_touched(tmp_path, prepared_data_dir):
    (tmp_path / "config.json").write_text('{\n  "base_batch_size": 32,\n  "bas')
    result = launch(tmp_path, prepared_data_dir, devices=1, **MLP)
    assert result.returncode == 2
    assert error_line(result).startswith(
        f"error: {tmp_path}/config.json is damaged (not JSON: Unterminated string starting at: "
    )
    assert error_line(result).endswith("or use a new --workdir")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes anywhere (tests/train/test_rundir.py simulates it)"
)
def test_an_unwritable_workdir_is_one_line(tmp_path, prepared_data_dir):
    tmp_path.chmod(0o500)
    try:
        result = launch(tmp_path / "w", prepared_data_dir, devices=1, **MLP)
    finally:
        tmp_path.chmod(0o700)
    assert result.returncode == 2
    assert error_line(result) == (
        f"error: workdir {tmp_path}/w: {tmp_path} is not writable by "
        "this user; make it writable or use another --workdir"
    )
    assert not (tmp_path / "w").exists()


NO_SPACE = (
    "no space left on the device{}: free some space (or use a --workdir on another disk), "
    "then launch the same command again; the run resumes from its last checkpoint"
)


def wrapped(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error, message",
    [
        # How orbax's array writes (tensorstore) report a full disk: no OSError at hand.
        (
            ValueError(
                'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/12/d/0": '
                "No space left on device"
            ),
            NO_SPACE.format(""),
        ),
        (
            wrapped(Exception("a save failed"), OSError(28, "No space left on device", "/w/x")),
            NO_SPACE.format(" (/w/x)"),
        ),
        (
            PermissionError(13, "Permission denied", "/w/environment.json.tmp"),
            "permission denied (/w/environment.json.tmp): give this user access to it, or use "
            "another --workdir (or dataset.data_dir)",
        ),
        (
            NotADirectoryError(20, "Not a directory", "/data/digits"),
            "not a directory (/data/digits): a file stands where a directory is needed",
        ),
        # Not the environment: a bug, or the device's memory, keep their tracebacks.
        (ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"), None),
        (KeyError("state"), None),
    ],
)
def test_environment_failures_are_told_apart_from_bugs(error, message):
    assert launch_module._environment_problem(error) == message
