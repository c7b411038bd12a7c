"""Runs one experiment from a config, or a sweep of them.

    python launch.py --config configs/quickstart.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
    python launch.py --config FILE[:ARG] --workdir DIR --sweep [--parallel N] [--retry_failed]
        [--vectorize seeds|hyperparameters|off]
    python launch.py --workdir DIR --status

Running the same command on the same workdir resumes from the latest checkpoint. With
--coordinator_address, --num_processes and --process_id the run spans several processes
(hosts of a GPU cluster or TPU pod) through jax.distributed. With --sweep, the config module's
`get_sweep(arg)` lists the points; each runs as its own process of this module in DIR/<name>/
(bnresearch/sweep; forked from the sweep's zygote, which has imported this module once for all
points: sweep/zygote.py), except that points differing only in their seed (by default;
--vectorize) train together as one population, one process for the group
(bnresearch/train/population.py): that process is this module with --member=NAME for each of
the group's points of the sweep in DIR.
The sweep's own process never imports JAX.

`python launch.py` in the repository and `python -m bnresearch.launch` wherever the package is
installed run the same code, which the sweep's points run too. A run keeps the
programs it compiles in JAX's persistent compilation cache (bnresearch/persistent_cache.py), so
that the next launch of the same config loads them, and logs its start-up time. It first
restarts itself once with glibc's allocator set to use huge pages for XLA's large buffers
(bnresearch/host_allocator.py).

What the user can fix ends in one line `error: ...`: bad input (exit 2) and the environment's
failures (exit 1): a full disk, a path that cannot be written or is not a directory. --verbose
adds the traceback; anything else is a bug and keeps its traceback.
"""

import errno
import logging as std_logging
import os
import pathlib
import sys
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from bnresearch import host_allocator, persistent_cache
from bnresearch.errors import EnvironmentFailure, UsageError
from bnresearch.train.members import VECTORIZE

_IMPORTED = time.perf_counter()  # where the process's start time cannot be read (`_launched`)

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, with an optional :ARG (see the file's docstring).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of this run's (or sweep's) files.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in that run.")

_SWEEP = flags.DEFINE_bool("sweep", False, "Run the config's get_sweep(arg): one run per point.")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 1, "Sweep points run at once; local: the GPUs or CPU cores are split among them."
)
_RETRY_FAILED = flags.DEFINE_bool("retry_failed", False, "Launch failed sweep points again.")
_VECTORIZE = flags.DEFINE_enum(
    "vectorize",
    "seeds",
    list(VECTORIZE),
    "Sweep points trained together as one vectorised population, one process per group: those "
    "differing only in the seed; in seed, base_lr, schedule and label_smoothing "
    "(hyperparameters); or none (off). Local executor only.",
)
_MEMBERS = flags.DEFINE_multi_string(
    "member",
    None,
    "A point of the sweep in --workdir; several --member train together as one population "
    "(the sweep passes them).",
)
_STATUS = flags.DEFINE_bool("status", False, "Print the status of the sweep (or run) in --workdir.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print the traceback behind a one-line error (a full disk, a bad path...)."
)
_TARGET = flags.DEFINE_float(
    "target_accuracy", None, "Eval accuracy of the report's 'steps to' column (default 0.9)."
)
_EXECUTOR = flags.DEFINE_enum(
    "executor",
    "local",
    ["local", "slurm", "submitit_local"],
    "Where sweep points run; submitit_local tests the SLURM path.",
)
_SLURM = {
    "partition": flags.DEFINE_string("slurm_partition", None, "SLURM partition."),
    "time": flags.DEFINE_integer("slurm_time", None, "Time limit of one point's job, minutes."),
    "gpus_per_point": flags.DEFINE_integer("gpus_per_point", None, "GPUs of one point's job."),
    "cpus_per_point": flags.DEFINE_integer("cpus_per_point", None, "CPUs of one point's job."),
    "mem_gb": flags.DEFINE_float("mem_gb", None, "Memory of one point's job, GB."),
    "options": flags.DEFINE_string(
        "slurm_options", None, "More sbatch options, e.g. account=abc,qos=high."
    ),
}


def _start_distributed() -> None:
    import jax

    # CPU devices of different processes talk through gloo (by default they cannot talk at
    # all); the setting only concerns CPU devices, so it is harmless on GPU and TPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        _COORDINATOR.value, num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value
    )


def _launched() -> float:
    """When this process started (time.time()), so that the start-up figure counts the
    interpreter's start and the imports too. Linux keeps it in /proc/self/stat (field 22, in
    clock ticks after boot); elsewhere the moment this module was imported stands in."""
    try:
        fields = pathlib.Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot
    except (OSError, ValueError, IndexError, AttributeError):
        age = time.perf_counter() - _IMPORTED
    return time.time() - age


def _show_progress_only() -> None:
    """The console gets bnresearch's progress lines; libraries speak only to warn."""
    logging.set_verbosity(logging.WARNING)  # absl's level: orbax and grain log through it
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    progress = std_logging.getLogger("bnresearch")
    progress.addHandler(handler)
    progress.setLevel(std_logging.INFO)
    progress.propagate = False


def _run_sweep() -> int:
    """Expands and runs the sweep; imports no JAX (the points are separate processes)."""
    from bnresearch.sweep import runner, spec

    config_flag = flags.FLAGS["config"]
    config_file, _, arg = config_flag.config_filename.partition(":")
    arg = arg if ":" in config_flag.config_filename else None
    sweep = spec.expand(
        config_file, arg, _CONFIG.value, dict(config_flags.get_override_values(config_flag))
    )
    slurm = spec.module_settings(config_file, arg, "get_slurm")
    slurm.update({key: flag.value for key, flag in _SLURM.items() if flag.present})
    return runner.launch_sweep(
        sweep,
        _WORKDIR.value,
        parallel=_PARALLEL.value,
        retry_failed=_RETRY_FAILED.value,
        executor=_EXECUTOR.value,
        slurm=slurm,
        target_accuracy=_TARGET.value,
        vectorize=_VECTORIZE.value,
    )


def _population_configs() -> tuple[list, list]:
    """The configs and workdirs of the --member points of the sweep in --workdir: the
    launch's config (the sweep's config, arg and common overrides) with each point's own."""
    import copy

    from bnresearch.config.fields import set_fields
    from bnresearch.report.sweep_file import read_sweep

    sweep = read_sweep(_WORKDIR.value)
    if sweep is None:
        raise UsageError(f"--member: {_WORKDIR.value} holds no sweep")
    points = {point.name: point for point in sweep.points}
    unknown = [name for name in _MEMBERS.value if name not in points]
    if unknown:
        raise UsageError(
            f"--member: no point {unknown[0]!r} in the sweep in {_WORKDIR.value}; its "
            f"points: {', '.join(points)}"
        )
    configs = []
    for name in _MEMBERS.value:
        config = copy.deepcopy(_CONFIG.value)
        # As --config.FIELD=VALUE would give them: JSON's lists are a config's tuples.
        overrides = points[name].overrides
        set_fields(
            config, {f: tuple(v) if isinstance(v, list) else v for f, v in overrides.items()}
        )
        configs.append(config)
    return configs, [pathlib.Path(_WORKDIR.value) / name for name in _MEMBERS.value]


def _check_flags() -> None:
    if not _WORKDIR.value:
        raise UsageError("--workdir is required")
    if _STATUS.value:
        return
    if _CONFIG.value is None:
        raise UsageError("--config is required (except with --status)")
    # absl only says that the config is "not available" when it is first read, in a traceback.
    config_file = flags.FLAGS["config"].config_filename.partition(":")[0]
    if not pathlib.Path(config_file).is_file():
        raise UsageError(
            f"config file {config_file} not found; give the path of a config file, "
            "e.g. --config=configs/quickstart.py"
        )
    sweep_only = {
        "parallel": _PARALLEL,
        "retry_failed": _RETRY_FAILED,
        "executor": _EXECUTOR,
        "target_accuracy": _TARGET,
        "vectorize": _VECTORIZE,
        **{flag.name: flag for flag in _SLURM.values()},
    }
    if not _SWEEP.value:
        given = [f"--{name}" for name, flag in sweep_only.items() if flag.present]
        if given:
            raise UsageError(f"{', '.join(given)}: for sweeps only; add --sweep")
    elif _COORDINATOR.value:
        raise UsageError(
            "--coordinator_address is for one run over several processes, not for --sweep"
        )
    if _MEMBERS.present and (_SWEEP.value or _COORDINATOR.value):
        raise UsageError("--member trains points of a sweep in one process: drop --sweep")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _show_progress_only()
    try:
        _check_flags()
        if _STATUS.value:
            from bnresearch.sweep.status import status_text

            print(status_text(_WORKDIR.value))
            return
        if _SWEEP.value:
            sys.exit(_run_sweep())
        if _COORDINATOR.value:
            _start_distributed()
        persistent_cache.enable()
        if _MEMBERS.value:
            from bnresearch.train.population import train_population

            configs, workdirs = _population_configs()
            status = ", ".join(train_population(configs, workdirs, launched=_launched()))
        else:
            from bnresearch.train.loop import train_and_evaluate  # after jax.distributed

            status = train_and_evaluate(_CONFIG.value, _WORKDIR.value, launched=_launched())
    except UsageError as error:
        _fail(error, str(error), exit_code=2)
    except Exception as error:
        problem = _environment_problem(error)
        if problem is None:
            raise  # a bug: its traceback says where
        _fail(error, problem, exit_code=1)
    std_logging.getLogger("bnresearch").info(
        "finished with status %s; files in %s", status, _WORKDIR.value
    )


def _fail(error: BaseException, message: str, *, exit_code: int) -> None:
    if _VERBOSE.value:
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def _causes(error: BaseException):
    """`error` and the errors behind it: orbax and JAX wrap the OSError that says what happened."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# What a full disk says where the OSError itself is not at hand: tensorstore (orbax's array
# writes) reports it as RESOURCE_EXHAUSTED with the system's message in the text.
_FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")


def _environment_problem(error: BaseException) -> str | None:
    """One line saying what in the environment failed and what to do, or None if not that."""
    for cause in _causes(error):
        if isinstance(cause, EnvironmentFailure):
            return str(cause)
        code = cause.errno if isinstance(cause, OSError) else None
        path = getattr(cause, "filename", None)
        at = f" ({path})" if path else ""
        if code in (errno.ENOSPC, errno.EDQUOT) or any(
            text in str(cause) for text in _FULL_DISK_TEXTS
        ):
            return (
                f"no space left on the device{at}: free some space (or use a --workdir on "
                "another disk), then launch the same command again; the run resumes from its "
                "last checkpoint"
            )
        if isinstance(cause, PermissionError) or code == errno.EROFS:
            return (
                f"permission denied{at}: give this user access to it, or use another "
                "--workdir (or dataset.data_dir)"
            )
        if isinstance(cause, NotADirectoryError):
            return f"not a directory{at}: a file stands where a directory is needed"
    return None


def _flag_text(argv, name: str) -> str | None:
    """The value of --NAME=VALUE or --NAME VALUE in argv, if given."""
    for index, item in enumerate(argv):
        if item.startswith(f"--{name}="):
            return item.split("=", 1)[1]
        if item == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _unknown_override(argv) -> str | None:
    """Names the misspelt part of a --config.FIELD override and the valid fields there."""
    from bnresearch.config.fields import field_type
    from bnresearch.sweep.spec import load_config_module

    config_text = _flag_text(argv, "config")
    if config_text is None:
        return None
    path, has_arg, arg = config_text.partition(":")
    try:
        module = load_config_module(path)
        config = module.get_config(arg) if has_arg else module.get_config()
    except Exception:  # the config itself is broken: absl's own message says more
        return None
    for item in argv:
        if item.startswith("--config."):
            try:
                field_type(config, item[len("--config.") :].split("=", 1)[0])
            except UsageError as error:
                return str(error)
    return None


def _parse_flags(argv):
    """absl's parsing, but a bad override or config arg ends in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        unknown = _unknown_override(argv)
        if unknown:
            print(f"error: {unknown}", file=sys.stderr)
            sys.exit(2)
        text = str(error)
        if "UsageError: " in text:  # raised by get_config(arg), wrapped in the file's traceback
            text = text.rsplit("UsageError: ", 1)[1]
        message = " ".join(text.replace("\\n", " ").replace("\\'", "").split()).strip("'\"")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run(argv: list[str] | None = None) -> None:
    """Runs the command line `argv`, sys.argv by default, which first restarts the process
    once with the allocator's setting (before JAX starts: host_allocator.py). A sweep's zygote
    passes each point's argv, in a process that started with the setting (sweep/zygote.py)."""
    if argv is None:
        host_allocator.restart_with_tunables()
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
