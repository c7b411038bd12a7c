"""Checkpoints of everything a run needs to continue bitwise: train state, input position, clock.

One orbax CheckpointManager in `WORKDIR/checkpoints` holds three items per step:
`state` (the TrainState pytree, restored with the shardings of the current mesh),
`data_iterator` (the grain iterator's position, one file per process) and `progress` (JSON).
"""
import json
import signal
import threading

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


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
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data_iterator", "progress"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_iterator, progress: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iterator=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
            progress=ocp.args.JsonSave(progress),
        ), force=True)

    def restore(self, step: int, abstract_state, data_iterator):
        """Returns (state, progress) and moves `data_iterator` to the saved position."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data_iterator=grain.checkpoint.CheckpointRestore(data_iterator),
            progress=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["progress"]

    def close(self) -> None:
        """Waits for pending asynchronous writes; call before the process exits."""
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionWatch:
    """Tells the loop when a preemption notice (SIGTERM) or Ctrl-C asks it to save and stop.

    With several processes JAX's distributed runtime already listens for SIGTERM and agrees on
    one step at which every process stops; alone, a signal handler sets a flag. A second Ctrl-C
    interrupts at once.
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
