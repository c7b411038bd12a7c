"""The normalization comparison: every variant of the normalization family, each with its paper's
options, on the same small CNN trained on the 8x8 digits for 10 epochs. The README's quickstart.

All 13 variants x 3 seeds (39 runs, two at a time), then the comparison table and figures:

    python launch.py --config configs/norm_comparison.py --workdir runs/norm_comparison \
        --sweep --parallel 2

About 1 minute on 2 CPU cores (55.9-61.2 s in eight runs, median 56.3 s, aacda3a to c321fd0;
58.7-64.7 s hours later, on a slower machine state: README, "Many runs in one program"):
each variant's 3 seeds train as one population (--vectorize=seeds, the default), 13 processes
forked from one that has imported JAX; each about 2.5 s of training and evaluation, 4 s of
compiling, the rest data loading and set-up. One variant (the arg picks it; the default is batch):

    python launch.py --config configs/norm_comparison.py:norm=group --workdir runs/norms/group

The variant table ``VARIANTS`` is data: each entry is the config overrides that make the variant
(``model.norm`` and the options its paper prescribes, beyond the variant's own defaults). The
committed study with its results is experiments/norm_comparison/.
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.sweep import grid

# 1437 training digits in batches of 64: 22 steps per epoch, 220 steps in 10 epochs.
TRAIN_STEPS = 220
NUM_SEEDS = 3

VARIANTS = {
    "batch": {},
    # Hoffer et al. use virtual batches of 128 inside batches of thousands; the same ratio of
    # batch to virtual batch here is 64 / 16.
    "ghost_batch": {"model.norm_kwargs.virtual_batch_size": 16},
    # Ioffe's milestones (relax after 5k steps, d_max = 5 at 25k, r_max = 3 at 40k) rescaled so
    # that the last falls on the last step of this much shorter run.
    "batch_renorm": {
        "model.norm_kwargs.relax_start": TRAIN_STEPS * 5 // 40,
        "model.norm_kwargs.dmax_end": TRAIN_STEPS * 25 // 40,
        "model.norm_kwargs.rmax_end": TRAIN_STEPS,
    },
    "batch_kalman": {},
    "batch_layer": {},
    "layer": {},
    # Wu & He's 32 groups do not divide the 16-channel stage; 8 groups of 2 and 4 channels.
    "group": {"model.norm_kwargs.num_groups": 8},
    "instance": {},
    "frn": {},
    # The common lr 0.1 scrambles the directions v early (about 22% test accuracy measured):
    # with ||v|| starting at 0.05 sqrt(fan_in) the effective lr of w's direction is
    # lr g^2 / ||v||^2, tens of times that of a plain weight. Salimans & Kingma trained with Adam;
    # with this SGD 0.003 works (98.6% on seed 0).
    "weight": {"base_lr": 0.003},
    "batchless": {},
    # Davis & Frank: every gamma starts at 0.1 and learns at lr / 100; no weight decay on
    # normalization parameters and biases, 1e-4 on the other weights.
    "batch_small_init": {
        "model.norm": "batch",
        "model.norm_kwargs.scale_init": 0.1,
        "optimizer.lr_multipliers.scale": 0.01,
        "optimizer.weight_decay_on": "kernels",
        "optimizer.weight_decay": 1e-4,
    },
    "none": {},
}


def variant_overrides(variant: str) -> dict:
    """The overrides that make `variant`: its normalization and its paper's options."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown norm variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return {"model.norm": variant, **VARIANTS[variant]}


def get_config(arg=None):
    arg = parse_arg(arg, norm="batch")
    config = base_config()
    config.dataset.name = "digits"
    config.model.name = "cnn"
    config.model.options.widths = (16, 32)
    config.model.options.convs_per_stage = 2
    config.batch_size = 64
    config.base_batch_size = 64
    # 360 test digits: one evaluation batch with no padding, so variants that use the
    # statistics of the evaluation batch see only real images.
    config.eval_batch_size = 360
    config.base_lr = 0.1
    config.train_duration = "10 epochs"
    config.schedule.warmup = "1 epochs"
    config.log_every = "1 epochs"
    config.eval_every = "1 epochs"  # one batch of 360: the learning curves cost little
    config.checkpoint.every = "0 steps"
    set_fields(config, variant_overrides(arg.norm))
    return config


def get_sweep(arg=None):
    """Every variant x 3 seeds; each variant's runs and report row are named by its name."""
    del arg
    return grid.product(
        [grid.labeled(variant, variant_overrides(variant)) for variant in VARIANTS],
        grid.seeds(NUM_SEEDS),
    )
