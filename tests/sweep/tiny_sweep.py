"""Test-only sweep: a one-hidden-layer MLP on digits for 6 steps, evaluated at steps 3 and 6.

    python launch.py --config tests/sweep/tiny_sweep.py --workdir DIR --sweep --parallel 2

A few seconds per point on 2 CPU cores, mostly start-up and compiling. The arg picks the sweep:
  (none)   batch_size=16 with seeds 0 and 1, batch_size=32 with seed 0, a point without
           normalization at a learning rate of 1e30 (its loss is NaN at step 2: it diverges) and
           a point whose normalization does not exist (it fails in its own process): 5 points
  one      a single point
"""

from bnresearch.config.defaults import base_config
from bnresearch.sweep import grid


def get_config(arg=None):
    del arg
    config = base_config()
    config.model.name = "mlp"
    config.model.options.hidden_sizes = (16,)
    config.batch_size = 32
    config.base_batch_size = 32
    config.eval_batch_size = 360
    config.train_duration = "6 steps"
    config.log_every = "1 steps"
    config.eval_every = "3 steps"
    config.checkpoint.every = "0 steps"
    return config


def get_sweep(arg=None):
    if arg == "one":
        return [{"seed": 3}]
    return grid.product(grid.axis("batch_size", [16]), grid.seeds(2)) + [
        {"batch_size": 32, "seed": 0},
        {"model.norm": "none", "base_lr": 1e30},
        {"model.norm": "no_such_norm"},
    ]
