"""The sweep's zygote (bnresearch/sweep/zygote.py) on its own: what its forked points get, and how
their ends reach the sweep. The full sweep path is in test_launch_sweep.py."""

import os
import signal
import sys
import time

import pytest

from bnresearch.errors import EnvironmentFailure
from bnresearch.sweep.zygote import Zygote
from tests.sweep.sweeps import TINY, sweep_env

LAUNCH = [sys.executable, "-m", "bnresearch.launch"]


def wait_for_exits(zygote: Zygote, pids: set, timeout: float = 60) -> dict:
    codes, deadline = {}, time.time() + timeout
    while set(codes) != pids and time.time() < deadline:
        codes.update(zygote.exited())
        time.sleep(0.05)
    return codes


@pytest.fixture
def zygote():
    zygote = Zygote(dict(os.environ))
    yield zygote
    zygote.close()


def test_a_point_appends_to_its_log_and_exits_as_launch_py_would(zygote, tmp_path):
    log = tmp_path / "point.log"
    log.write_text("header\n")
    command = [*LAUNCH, "--config=no_such_config.py", f"--workdir={tmp_path / 'w'}"]
    pid = zygote.fork(command, dict(os.environ), None, log)
    assert wait_for_exits(zygote, {pid}) == {pid: 2}  # launch.py's exit code for bad input
    text = log.read_text()
    assert text.startswith("header\n")
    assert "error: config file no_such_config.py not found" in text


def test_a_point_runs_in_its_own_group_on_its_cores_until_a_signal_ends_it(
    zygote, tmp_path, prepared_data_dir
):
    core = min(os.sched_getaffinity(0))
    command = [
        *LAUNCH,
        f"--config={TINY}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.dataset.data_dir={prepared_data_dir}",
        "--config.train_duration=100000 steps",
    ]
    pid = zygote.fork(command, sweep_env(), {core}, tmp_path / "point.log")
    deadline = time.time() + 30
    while os.sched_getaffinity(pid) != {core} and time.time() < deadline:
        time.sleep(0.01)  # the fork sets its affinity first thing, maybe after this call
    assert os.sched_getaffinity(pid) == {core}
    assert os.getpgid(pid) == pid  # its own process group: the sweep's Ctrl-C is not its
    os.kill(pid, signal.SIGKILL)
    assert wait_for_exits(zygote, {pid}) == {pid: -signal.SIGKILL}  # as Popen.returncode


def test_only_launch_commands_are_forked(zygote, tmp_path):
    with pytest.raises(ValueError, match="runs bnresearch.launch only"):
        zygote.fork([sys.executable, "-c", "pass"], dict(os.environ), None, tmp_path / "log")


def test_the_sweep_hears_when_its_zygote_dies():
    zygote = Zygote(dict(os.environ))
    zygote._process.kill()
    zygote._process.wait()
    with pytest.raises(EnvironmentFailure, match=r"zygote.py\) ended with exit code -9"):
        for _ in range(100):
            zygote.exited()
            time.sleep(0.05)
    zygote.close()
