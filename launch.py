"""Runs one experiment from a config.

    python launch.py --config configs/quickstart.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]

Running the same command on the same workdir resumes from the latest checkpoint. With
--coordinator_address, --num_processes and --process_id the run spans several processes
(hosts of a GPU cluster or TPU pod) through jax.distributed.
"""
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnresearch.errors import UsageError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with an optional :ARG (see the file's docstring).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of this run's files and checkpoints.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in that run.")
flags.mark_flags_as_required(["config", "workdir"])


def _start_distributed() -> None:
    import jax
    # CPU devices of different processes talk through gloo (by default they cannot talk at
    # all); the setting only concerns CPU devices, so it is harmless on GPU and TPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def _show_progress_only() -> None:
    """The console gets bnresearch's progress lines; libraries speak only to warn."""
    logging.set_verbosity(logging.WARNING)  # absl's level: orbax and grain log through it
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    progress = std_logging.getLogger("bnresearch")
    progress.addHandler(handler)
    progress.setLevel(std_logging.INFO)
    progress.propagate = False


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _show_progress_only()
    if _COORDINATOR.value:
        _start_distributed()
    from bnresearch.train.loop import train_and_evaluate  # after jax.distributed, as it asks
    try:
        status = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    std_logging.getLogger("bnresearch").info("finished with status %s; files in %s", status,
                                             _WORKDIR.value)


def _parse_flags(argv):
    """absl's parsing, but a bad override or config arg ends in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        text = str(error)
        if "UsageError: " in text:  # raised by get_config(arg), wrapped in the file's traceback
            text = text.rsplit("UsageError: ", 1)[1]
        message = " ".join(text.replace("\\n", " ").replace("\\'", "").split()).strip("'\"")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
