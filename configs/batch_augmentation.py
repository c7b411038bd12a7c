"""Batch augmentation: each example M times per batch, independently augmented.

Hoffer, Ben-Nun, Hubara, Giladi, Hoefler & Soudry, "Augment your batch: better training with
larger batches", 2019, arXiv:1901.09335. A batch of B = 32 distinct digits holds 32 * M images;
steps per epoch (44) and the lr schedule stay those of the baseline M = 1, so M buys more
augmented samples per update, not more updates.

    python launch.py --config configs/batch_augmentation.py:multiplicity=4 \
        --workdir runs/batch_augmentation/m4

Arg: multiplicity (M; the grid is MULTIPLICITIES), model (cnn | resnet20), seeds (of the sweep).
Digits are augmented by random shifts of up to 1 pixel (augment=crop; a flip would change the
digit). The whole grid:

    python launch.py --config configs/batch_augmentation.py:seeds=3 \
        --workdir runs/batch_augmentation --sweep

Measured on 2 CPU cores (1320 steps each, start-up and compilation included): M=1 46 s, test
accuracy 99.7%; M=8 4:21, 99.7%.
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config

MULTIPLICITIES = (1, 2, 4, 8)
ARGS = dict(multiplicity=1, model="cnn", seeds=1)  # of get_config and get_sweep


def get_config(arg=None):
    arg = parse_arg(arg, **ARGS)
    config = base_config()
    config.dataset.name = "digits"
    config.dataset.augment = "crop"
    config.dataset.crop_padding = 1
    config.model.name = arg.model
    config.batch_augmentation.multiplicity = arg.multiplicity
    config.batch_size = 32
    config.base_batch_size = 32  # the lr of the baseline, whatever M is
    config.base_lr = 0.025
    config.train_duration = "30 epochs"
    config.schedule.warmup = "1 epochs"
    config.log_every = "1 epochs"
    config.eval_every = "5 epochs"
    return config


def get_sweep(arg=None):
    """Each M of MULTIPLICITIES, for each seed, on top of get_config(arg)."""
    seeds = parse_arg(arg, **ARGS).seeds
    return [
        {"batch_augmentation.multiplicity": multiplicity, "seed": seed}
        for seed in range(seeds)
        for multiplicity in MULTIPLICITIES
    ]
