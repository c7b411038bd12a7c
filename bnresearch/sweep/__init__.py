"""Sweeps: expansion of a config module's `get_sweep`, local and SLURM executors, status.

Runs whole `python -m bnresearch.launch` processes and imports none of the math: the sweep's
parent process never imports JAX, so it starts in a second and holds no accelerator. The sweep
imports the report (to write it at the end), never the other way round.
"""
