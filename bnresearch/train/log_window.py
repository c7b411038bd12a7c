"""A run's logging window: the metrics of the train steps since the last logging step, left on
the device until then (no host sync per step). At a logging step the window is fetched and
summarized into one record and one console line; a preemption between two logging steps saves
the open window with the checkpoint, so the resumed run logs exactly what an uninterrupted one
would. The training loop and a population's loop (population.py) both keep their windows so.
"""

import logging
import time

import jax
import numpy as np

log = logging.getLogger(__name__)


class Progress:
    """One console line per logging step: loss, accuracy, lr, throughput and time left."""

    def __init__(self, total_steps: int, start_step: int):
        self._total = total_steps
        self._last_step, self._last_time = start_step, time.perf_counter()

    def report(self, step: int, scalars: dict, images_per_step: int) -> None:
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self._total - step) / max(steps_per_s, 1e-9)
        log.info(
            "step %d/%d | loss %.4f | accuracy %.4f | lr %.5g | %.0f images/s | ETA %s",
            step,
            self._total,
            scalars["train/loss"],
            scalars["train/accuracy"],
            scalars["train/lr"],
            steps_per_s * images_per_step,
            _clock(eta),
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _per_call(window: list) -> list[dict]:
    """The metrics of each train step of a logging window, fetched: a call of several steps
    returns theirs stacked, a row per step."""
    calls = []
    for metrics in jax.device_get(window):
        columns = {key: np.atleast_1d(value) for key, value in metrics.items()}
        rows = len(next(iter(columns.values())))
        calls += [{key: column[row] for key, column in columns.items()} for row in range(rows)]
    return calls


def summarize(window: list, first_step: int, calls_per_step: int):
    """Means over a logging window of train steps (the lr: its last value); also the first
    step at which a loss was not finite, if any."""
    fetched = _per_call(window)
    losses = np.array([[m[key] for key in ("loss", "aux_loss") if key in m] for m in fetched])
    bad = np.flatnonzero(~np.all(np.isfinite(losses), axis=1))
    diverged_at = first_step + int(bad[0]) // calls_per_step if bad.size else None
    scalars = {
        f"train/{key}": float(np.mean([m[key] for m in fetched]))
        for key in fetched[0]
        if key != "lr"
    }
    scalars["train/lr"] = float(fetched[-1]["lr"])
    return scalars, diverged_at


def pending_to_json(window: list, window_start: int, measurements: list) -> dict:
    """The logging window a preemption interrupts, for the checkpoint: values with their dtypes,
    so the resumed run averages exactly the numbers the uninterrupted one would (and writes the
    same histograms)."""
    as_json = lambda metrics: {
        key: [np.asarray(value).tolist(), np.asarray(value).dtype.name]
        for key, value in metrics.items()
    }
    return {
        "window_start": window_start,
        "window": [as_json(m) for m in _per_call(window)],
        "measurements": [[at_step, as_json(m)] for at_step, m in jax.device_get(measurements)],
    }


def pending_from_json(pending: dict) -> tuple[list, int, list]:
    """`pending_to_json`'s record read back: the window's per-step metrics, with their dtypes,
    the step it started at and the measurements taken in it."""
    from_json = lambda metrics: {
        key: np.asarray(value, dtype) for key, (value, dtype) in metrics.items()
    }
    return (
        [from_json(m) for m in pending["window"]],
        pending["window_start"],
        [(at_step, from_json(m)) for at_step, m in pending["measurements"]],
    )
