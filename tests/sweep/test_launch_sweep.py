"""launch.py --sweep end to end: points as processes, failures, idempotent relaunch, signals,
the status view, and the SLURM code path through submitit's local executor."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np

from bnresearch.report.runs import read_metrics
from bnresearch.sweep import devices
from bnresearch.xla_flags import with_kit_options
from tests.sweep.sweeps import REPO, TINY, launch_sweep, snapshot, status_view, sweep_env

GOOD = ["batch_size=16,seed=0", "batch_size=16,seed=1", "batch_size=32,seed=0"]
DIVERGED = "norm=none,base_lr=1e+30"
BAD = "norm=no_such_norm"


def read_status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def test_failing_and_diverging_points_leave_the_others_done(finished_sweep):
    workdir, result = finished_sweep
    assert result.returncode == 1, result.stdout + result.stderr  # the failed point
    for name in GOOD:
        assert read_status(workdir / name) == {
            **read_status(workdir / name),
            "status": "done",
            "step": 6,
        }
    # A diverged point is a result: its process ends normally, at the first non-finite loss.
    diverged = read_status(workdir / DIVERGED)
    losses = [
        (m["step"], m["train/loss"]) for m in read_metrics(workdir / DIVERGED) if "train/loss" in m
    ]
    assert diverged["status"] == "diverged" and 1 < diverged["step"] < 6, diverged
    assert diverged["step"] == next(s for s, loss in losses if not np.isfinite(loss))
    assert json.loads((workdir / "logs" / f"{DIVERGED}.exit.json").read_text()) == {"exit_code": 0}
    assert re.search(
        rf"diverged    {re.escape(DIVERGED)}: step {diverged['step']}/6 \(", result.stdout
    )
    # Only the failed point is unfinished: a diverged one counts as finished.
    assert re.search(r"\d\d:\d\d:\d\d 1 failed of 5 points; status: ", result.stdout)
    assert re.search(
        rf"FAILED      {BAD} \(exit 2\): error: unknown normalization 'no_such_norm'", result.stdout
    )
    assert not (workdir / BAD).exists()  # refused before it claimed a run directory
    assert json.loads((workdir / "logs" / f"{BAD}.exit.json").read_text())["exit_code"] == 2
    # Two at a time, each on its own core of the two.
    headers = [(workdir / "logs" / f"{n}.log").read_text().splitlines()[0] for n in GOOD]
    assert {re.search(r"on (CPU cores \d)", h).group(1) for h in headers} == {
        "CPU cores 0",
        "CPU cores 1",
    }
    # Each point's process (a fork of the sweep's zygote) ran on its slot's core alone, with
    # the kit's XLA options and allocator setting, as `python -m bnresearch.launch` would.
    for name in GOOD:
        environment = json.loads((workdir / name / "environment.json").read_text())[-1]
        slot = re.search(r"on CPU cores (\d)", (workdir / "logs" / f"{name}.log").read_text())
        assert environment["cpus"] == [int(slot.group(1))], environment
        assert environment["xla_flags"] == with_kit_options(sweep_env()["XLA_FLAGS"])
        assert "glibc.malloc.hugetlb=1" in environment["glibc_tunables"]
    assert "report: " in result.stdout and "curves.png" in result.stdout


def test_a_point_is_the_run_launch_py_makes_alone(finished_sweep, prepared_data_dir, tmp_path):
    # The points share their compiled programs through DIR/compilation_cache. The run launched
    # alone, outside the sweep, on as many cores as a point had, and loading its train step
    # from that cache (the executable a point compiled), logs bitwise the metrics of the point
    # that trained alone (batch_size=32; the two seeds of batch_size=16 trained together).
    workdir, _ = finished_sweep
    cores = devices.device_slots(2)[1].cpus
    alone = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch.py"),
            f"--config={TINY}",
            f"--workdir={tmp_path / 'alone'}",
            f"--config.dataset.data_dir={prepared_data_dir}",
            "--config.batch_size=32",
            "--config.seed=0",
        ],
        env={
            **sweep_env(),
            "JAX_COMPILATION_CACHE_DIR": str(workdir / "compilation_cache"),
            "JAX_LOG_COMPILES": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "Persistent compilation cache hit for 'jit_train_step'" in alone.stderr
    assert read_metrics(tmp_path / "alone") == read_metrics(workdir / "batch_size=32,seed=0")


def test_the_seeds_of_a_point_train_as_one_population_of_normal_runs(
    finished_sweep, prepared_data_dir, tmp_path
):
    # batch_size=16 with seeds 0 and 1 differ in their seed only: one process trained both
    # (--vectorize=seeds, the default), each in its own run directory, each the run launch.py
    # makes alone within float rounding (tests/train/test_population.py states the tolerance).
    workdir, result = finished_sweep
    assert "2 points train in 1 populations (--vectorize=seeds), one process each" in result.stdout
    first = (workdir / "logs" / "batch_size=16,seed=0.log").read_text()
    assert "--member=batch_size=16,seed=0 --member=batch_size=16,seed=1" in first
    second = (workdir / "logs" / "batch_size=16,seed=1.log").read_text()
    assert "in a population; its log: " in second
    alone = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch.py"),
            f"--config={TINY}",
            f"--workdir={tmp_path / 'alone'}",
            f"--config.dataset.data_dir={prepared_data_dir}",
            "--config.batch_size=16",
            "--config.seed=1",
        ],
        env=sweep_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stdout + alone.stderr
    member = read_metrics(workdir / "batch_size=16,seed=1")
    expected = read_metrics(tmp_path / "alone")
    assert [m.keys() for m in member] == [m.keys() for m in expected]
    for record, reference in zip(member, expected):
        for key, value in record.items():
            np.testing.assert_allclose(value, reference[key], rtol=1e-4, err_msg=key)


def test_relaunch_trains_nothing_and_retries_failures_only_when_asked(
    finished_sweep, prepared_data_dir
):
    workdir, _ = finished_sweep
    before = snapshot(workdir)
    again = launch_sweep(workdir, prepared_data_dir, "--parallel=2")
    assert again.returncode == 1
    assert "5 points (3 done, 1 diverged, 1 failed); 0 to run; 1 failed skipped" in again.stdout
    # Every launch of a point appends a header to its log: unchanged files = nothing launched.
    assert snapshot(workdir) == before

    retried = launch_sweep(workdir, prepared_data_dir, "--retry_failed")
    assert retried.returncode == 1
    logs = {
        path.name: path.read_text().count("\n==== ") + path.read_text().startswith("====")
        for path in (workdir / "logs").glob("*.log")
    }
    assert logs == {**{f"{name}.log": 1 for name in GOOD + [DIVERGED]}, f"{BAD}.log": 2}
    for name in GOOD + [DIVERGED]:
        assert snapshot(workdir / name) == {
            p: b for p, b in before.items() if p.is_relative_to(workdir / name)
        }


def test_another_sweep_in_the_same_directory_is_refused(finished_sweep, prepared_data_dir):
    workdir, _ = finished_sweep
    before = snapshot(workdir)
    result = launch_sweep(workdir, prepared_data_dir, arg="one")
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        f"error: {workdir} holds another sweep (points removed:"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(workdir) == before


def test_status_view_shows_each_point(finished_sweep):
    workdir, _ = finished_sweep
    result = status_view(workdir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{workdir}: 5 points: 3 done, 1 diverged, 1 failed"
    for name in GOOD:
        best = max(m["eval/accuracy"] for m in read_metrics(workdir / name) if "eval/accuracy" in m)
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[1:4] == ["done", "6/6", f"{best:.4f}"], row
        assert row.endswith(" s")
    diverged = next(line for line in lines if line.startswith(DIVERGED + " "))
    step = read_status(workdir / DIVERGED)["step"]
    assert diverged.split()[1:3] == ["diverged", f"{step}/6"], diverged  # no eval: no accuracy
    assert next(line for line in lines if line.startswith(BAD + " ")).split()[1] == "failed"
    assert any("error: unknown normalization 'no_such_norm'" in line for line in lines)


def long_flags(steps: int) -> list[str]:
    return [
        f"--config.train_duration={steps} steps",
        "--config.eval_every=0 steps",
        "--config.log_every=10 steps",
    ]


def start_long_sweep(workdir, data_dir, steps: int):
    """The one-point sweep started with a long run, returned once the point has logged."""
    process = launch_sweep(workdir, data_dir, *long_flags(steps), arg="one", wait=False)
    metrics = workdir / "seed=3" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text()) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    return process


def test_sigterm_stops_the_points_with_a_checkpoint_and_a_relaunch_resumes(
    tmp_path, prepared_data_dir
):
    process = start_long_sweep(tmp_path, prepared_data_dir, 400)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    status = read_status(tmp_path / "seed=3")
    assert status["status"] == "preempted" and 0 < status["step"] < 400, output
    assert (tmp_path / "seed=3" / "checkpoints" / str(status["step"])).is_dir()
    assert "stopped early; 1 preempted of 1 points" in output

    result = launch_sweep(tmp_path, prepared_data_dir, *long_flags(400), arg="one")
    assert result.returncode == 0, result.stdout
    log = (tmp_path / "logs" / "seed=3.log").read_text()
    assert f"resumed from the checkpoint at step {status['step']}" in log
    assert read_status(tmp_path / "seed=3")["status"] == "done"
    steps = [m["step"] for m in read_metrics(tmp_path / "seed=3") if "train/loss" in m]
    # Logged every 10 steps, as if never stopped: the window open at the preemption was saved
    # with the checkpoint, not logged early.
    assert steps == list(range(10, 401, 10))


def test_a_killed_sweep_stops_its_points_with_a_checkpoint(tmp_path, prepared_data_dir):
    # SIGKILL leaves the sweep no time to forward anything: its zygote gets a SIGTERM from the
    # kernel when the sweep dies, and each point one when the zygote dies (PR_SET_PDEATHSIG).
    process = start_long_sweep(tmp_path, prepared_data_dir, 100000)
    process.kill()
    process.communicate(timeout=60)
    assert_stopped_with_a_checkpoint(tmp_path / "seed=3", 100000)


def assert_stopped_with_a_checkpoint(run_dir, steps: int) -> None:
    """The point's process, left without its sweep, ends preempted with a checkpoint. One that
    outlives the test's wait is killed (its pid from status.json) before the test fails."""
    deadline = time.time() + 120
    while read_status(run_dir)["status"] == "running" and time.time() < deadline:
        time.sleep(0.1)
    status = read_status(run_dir)
    if status["status"] == "running":
        os.kill(status["pid"], signal.SIGKILL)
    assert status["status"] == "preempted" and 0 < status["step"] < steps, status
    assert (run_dir / "checkpoints" / str(status["step"])).is_dir()


def child_running(parent_pid: int, module: str) -> int:
    """The pid of `parent_pid`'s child process that runs `python -m module`."""
    for proc in pathlib.Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
        if parent == parent_pid and module.encode() in command:
            return int(proc.name)
    raise AssertionError(f"process {parent_pid} has no child running {module}")


def test_a_killed_zygote_ends_the_sweep_with_one_line_and_its_points_with_a_checkpoint(
    tmp_path, prepared_data_dir
):
    process = start_long_sweep(tmp_path, prepared_data_dir, 100000)
    os.kill(child_running(process.pid, "bnresearch.sweep.zygote"), signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert output.strip().splitlines()[-1] == (
        "error: the process that starts the sweep's points (bnresearch/sweep/zygote.py) ended "
        "with exit code -9 (a negative code is the signal that ended it); its points stopped "
        "with it, each saving a checkpoint once it had begun training: launch the same command "
        "again to resume them"
    ), output
    assert "Traceback" not in output, output
    assert_stopped_with_a_checkpoint(tmp_path / "seed=3", 100000)


def test_the_submitit_local_executor_runs_the_slurm_code_path(tmp_path, prepared_data_dir):
    result = launch_sweep(
        tmp_path, prepared_data_dir, "--executor=submitit_local", "--slurm_time=10", arg="one"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted 1 submitit_local job(s)" in result.stdout
    assert read_status(tmp_path / "seed=3")["status"] == "done"
    log = (tmp_path / "logs" / "seed=3.log").read_text()
    assert log.startswith("==== submitit job ") and "finished with status done" in log
    assert json.loads((tmp_path / "logs" / "seed=3.exit.json").read_text()) == {"exit_code": 0}
    # submitit pickled the job and its result in its own folder.
    assert list((tmp_path / "logs" / "submitit").glob("*_result.pkl"))
    eval_accuracy = [
        m["eval/accuracy"] for m in read_metrics(tmp_path / "seed=3") if "eval/accuracy" in m
    ]
    assert len(eval_accuracy) == 2 and np.all(np.isfinite(eval_accuracy))


def test_tensorboard_on_the_sweep_directory_shows_every_point(finished_sweep):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    workdir, _ = finished_sweep
    runs = EventMultiplexer().AddRunsFromDirectory(str(workdir))
    runs.Reload()
    assert sorted(runs.Runs()) == sorted(GOOD + [DIVERGED])  # the failed one never trained
    for name in GOOD:
        last = runs.Tensors(name, "eval/accuracy")[-1]
        final = [m for m in read_metrics(workdir / name) if "eval/accuracy" in m][-1]
        assert last.step == final["step"] == 6
        assert last.tensor_proto.float_val[0] == np.float32(final["eval/accuracy"])
