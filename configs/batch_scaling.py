"""Batch size x lr scaling rule x warmup: how far does each rule carry the baseline's lr?

Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
arXiv:1706.02677 (linear scaling, gradual warmup); Hoffer, Hubara & Soudry, "Train longer,
generalize better", 2017, arXiv:1705.08741 (sqrt scaling); You et al., "Large-Batch Training for
LSTM and Beyond", 2019, arXiv:1901.08256 (LEGW: sqrt scaling, warmup epochs x B/B0).

    python launch.py --config configs/batch_scaling.py:batch_size=512,scaling=sqrt,warmup=legw \
        --workdir runs/batch_scaling/512_sqrt_legw

The baseline: the normalization comparison's small batch-norm CNN (two stages of two 3x3 convs,
16 and 32 channels) on digits, SGD with momentum 0.9 at lr 0.1 for batch 64, 20 epochs, cosine
decay; a fixed budget of epochs, so a batch 8 times larger makes 8 times fewer updates. Arg:
batch_size (any; the grid uses BATCH_SIZES), scaling (none | linear | sqrt), warmup (none |
linear: 1 epoch | legw: 1 epoch at 64, x B/64, with scaling=sqrt), model (cnn | resnet20),
dataset, seeds (of the sweep). The whole grid, 35 points per seed (the study in
experiments/batch_scaling/):

    python launch.py --config configs/batch_scaling.py:seeds=3 --workdir runs/batch_scaling \
        --sweep --parallel 2

Measured on 2 CPU cores, two runs at a time, start-up and compilation included: the grid with 3
seeds in 12 min (each run 7-11 s of training); test accuracy at 64 98.8-98.9%, at 512 97.0%
with linear scaling and 86% without (experiments/batch_scaling/).
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError

BASE_BATCH_SIZE, BASE_LR = 64, 0.1
BATCH_SIZES = (32, 64, 128, 256, 512)
SCALING_RULES = ("none", "linear", "sqrt")
# warmup arg -> (schedule.warmup, schedule.warmup_rule)
WARMUPS = {
    "none": ("0 steps", "linear"),
    "linear": ("1 epochs", "linear"),
    "legw": ("1 epochs", "legw"),
}
# The arg of get_config and get_sweep (a sweep runs get_config(arg) with each point's overrides).
ARGS = dict(
    batch_size=BASE_BATCH_SIZE,
    scaling="linear",
    warmup="linear",
    model="cnn",
    dataset="digits",
    seeds=1,
)
GRID = [
    (batch_size, scaling, warmup)
    for batch_size in BATCH_SIZES
    for scaling in SCALING_RULES
    for warmup in WARMUPS
    if warmup != "legw" or scaling == "sqrt"
]


def point(batch_size: int, scaling: str, warmup: str) -> dict:
    """The config fields one grid point sets."""
    if warmup not in WARMUPS:
        raise UsageError(f"unknown warmup {warmup!r}; valid: {', '.join(WARMUPS)}")
    schedule_warmup, rule = WARMUPS[warmup]
    return {
        "batch_size": batch_size,
        "lr_scaling": scaling,
        "schedule.warmup": schedule_warmup,
        "schedule.warmup_rule": rule,
    }


def get_config(arg=None):
    arg = parse_arg(arg, **ARGS)
    config = base_config()
    config.dataset.name = arg.dataset
    config.model.name = arg.model
    if arg.model == "cnn":
        config.model.options.widths = (16, 32)
        config.model.options.convs_per_stage = 2
    config.base_batch_size = BASE_BATCH_SIZE
    config.base_lr = BASE_LR
    config.train_duration = "20 epochs"
    config.schedule.decay = "cosine"
    config.log_every = "1 epochs"
    config.eval_every = "2 epochs"
    config.eval_batch_size = 360  # the whole test split in one batch
    config.lock()  # a misspelt field below is an error, not a new field
    config.update_from_flattened_dict(point(arg.batch_size, arg.scaling, arg.warmup))
    return config


def get_sweep(arg=None):
    """Every point of GRID, for each seed, on top of get_config(arg)."""
    seeds = parse_arg(arg, **ARGS).seeds
    return [{**point(*grid_point), "seed": seed} for seed in range(seeds) for grid_point in GRID]
