"""Normalizations on real CIFAR-10 images: ResNet-20 at batch 128 and at batch 8.

The study of experiments/cifar_norms/: every variant of configs/norm_comparison.py on He et al.'s
ResNet-20 (crop + flip, SGD momentum 0.9, weight decay 5e-4, lr 0.1 at batch 128 scaled
linearly with the batch, cosine decay) for one epoch of a CIFAR-10 image folder; then the
variants that claim to hold at small batches, and batch norm, at batch 8 for the same epoch.
Two seeds each (40 runs, two at a time):

    python launch.py --config configs/cifar_norms.py --workdir runs/cifar_norms \\
        --sweep --parallel 2

The arg `data` is the image folder (train/ and test/ with one subfolder per class); its default
is the 22,000-image CIFAR-10 subset this project's studies use (2,000 train and 200 test images
per class), which stays outside the repository. Measured cost: 90 min on the 2-core VM
while other jobs shared its cores (experiments/cifar_norms/README.md). Expected: batch norm
about 39% at batch 128 and 48% at batch 8 after the epoch. One point alone, e.g. group norm at
batch 8:

    python launch.py --config configs/cifar_norms.py:norm=group,batch=8 --workdir runs/c/group8
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.sweep import grid

DEFAULT_DATA = "../shared/data/cifar10-jpeg-subset"
BASE_BATCH = 128
SMALL_BATCH = 8
NUM_SEEDS = 2
EPOCHS = 1
TRAIN_IMAGES = 20_000  # of the default folder; only the renorm milestones below depend on it

# The variants at batch 128: those of configs/norm_comparison.py. Their options follow the
# papers as there, restated for this network: ResNet-20's 16/32/64 channels take 8 groups, and
# batch renorm's milestones are fractions of the run (set per batch size in _variant).
VARIANTS = (
    "batch",
    "ghost_batch",
    "batch_renorm",
    "batch_kalman",
    "batch_layer",
    "layer",
    "group",
    "instance",
    "frn",
    "weight",
    "batchless",
    "batch_small_init",
    "none",
)
# At batch 8: batch norm, and the variants whose papers claim they hold at small batches
# (renorm, Kalman norm, group norm, FRN) or that never look at the batch (layer norm), with the
# unnormalized network as the floor. The others were left out to keep the study within its hour.
SMALL_BATCH_VARIANTS = ("batch", "batch_renorm", "batch_kalman", "layer", "group", "frn", "none")


def _variant(variant: str, batch_size: int) -> dict:
    """The overrides of `variant` at `batch_size`: its normalization and its paper's options."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown norm variant {variant!r}; valid: {', '.join(VARIANTS)}")
    steps = EPOCHS * TRAIN_IMAGES // batch_size
    options = {
        # Hoffer et al.'s ratio of batch to virtual batch (128 in thousands), as on digits.
        "ghost_batch": {"model.norm_kwargs.virtual_batch_size": max(batch_size // 4, 1)},
        # Ioffe's milestones (relax after 5k, d_max = 5 at 25k, r_max = 3 at 40k of his 40k+
        # steps) as the same fractions of this run.
        "batch_renorm": {
            "model.norm_kwargs.relax_start": steps * 5 // 40,
            "model.norm_kwargs.dmax_end": steps * 25 // 40,
            "model.norm_kwargs.rmax_end": steps,
        },
        "group": {"model.norm_kwargs.num_groups": 8},
        # As on digits: at lr 0.1 the directions v are scrambled early; 0.003 at batch 128.
        "weight": {"base_lr": 0.003},
        # Davis & Frank: gammas start at 0.1 and learn at lr / 100, weight decay 1e-4 on kernels.
        "batch_small_init": {
            "model.norm": "batch",
            "model.norm_kwargs.scale_init": 0.1,
            "optimizer.lr_multipliers.scale": 0.01,
            "optimizer.weight_decay_on": "kernels",
            "optimizer.weight_decay": 1e-4,
        },
    }
    return {"model.norm": variant, **options.get(variant, {})}


def _point(variant: str, batch_size: int) -> dict:
    """One variant at one batch size, with the eval cadence of that batch size."""
    steps_per_epoch = TRAIN_IMAGES // batch_size
    return {
        "batch_size": batch_size,
        # Four evaluations per run, the last at the end.
        "eval_every": f"{steps_per_epoch * EPOCHS // 4} steps",
        "log_every": f"{max(steps_per_epoch * EPOCHS // 20, 1)} steps",
        **_variant(variant, batch_size),
    }


def get_config(arg=None):
    arg = parse_arg(arg, norm="batch", batch=BASE_BATCH, data=DEFAULT_DATA)
    config = base_config()
    config.dataset.name = f"imagefolder:{arg.data}"
    config.dataset.augment = "crop_flip"
    config.model.name = "resnet20"
    config.base_batch_size = BASE_BATCH
    config.base_lr = 0.1
    config.optimizer.weight_decay = 5e-4
    config.train_duration = f"{EPOCHS} epochs"
    config.schedule.warmup = "0.1 epochs"
    config.schedule.decay = "cosine"
    # 2,000 test images in 4 batches, no padding: variants that normalize with the statistics of
    # the evaluation batch see only real images.
    config.eval_batch_size = 500
    config.checkpoint.every = "0 steps"
    set_fields(config, _point(arg.norm, arg.batch))
    return config


def get_sweep(arg=None):
    """Every variant at batch 128, the small-batch variants at batch 8; 2 seeds each. Runs and
    report rows are named `<variant>,batch=<B>`."""
    del arg
    points = [(variant, BASE_BATCH) for variant in VARIANTS]
    points += [(variant, SMALL_BATCH) for variant in SMALL_BATCH_VARIANTS]
    return grid.product(
        [grid.labeled(f"{v},batch={b}", _point(v, b)) for v, b in points], grid.seeds(NUM_SEEDS)
    )
