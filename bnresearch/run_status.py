"""The words of a run's status, as status.json spells them and as the status views show them.

A run writes RUNNING when it starts, then DONE, DIVERGED, PREEMPTED or FAILED (train/loop.py).
Readers of run directories add PENDING for a run that has written nothing yet and, for a sweep
point, INTERRUPTED: ended by a signal before it could save (sweep/points.py). A leaf module of
the standard library only: the sweep parent and the report import it, and neither imports JAX.
"""
DONE = "done"
DIVERGED = "diverged"
RUNNING = "running"
PREEMPTED = "preempted"
FAILED = "failed"
INTERRUPTED = "interrupted"
PENDING = "pending"

# Runs with a result: never launched again; reports average DONE ones and count DIVERGED ones.
FINISHED = (DONE, DIVERGED)
