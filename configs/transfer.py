"""Transfer learning on CIFAR-10: pretrain on five classes, fine-tune on few images of the others.

The study of experiments/transfer/. ResNet-20 is pretrained on the first five classes of a
CIFAR-10 image folder (airplane, automobile, bird, cat, deer: 10,000 images), then fine-tuned on
the other five (dog, frog, horse, ship, truck) with 20, 100 or 500 training images per class
(the first ones of each class folder), and tested on all 1,000 test images of those classes.
Regimes: from scratch; a linear probe (everything frozen but the new classifier); the last stage
and the classifier; the whole network; the probe and the whole network each with the three
normalization modes (adapt: batch statistics, running ones updated; frozen: the source's running
statistics throughout; reestimate: recomputed on the new training images, then frozen). Every
fine-tune re-initialises the classifier; the loaded body learns at a tenth of the head's lr. Two
seeds each (48 runs). Commands, in order (the second needs the first's checkpoint):

    python launch.py --config configs/transfer.py:stage=pretrain --workdir runs/transfer/pretrain
    python launch.py --config configs/transfer.py:source=runs/transfer/pretrain \\
        --workdir runs/transfer/finetune --sweep --parallel 2

`data` (both) is the image folder (train/ and test/ with one subfolder per class, classes in
CIFAR-10's order); its default is the CIFAR-10 subset of 2,000 training and 200 test images per
class that this project's studies use, outside the repository. `source` is the pretraining run's
workdir. One point alone, e.g. the linear probe with re-estimated statistics on 20 images per
class:

    python launch.py --config configs/transfer.py:source=runs/transfer/pretrain,regime=linear,\\
norm=reestimate,n=20 --workdir runs/t/linear_reestimate_20

Measured cost: 41 min on the 2-core VM, shared with other work (pretraining 7 min, the 48
fine-tunes 34 min). Expected: the pretrained network about 64% on its five classes; full
fine-tuning about 60, 64 and 70% at 20, 100 and 500 images per class, from scratch about 48, 56
and 61% (experiments/transfer/README.md).
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields
from bnresearch.sweep import grid

DEFAULT_DATA = "../shared/data/cifar10-jpeg-subset"
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
PRETRAIN_EPOCHS = 6
FINETUNE_BATCH = 50  # divides every training set below (100, 500, 2,500 images)
# Images per class -> fine-tuning steps: 5 epochs of the largest set, more passes over the
# smaller ones, which still take fewer steps.
STEPS = {20: 80, 100: 160, 500: 250}
NUM_SEEDS = 2
REGIMES = ("scratch", "linear", "last_stage", "full")
NORM_MODES = ("adapt", "frozen", "reestimate")
# The regimes crossed with every normalization mode; the others run with adapt.
NORM_REGIMES = ("linear", "full")


# The args of get_config and get_sweep (the sweep reads `source` alone).
ARG_DEFAULTS = {
    "stage": "finetune",
    "regime": "full",
    "norm": "adapt",
    "n": 100,
    "data": DEFAULT_DATA,
    "source": "runs/transfer/pretrain",
}


def _regime(regime: str, norm: str, source: str) -> dict:
    """The overrides of a fine-tuning regime with a normalization mode."""
    if regime == "scratch":
        return {"init_from.workdir": "", "init_from.reinit": (), "fine_tune.norm": norm}
    stages = {"linear": 1, "last_stage": 2, "full": 0}[regime]
    return {
        "init_from.workdir": source,
        # The new classes have the old count: the classifier fits, and is re-initialised by name.
        "init_from.reinit": ("head",),
        "fine_tune.train_last_stages": stages,
        "fine_tune.body_lr": 0.1,
        "fine_tune.norm": norm,
    }


def _size(n: int) -> dict:
    steps = STEPS[n]
    return {
        "dataset.train_per_class": n,
        "train_duration": f"{steps} steps",
        "eval_every": f"{steps // 4} steps",
        "log_every": f"{steps // 20} steps",
    }


def get_config(arg=None):
    arg = parse_arg(arg, **ARG_DEFAULTS)
    check_choice("stage", arg.stage, ("pretrain", "finetune"))
    check_choice("regime", arg.regime, REGIMES)
    check_choice("norm", arg.norm, NORM_MODES)
    check_choice("n", arg.n, tuple(STEPS))
    config = base_config()
    config.dataset.name = f"imagefolder:{arg.data}"
    config.dataset.augment = "crop_flip"
    config.model.name = "resnet20"
    config.base_batch_size = 128
    config.base_lr = 0.1
    config.optimizer.weight_decay = 5e-4
    config.schedule.decay = "cosine"
    # 1,000 test images of five classes in 2 batches, no padding.
    config.eval_batch_size = 500
    if arg.stage == "pretrain":
        config.dataset.classes = PRETRAIN_CLASSES
        config.batch_size = 128
        config.train_duration = f"{PRETRAIN_EPOCHS} epochs"
        config.schedule.warmup = "0.2 epochs"
        config.eval_every = "2 epochs"
        config.log_every = "20 steps"
        config.checkpoint.every = "0 steps"  # the end only: what the fine-tunes load
        config.checkpoint.keep = 1
        return config
    config.dataset.classes = FINETUNE_CLASSES
    config.batch_size = FINETUNE_BATCH
    config.checkpoint.every = "0 steps"
    config.checkpoint.keep = 1
    set_fields(config, {**_regime(arg.regime, arg.norm, arg.source), **_size(arg.n)})
    return config


def get_sweep(arg=None):
    """Every regime (with adapt) and the crossed regimes with every mode, at 20, 100 and 500
    images per class, 2 seeds. Runs and report rows are named `<regime>,norm=<mode>,n=<N>`
    (`scratch,n=<N>`)."""
    source = parse_arg(arg, **ARG_DEFAULTS).source
    variants = [("scratch", "adapt")]
    variants += [
        (regime, norm)
        for regime in REGIMES[1:]
        for norm in NORM_MODES
        if norm == "adapt" or regime in NORM_REGIMES
    ]
    points = []
    for regime, norm in variants:
        name = "scratch" if regime == "scratch" else f"{regime},norm={norm}"
        for n in STEPS:
            points.append(
                grid.labeled(f"{name},n={n}", {**_regime(regime, norm, source), **_size(n)})
            )
    return grid.product(points, grid.seeds(NUM_SEEDS))
