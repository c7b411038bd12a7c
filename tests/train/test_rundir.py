"""The run files under damage and contention, without training: a cut metrics line, a damaged
config.json, atomic writes, the workdir's lock, and the host and pid that tell a dead run."""

import errno
import json
import logging
import os
import socket
import subprocess

import pytest

from bnresearch import run_status
from bnresearch.report.runs import summarize_run
from bnresearch.report.sweep_file import Point
from bnresearch.sweep import points
from bnresearch.train.rundir import LOCK_FILE, MetricsLog, RunDirectory, WorkdirError
from tests.train.runs import tiny_config

RECORDS = [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.25}]


def lines(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def config(tmp_path):
    return tiny_config(str(tmp_path / "data"))


def test_a_cut_last_metrics_line_is_dropped_and_reported(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(lines(RECORDS) + '{"step": 3, "tr')
    with caplog.at_level(logging.WARNING, logger="bnresearch"):
        MetricsLog(RunDirectory(tmp_path), resume_step=2).close()
    assert metrics.read_text() == lines(RECORDS)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bnresearch.train.rundir"]
    assert 'dropped its last line \'{"step": 3, "tr\', cut short by an interrupted' in warning


def test_a_damaged_line_elsewhere_is_refused_in_one_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(lines(RECORDS[:1]) + "{garbage\n" + lines(RECORDS[1:]))
    with pytest.raises(WorkdirError, match=r"metrics.jsonl: line 2 is not JSON \('\{garbage'\)"):
        MetricsLog(RunDirectory(tmp_path), resume_step=2)
    assert metrics.read_text() == lines(RECORDS[:1]) + "{garbage\n" + lines(RECORDS[1:])


@pytest.mark.parametrize("text, damage", [("", "empty"), ('{"seed": 0, "mod', "not JSON: ")])
def test_a_damaged_config_json_says_how_to_recover(tmp_path, config, text, damage):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(WorkdirError) as error:
        RunDirectory(tmp_path).check(config)
    assert str(error.value).startswith(f"{tmp_path}/config.json is damaged ({damage}")
    assert "restore the file" in str(error.value) and "or use a new --workdir" in str(error.value)


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    status = tmp_path / "status.json"
    run_status.write_json(status, {"status": "running", "step": 5})
    before = status.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run_status.write_json(status, {"status": "done", "step": 24})
    assert status.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temporary left


def take(rundir: RunDirectory, config) -> None:
    with rundir.hold(config):
        pass


def test_a_held_workdir_is_refused_naming_its_holder(tmp_path, config):
    # Two opens of the lock file contend as two processes would, even within one.
    first, second = RunDirectory(tmp_path / "w"), RunDirectory(tmp_path / "w")
    holder = f"process {os.getpid()} on {socket.gethostname()} (since "
    with first.hold(config):
        first.claim(config)
        # Refused early by preflight's check, and by the lock itself after a race past it.
        for refused in (second.check, lambda config: take(second, config)):
            with pytest.raises(WorkdirError, match="is in use by") as error:
                refused(config)
            assert f"workdir {tmp_path / 'w'} is in use by {holder}" in str(error.value)
    take(second, config)  # released when the first one's block ended


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, config):
    workdir = tmp_path / "w"
    workdir.mkdir()
    stale = {"host": socket.gethostname(), "pid": dead_pid(), "since": "2020-01-01T00:00:00"}
    (workdir / LOCK_FILE).write_text(json.dumps(stale) + "\n")
    rundir = RunDirectory(workdir)
    rundir.check(config)  # neither the lock file nor a dead holder makes it another experiment
    with rundir.hold(config):
        holder = json.loads((workdir / LOCK_FILE).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())


def test_a_refused_launch_creates_nothing(tmp_path, config, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    for workdir, shown in [("file", "file"), ("file/sub", "file/sub: " + f"{tmp_path}/file")]:
        with pytest.raises(WorkdirError) as error:
            RunDirectory(tmp_path / workdir).check(config)
        assert str(error.value) == (
            f"workdir {tmp_path}/{shown} is a file, not a directory; use another --workdir"
        )
    # As root (the tests' usual user) permissions do not bite: os.access answers as for a user.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(WorkdirError, match=rf"workdir {tmp_path}/new: {tmp_path} is not writable"):
        RunDirectory(tmp_path / "new").check(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_workdir_is_refused(tmp_path, config):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WorkdirError, match="is not writable by this user"):
            RunDirectory(tmp_path / "w").check(config)
    finally:
        tmp_path.chmod(0o700)


def test_a_running_status_whose_process_is_gone_reads_interrupted(tmp_path):
    rundir = RunDirectory(tmp_path)
    rundir.set_status(run_status.RUNNING, 7, total_steps=24)
    status = rundir.status()
    assert (status["host"], status["pid"]) == (socket.gethostname(), os.getpid())
    assert summarize_run(tmp_path).status == "running"  # this very process: alive
    for record, shown in [
        ({"pid": dead_pid()}, "interrupted"),
        ({"pid": dead_pid(), "host": "elsewhere"}, "running"),  # cannot know
        ({"status": "done"}, "done"),
    ]:
        (tmp_path / "status.json").write_text(json.dumps({**status, **record}))
        assert summarize_run(tmp_path).status == shown


def test_a_sweep_point_running_on_a_dead_pid_reads_interrupted(tmp_path):
    point = Point("p0", {})
    run_dir = points.run_dir(tmp_path, point)
    run_dir.mkdir()
    status = {"status": "running", "step": 3, **run_status.this_process()}
    (run_dir / "status.json").write_text(json.dumps(status))
    assert points.state(tmp_path, point) == "running"
    (run_dir / "status.json").write_text(json.dumps({**status, "pid": dead_pid()}))
    assert points.state(tmp_path, point) == "interrupted"


def _written_before_the_kit_had(workdir, *fields):
    """Removes `fields` (dotted) from workdir/config.json: the file a run wrote before the kit
    gained them."""
    stored = json.loads((workdir / "config.json").read_text())
    for field in fields:
        *parents, leaf = field.split(".")
        block = stored
        for parent in parents:
            block = block[parent]
        del block[leaf]
    (workdir / "config.json").write_text(json.dumps(stored))


def test_a_run_from_before_a_new_field_resumes_while_the_field_keeps_its_default(tmp_path, config):
    workdir = tmp_path / "w"
    workdir.mkdir()
    RunDirectory(workdir).claim(config)
    _written_before_the_kit_had(workdir, "steps_per_call", "dataset.augment_kwargs")
    RunDirectory(workdir).check(config)  # the defaults: the same experiment

    config.steps_per_call = 2
    with pytest.raises(WorkdirError) as error:
        RunDirectory(workdir).check(config)
    assert str(error.value) == (
        f"workdir {workdir} holds another experiment (steps_per_call: '<absent>' -> 2); "
        "use a new --workdir or the same config"
    )
