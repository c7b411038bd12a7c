"""Checkpoints of everything a run needs to continue bitwise: train state, input position, clock.

One orbax CheckpointManager in `WORKDIR/checkpoints` holds three items per step:
`state` (the TrainState pytree, restored with the shardings of the current mesh),
`data_iterator` (the grain iterator's position, one file per process) and `progress` (JSON).

What orbax guarantees: a step is written under a temporary name (`STEP.orbax-checkpoint-tmp-*`)
and renamed to `STEP` only once every item of every process is written (on object stores, where
a rename is not atomic, a `commit_success.txt` marks it instead), and only finalized steps are
listed; so a save cut short (a kill, a full disk, a crash) leaves at most a temporary directory
that no restore reads, and the previous step stays the latest. What it does not cover: damage
after that commit. Nothing checks a finalized step until a restore reads it, so a file truncated
or lost later (a partial copy, a disk or filesystem error, a hand edit) shows only then, and
`Checkpointer.restore_latest` falls back past such steps; bytes changed in a way that still
decodes may restore without any error, since the arrays carry no checksum of their own.
"""

import json
import logging
import pathlib
import signal
import threading
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bnresearch.errors import UsageError

log = logging.getLogger(__name__)

# What a restore raises when a step's files are damaged or missing: tensorstore and grain raise
# ValueError (OUT_OF_RANGE or FAILED_PRECONDITION for a cut or corrupt data file, NOT_FOUND, "File
# ... does not exist", JSON that does not parse, a pytree structure error when `_METADATA` is
# lost), orbax KeyError for a missing item and FileNotFoundError for a missing step, the
# filesystem OSError. Anything else (TypeError, AttributeError: a bug; RuntimeError: XLA, out of
# device memory) is not the files' fault and propagates.
_DAMAGE = (ValueError, KeyError, OSError)


def _damage_reason(error: BaseException) -> str | None:
    """What is wrong with a step's files, in one line, or None if `error` is not damage.

    Orbax wraps a failed array read in a bare Exception whose cause is tensorstore's ValueError.
    """
    while type(error) is Exception and error.__cause__ is not None:
        error = error.__cause__
    if not isinstance(error, _DAMAGE):
        return None
    # A KeyError's str() is the repr of its message: quotes and escapes that are not the reason.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    first_line = str(message).partition("\n")[0]
    return f"{type(error).__name__}: {first_line}"


def _on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process.

    The processes read the same files, so damage fails a step on all of them alike; agreeing
    still matters, because a read error on one host alone (a network filesystem's hiccup) must not
    let the processes resume from different steps.
    """
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


class _IteratorSnapshot:
    """The iterator's state frozen at save time.

    Orbax may write non-array items after `save` returns, while training has already advanced the
    live iterator; handing grain's handler this snapshot pins the state to the saved step.
    """

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    def __init__(self, directory, *, keep: int):
        self._directory = pathlib.Path(directory)
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data_iterator", "progress"),
        )

    def save(self, step: int, state, data_iterator, progress: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iterator=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
                progress=ocp.args.JsonSave(progress),
            ),
            force=True,
        )

    def steps(self) -> list[int]:
        """The steps saved, oldest first."""
        return list(self._manager.all_steps())

    def restore_latest(self, abstract_state, data_iterator, at_most: int | None = None):
        """The newest step (not after `at_most`, if given) that restores, as (step, state,
        progress), with `data_iterator` moved to its position; None when there is no checkpoint.

        A newer step whose files are damaged is set aside: renamed, never deleted, with a
        one-line warning. When no step restores, nothing is renamed (a cause common to all of
        them, such as code that changed the state's structure, is likelier than damage to each)
        and a UsageError lists each step's reason.
        """
        start_position = data_iterator.get_state()
        failed = []  # (step, reason), newest first
        for step in reversed(self._manager.all_steps()):
            if at_most is not None and step > at_most:
                continue
            try:
                state, progress = self._restore(step, abstract_state, data_iterator)
                reason = None
            except Exception as error:
                reason = _damage_reason(error)
                if reason is None:
                    raise
            if _on_every_process(reason is None):
                self._set_aside(
                    [
                        (
                            failed_step,
                            f"the checkpoint at step {failed_step} does not restore ({why})",
                        )
                        for failed_step, why in failed
                    ]
                )
                return step, state, progress
            failed.append((step, reason or "it did not restore on another process"))
            # The iterator's item may have restored before the state failed: the next attempt
            # starts from the untouched position, as an uninterrupted run would.
            data_iterator.set_state(start_position)
        if failed:
            reasons = "; ".join(f"step {step}: {reason}" for step, reason in failed)
            raise UsageError(
                f"no checkpoint in {self._directory} restores ({reasons}); nothing was moved: "
                f"if they are damaged, move {self._directory} away to start afresh; if the code "
                f"changed since they were saved, relaunch with the code that saved them"
            )
        return None

    def _restore(self, step: int, abstract_state, data_iterator):
        """Returns (state, progress) and moves `data_iterator` to the saved position."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iterator=grain.checkpoint.CheckpointRestore(data_iterator),
                progress=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["progress"]

    def set_aside_after(self, step: int, reason: str) -> None:
        """Sets aside (renames, never deletes) the checkpoints after `step`, which the run will
        save again: a population resumes every member at the step they all share."""
        later = [
            (saved, f"the checkpoint at step {saved} is after step {step}: {reason}")
            for saved in self._manager.all_steps()
            if saved > step
        ]
        self._set_aside(later, prefix="superseded")

    def _set_aside(self, failed: list, prefix: str = "damaged") -> None:
        """Renames the (step, message) steps to names orbax does not list as steps
        (`damaged-STEP-TIME`: it lists only digits), so it neither restores nor deletes them and
        can save those step numbers again; only process 0 renames, the others wait for it."""
        if not failed:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if jax.process_index() == 0:
            for step, message in failed:
                # Orbax's default step name is the step number.
                aside = self._directory / f"{prefix}-{step}-{stamp}"
                (self._directory / str(step)).rename(aside)
                log.warning("%s: set aside as %s", message, aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("bnresearch: damaged checkpoints set aside")
        self._manager.reload()  # forgets the renamed steps

    def close(self) -> None:
        """Waits for pending asynchronous writes; call before the process exits."""
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionWatch:
    """Tells the loop when a preemption notice (SIGTERM) or Ctrl-C asks it to save and stop.

    With several processes JAX's distributed runtime already listens for SIGTERM and agrees on
    one step at which every process stops; alone, a signal handler sets a flag. A second Ctrl-C
    interrupts at once. Created before the run's start-up work (train_and_evaluate), so that a
    notice during the dataset's preparation or the compilation is kept until the loop can act
    on it; asked first at the start step, then after every step.
    """

    def __init__(self):
        self._multi_process = jax.process_count() > 1
        self._notice = threading.Event()
        self._previous_handlers = {}
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        del frame
        self._notice.set()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._previous_handlers[signal.SIGINT])

    def should_stop(self, step: int) -> bool:
        if self._multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._notice.is_set()

    def close(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
