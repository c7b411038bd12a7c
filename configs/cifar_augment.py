"""Augmentation ablation on real CIFAR-10 images: ResNet-20 with none, flip, crop + flip,
crop + flip + cutout, and crop + flip + mixup.

The study of experiments/cifar_augment/: He et al.'s ResNet-20 with batch norm (SGD momentum 0.9,
weight decay 5e-4, lr 0.1 at batch 128, cosine decay) for 3 epochs of a CIFAR-10 image folder,
the same network, budget and seeds for every augmentation; 2 seeds (10 runs, two at a time):

    python launch.py --config configs/cifar_augment.py --workdir runs/cifar_augment \\
        --sweep --parallel 2

The arg `data` is the image folder (train/ and test/ with one subfolder per class); its default
is the 22,000-image CIFAR-10 subset this project's studies use (2,000 train and 200 test images
per class), which stays outside the repository. Measured cost: 60 min on the 2-core VM while
other jobs shared its cores (experiments/cifar_augment/README.md). Expected: about 59% without
augmentation, 54% with crop + flip, 48-49% with cutout or mixup on top. One variant alone:

    python launch.py --config configs/cifar_augment.py:augment=crop_flip_mixup --workdir runs/a/mix
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.sweep import grid

DEFAULT_DATA = "../shared/data/cifar10-jpeg-subset"
NUM_SEEDS = 2
STEPS_PER_EPOCH = 20_000 // 128  # of the default folder: for the evaluation cadence only

# Each variant: its `dataset.augment` and options. Cutout's 16-pixel square is DeVries & Taylor's
# CIFAR-10 size; they zero normalized pixels, i.e. paint the mean colour: 121 is the mean of
# CIFAR-10's per-channel means (125, 123, 114) in 0..255. Mixup with alpha 1, Zhang et al.'s
# CIFAR value, on top of crop + flip as in their CIFAR runs.
VARIANTS = {
    "none": {"dataset.augment": "none"},
    "flip": {"dataset.augment": "flip"},
    "crop_flip": {"dataset.augment": "crop_flip"},
    "crop_flip_cutout": {
        "dataset.augment": "crop_flip,cutout",
        "dataset.augment_kwargs.cutout.length": 16,
        "dataset.augment_kwargs.cutout.fill": 121,
    },
    "crop_flip_mixup": {
        "dataset.augment": "crop_flip,mixup",
        "dataset.augment_kwargs.mixup.alpha": 1.0,
    },
}


def variant_overrides(variant: str) -> dict:
    if variant not in VARIANTS:
        raise UsageError(f"unknown augmentation variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def get_config(arg=None):
    arg = parse_arg(arg, augment="crop_flip", data=DEFAULT_DATA)
    config = base_config()
    config.dataset.name = f"imagefolder:{arg.data}"
    config.model.name = "resnet20"
    config.model.norm = "batch"
    config.batch_size = 128
    config.base_batch_size = 128
    config.base_lr = 0.1
    config.optimizer.weight_decay = 5e-4
    config.train_duration = "3 epochs"
    config.schedule.warmup = "0.1 epochs"
    config.schedule.decay = "cosine"
    config.log_every = f"{STEPS_PER_EPOCH // 8} steps"
    config.eval_every = f"{STEPS_PER_EPOCH // 2} steps"  # six evaluations, the last at the end
    config.eval_batch_size = 500  # 2,000 test images in 4 batches, no padding
    config.checkpoint.every = "0 steps"
    set_fields(config, variant_overrides(arg.augment))
    return config


def get_sweep(arg=None):
    """Every augmentation variant x 2 seeds; runs and report rows are named by the variant."""
    del arg
    return grid.product(
        [grid.labeled(variant, overrides) for variant, overrides in VARIANTS.items()],
        grid.seeds(NUM_SEEDS),
    )
