"""Test-only sweep: a one-hidden-layer MLP on digits for a handful of steps, evaluated at the end.

    python launch.py --config tests/sweep/tiny_sweep.py --workdir DIR --sweep --parallel 2

About 10 s per point on 2 CPU cores, mostly process start. The arg picks the sweep:
  (none)   norm in {batch, layer} x seeds {0, 1}, plus batch_size=16: 5 points
  failing  two good points and one whose normalization does not exist
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
    if arg == "failing":
        return [{"model.norm": "batch"}, {"model.norm": "no_such_norm"}, {"model.norm": "layer"}]
    if arg == "one":
        return [{"seed": 3}]
    return grid.product(grid.axis("model.norm", ["batch", "layer"]), grid.seeds(2)) + [
        {"model.norm": "batch", "batch_size": 16, "seed": 0}]
