"""Why batch norm helps, at a small budget: Santurkar et al. 2018's probes, noisy BN and GradInit.

The study of experiments/why_bn/. A small VGG-style network (the zoo's `cnn`: stages of 3x3
conv -> norm -> ReLU, strided convs between stages, global average pooling; the zoo's VGG-11 is
~15 times its cost per image, too much for this budget) trains on part of a CIFAR-10 image folder
with SGD momentum 0.9, lr 0.1 at batch 128, cosine decay, crop + flip, weight decay 5e-4, with
the landscape probes (loss range, gradient predictiveness, beta-smoothness along -g), internal
covariate shift and activation statistics logged every PROBE_EVERY steps. Variants:

- `standard` (no normalization), `batch_norm`, `noisy_batch_norm` (batch norm with Santurkar
  et al.'s injected, non-stationary mean and scale noise after every normalization): the
  SHALLOW network, 6 convs;
- `deep_standard` and `deep_gradinit`: the DEEP network, 15 convs, no normalization, the
  kit's default He-normal init against GradInit (Zhu et al. 2021) from it before training,
  same lr; `deep_lecun` and `deep_lecun_gradinit`: the same from LeCun-normal (flax's default
  for its layers), under which the deep ReLU network's signal vanishes.

Two seeds each (14 runs):

    python launch.py --config configs/why_bn.py --workdir runs/why_bn --sweep --parallel 2

`data` is the image folder; its default is the 22,000-image CIFAR-10 subset this project's
studies use, outside the repository. One point alone, e.g.
`--config configs/why_bn.py:variant=deep_gradinit`.

Measured cost: 16 min 33 s of wall time for the sweep on the idle 2-core VM, from a fresh clone
(experiments/why_bn/README.md). Expected: batch norm 43.4% test accuracy after the 200 updates,
no normalization 31.0%; BN's loss range, gradient predictiveness and beta-smoothness 3.5-4 times
smaller; noisy BN near chance on the test set (11.5%); the deep network 14-16% with either
default init and at chance (10.0%) after GradInit from either.
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields
from bnresearch.sweep import grid

DEFAULT_DATA = "../shared/data/cifar10-jpeg-subset"
WIDTHS = (16, 32, 64)
SHALLOW = 2  # convs per stage: 6 convs + the classifier
DEEP = 5  # 15 convs + the classifier
BATCH = 128
STEPS = 200
PROBE_EVERY = 40
# About one epoch of tuning, as in the paper: 78 iterations of 2 batches of 128 of the 20,000
# training images.
GRADINIT_ITERATIONS = 78
NUM_SEEDS = 2
NOISE = {"model.norm_kwargs.noise_shift": 1.0, "model.norm_kwargs.noise_gain": 2.0}

PROBES = ("landscape", "covariate_shift", "activation_stats")
# The probes on the shallow network only: the deep runs ask whether GradInit trains, and their
# probes would cost a third of the study's time.
UNPROBED = {f"{block}.enabled": False for block in PROBES}

VARIANTS = {
    "standard": {"model.norm": "none", "model.options.convs_per_stage": SHALLOW},
    "batch_norm": {"model.norm": "batch", "model.options.convs_per_stage": SHALLOW},
    "noisy_batch_norm": {
        "model.norm": "batch",
        "model.options.convs_per_stage": SHALLOW,
        **NOISE,
    },
    "deep_standard": {"model.norm": "none", "model.options.convs_per_stage": DEEP, **UNPROBED},
    "deep_gradinit": {
        "model.norm": "none",
        **UNPROBED,
        "model.options.convs_per_stage": DEEP,
        "model.init_method": "gradinit",
        "gradinit.iterations": GRADINIT_ITERATIONS,
    },
    "deep_lecun": {
        "model.norm": "none",
        "model.options.convs_per_stage": DEEP,
        "model.weight_init": "lecun_normal",
        **UNPROBED,
    },
    "deep_lecun_gradinit": {
        "model.norm": "none",
        **UNPROBED,
        "model.options.convs_per_stage": DEEP,
        "model.weight_init": "lecun_normal",
        "model.init_method": "gradinit",
        "gradinit.iterations": GRADINIT_ITERATIONS,
    },
}


def get_config(arg=None):
    arg = parse_arg(arg, variant="batch_norm", data=DEFAULT_DATA)
    check_choice("variant", arg.variant, tuple(VARIANTS))
    config = base_config()
    config.dataset.name = f"imagefolder:{arg.data}"
    config.dataset.augment = "crop_flip"
    config.model.name = "cnn"
    config.model.options.widths = WIDTHS
    config.batch_size = BATCH
    config.base_batch_size = BATCH
    config.base_lr = 0.1
    config.optimizer.weight_decay = 5e-4
    config.schedule.decay = "cosine"
    config.train_duration = f"{STEPS} steps"
    config.log_every = "10 steps"
    config.eval_every = f"{STEPS // 4} steps"
    # 2,000 test images in 4 batches, no padding.
    config.eval_batch_size = 500
    config.checkpoint.every = "0 steps"
    config.checkpoint.keep = 1
    for block in PROBES:
        config[block].enabled = True
        config[block].every = f"{PROBE_EVERY} steps"
    set_fields(config, VARIANTS[arg.variant])
    return config


def get_sweep(arg=None):
    """Every variant, 2 seeds; runs and report rows are named `<variant>`."""
    del arg
    return grid.product(
        [grid.labeled(name, overrides) for name, overrides in VARIANTS.items()],
        grid.seeds(NUM_SEEDS),
    )
