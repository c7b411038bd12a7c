"""Sweep points as SLURM jobs through submitit, one job per point (a job array).

    python launch.py --config FILE --workdir DIR --sweep --executor slurm \
        --slurm_partition gpu --slurm_time 240 --gpus_per_point 1 --cpus_per_point 8

Each job runs the point's command (`python -m bnresearch.launch ...`), exactly as the local
executor does, with its output in DIR/logs/<name>.log; the jobs import bnresearch as installed in
the sweep's environment. When SLURM warns of a preemption or of the time limit (submitit asks
for SIGUSR2 90 s ahead), the job forwards SIGTERM to the point, which saves a checkpoint and
stops, and submitit requeues the job, which resumes from that checkpoint. `--executor
submitit_local` runs the same jobs through submitit's local executor: the SLURM code path
without a cluster.
"""

import os
import shutil
import signal
import subprocess
import time

import submitit

from bnresearch.errors import UsageError
from bnresearch.report.sweep_file import Point, Sweep
from bnresearch.sweep import points as point_files
from bnresearch.sweep.spec import point_command

EXECUTORS = {"slurm": "slurm", "submitit_local": "local"}
# Settings from the command line (--slurm_partition, ...) or a config's get_slurm(arg).
SETTINGS = {
    "partition": str,  # SLURM partition
    "time": int,  # time limit of one job, minutes
    "gpus_per_point": int,
    "cpus_per_point": int,
    "mem_gb": float,  # memory of one job
    "options": str,  # more sbatch options: "account=abc,qos=high"
}
DEFAULT_TIME_MIN = 240
_SAVE_GRACE_S = 80  # SLURM's notice comes 90 s before the end; the point saves in the meantime


def check_settings(executor: str, settings: dict) -> None:
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; valid: local, {', '.join(EXECUTORS)}")
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UsageError(
            "--executor slurm submits with sbatch, which this machine lacks: "
            "launch from a SLURM login node (or try --executor submitit_local)"
        )
    for key, value in settings.items():
        if key not in SETTINGS:
            raise UsageError(f"unknown SLURM setting {key!r}; valid: {', '.join(SETTINGS)}")
        if not isinstance(value, SETTINGS[key]) and not (
            SETTINGS[key] is float and isinstance(value, int)
        ):
            expected = SETTINGS[key].__name__
            article = "an" if expected[0] in "aeiou" else "a"
            raise UsageError(f"SLURM setting {key}={value!r} must be {article} {expected}")
    _extra_options(settings.get("options", ""))


def _extra_options(text: str) -> dict:
    options = {}
    for item in filter(None, text.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise UsageError(f"SLURM option {item!r}: write key=value, e.g. account=abc")
        options[key.strip()] = value.strip()
    return options


def _wait_for_exit(pid: int, timeout_s: float) -> None:
    """Reaps `pid` within `timeout_s` (else gives up: the point resumes from its previous
    checkpoint). Not Popen.wait: this runs in a signal handler that interrupted __call__'s
    Popen.wait, which holds the lock Popen.wait would need."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.2)


class PointJob(submitit.helpers.Checkpointable):
    """What one SLURM job runs: the point's command, its output appended to the point's log."""

    def __init__(self, command: list[str], sweep_dir: str, point: Point):
        self.command, self.sweep_dir, self.point = command, sweep_dir, point
        self._process = None

    def __call__(self) -> int:
        log = point_files.log_path(self.sweep_dir, self.point)
        with log.open("a") as log_file:
            log_file.write(
                f"==== submitit job {os.environ.get('SLURM_JOB_ID', os.getpid())}: "
                f"{' '.join(self.command)}\n"
            )
            log_file.flush()
            self._process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
            exit_code = self._process.wait()
        point_files.record_exit(self.sweep_dir, self.point, exit_code)
        return exit_code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on SLURM's notice: the point saves and stops; the job requeues."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            _wait_for_exit(self._process.pid, _SAVE_GRACE_S)
        return submitit.helpers.DelayedSubmission(
            PointJob(self.command, self.sweep_dir, self.point)
        )

    def __getstate__(self):
        return {**self.__dict__, "_process": None}  # a process cannot travel in a pickle


def run_submitit(
    sweep: Sweep,
    sweep_dir,
    points: list[Point],
    *,
    executor: str,
    settings: dict,
    parallel: int,
    on_end,
    say,
) -> bool:
    """Submits one job per point and waits; returns False if Ctrl-C stopped the waiting."""
    folder = point_files.log_path(sweep_dir, points[0]).parent / "submitit"
    submitter = submitit.AutoExecutor(folder=folder, cluster=EXECUTORS[executor])
    submitter.update_parameters(
        name=f"sweep-{sweep_dir.name}",
        timeout_min=settings.get("time", DEFAULT_TIME_MIN),
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=settings.get("gpus_per_point", 0),
        cpus_per_task=settings.get("cpus_per_point", 1),
        mem_gb=settings.get("mem_gb"),
        slurm_partition=settings.get("partition"),
        slurm_additional_parameters=_extra_options(settings.get("options", "")) or None,
        slurm_array_parallelism=parallel,
    )
    with submitter.batch():
        jobs = [
            submitter.submit(
                PointJob(point_command(sweep, point, sweep_dir), str(sweep_dir), point)
            )
            for point in points
        ]
    by_job = {job.job_id: (point, time.perf_counter()) for job, point in zip(jobs, points)}
    say(
        f"submitted {len(jobs)} {executor} job(s) ({', '.join(job.job_id for job in jobs)}); "
        f"submitit files in {folder}"
    )
    try:
        for job in submitit.helpers.as_completed(jobs, poll_frequency=1):
            point, started = by_job[job.job_id]
            try:
                exit_code = job.result()
            except Exception as error:  # the job died outside the point (node failure, ...)
                say(
                    f"job {job.job_id} of {point.name} ended without a result: "
                    f"{str(error).strip().splitlines()[-1] if str(error).strip() else error!r}"
                )
                exit_code = -1
            on_end(point, exit_code, time.perf_counter() - started)
    except KeyboardInterrupt:
        say(
            "stopped waiting: the jobs go on; `--status` follows them, a relaunch once they "
            "have ended resumes what they left"
        )
        return False
    return True
