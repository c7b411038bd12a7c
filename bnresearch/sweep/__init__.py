"""Sweeps: expansion of a config module's `get_sweep`, local and SLURM executors, status.

Runs whole `launch.py` processes and imports none of the math: the sweep's parent process never
imports JAX, so it starts in a second and holds no accelerator.
"""
