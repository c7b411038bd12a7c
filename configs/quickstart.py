"""Quickstart: a small CNN with batch norm on the 8x8 handwritten digits scikit-learn ships.

    python launch.py --config configs/quickstart.py --workdir runs/quickstart

98.6% test accuracy in about 15 s on 2 CPU cores (no network needed; measured at d5ccafe, README).

The arg picks common variants, e.g. `configs/quickstart.py:model=resnet20,norm=group`:
  dataset, model, norm, activation: names as in docs/data.md, docs/models.md,
  docs/normalizations.md and docs/activations.md.
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.sweep import grid


def get_config(arg=None):
    arg = parse_arg(arg, dataset="digits", model="cnn", norm="batch", activation="relu")
    config = base_config()
    config.dataset.name = arg.dataset
    config.model.name = arg.model
    config.model.norm = arg.norm
    config.model.activation = arg.activation
    config.batch_size = 64
    config.base_batch_size = 64
    config.base_lr = 0.05
    config.train_duration = "30 epochs"
    config.schedule.warmup = "1 epochs"
    config.log_every = "1 epochs"
    config.eval_every = "5 epochs"
    return config


def get_sweep(arg=None):
    """The normalizations compared, one seed each (docs/sweeps.md):

    python launch.py --config configs/quickstart.py --workdir runs/norms --sweep --parallel 2
    """
    del arg  # the arg picks the base config; the sweep varies the normalization on top of it
    return grid.product(grid.axis("model.norm", ["batch", "layer", "group", "none"]), grid.seeds(1))
