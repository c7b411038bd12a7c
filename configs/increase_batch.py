"""Increase the batch size instead of decaying the learning rate, against the lr decay it replaces.

Smith, Kindermans, Ying & Le, "Don't Decay the Learning Rate, Increase the Batch Size", ICLR
2018, arXiv:1711.00489. Where the step schedule divides the lr by 5 (epochs 10 and 20 of 30), the
`increase` variant multiplies the batch size by 5 instead and keeps the lr (16 -> 80 -> 400 per
batch): about the same accuracy per epoch with far fewer updates (1090 against 2670 here).

    python launch.py --config configs/increase_batch.py:schedule=increase \
        --workdir runs/increase_batch/increase

Arg: schedule (decay | increase), model (cnn | resnet20), seeds (of the sweep). The batch-norm
CNN normalizes over the whole batch, so its noise shrinks as the batch grows; Smith et al. keep it
with ghost batch norm of 128 (set the normalization's ghost batch size where the model has one).
Both variants:

    python launch.py --config configs/increase_batch.py:seeds=3 --workdir runs/increase_batch \
        --sweep

Measured on 2 CPU cores, start-up and compilation included: decay (2670 steps) 50 s, increase
(1090 steps) 48 s; both reach 98.9% test accuracy (and are identical up to epoch 10).
"""

from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError

BATCH_SIZE, FACTOR, EPOCHS = 16, 5, (10, 20)
ARGS = dict(schedule="increase", model="cnn", seeds=1)  # of get_config and get_sweep
# The fields each variant sets; both set the same fields, so either overrides the other.
VARIANTS = {
    "decay": {
        "batch_size_schedule.epochs": (),
        "batch_size_schedule.batch_sizes": (),
        "schedule.decay": "step",
        "schedule.boundaries": tuple(f"{epoch} epochs" for epoch in EPOCHS),
    },
    "increase": {
        "batch_size_schedule.epochs": EPOCHS,
        "batch_size_schedule.batch_sizes": tuple(
            BATCH_SIZE * FACTOR ** (index + 1) for index in range(len(EPOCHS))
        ),
        "schedule.decay": "constant",
        "schedule.boundaries": (),
    },
}


def get_config(arg=None):
    arg = parse_arg(arg, **ARGS)
    if arg.schedule not in VARIANTS:
        raise UsageError(f"unknown schedule {arg.schedule!r}; valid: {', '.join(VARIANTS)}")
    config = base_config()
    config.dataset.name = "digits"
    config.model.name = arg.model
    config.batch_size = BATCH_SIZE
    config.base_batch_size = BATCH_SIZE
    config.base_lr = 0.02
    config.batch_size_schedule.lr = "fixed"  # the point: the batch grows, the lr does not
    config.schedule.decay_factor = 1 / FACTOR
    config.optimizer.name = "momentum"
    config.train_duration = "30 epochs"
    config.log_every = "1 epochs"
    config.eval_every = "5 epochs"
    config.lock()  # a misspelt field below is an error, not a new field
    config.update_from_flattened_dict(VARIANTS[arg.schedule])
    return config


def get_sweep(arg=None):
    """Both variants, for each seed, on top of get_config(arg)."""
    seeds = parse_arg(arg, **ARGS).seeds
    return [{**fields, "seed": seed} for seed in range(seeds) for fields in VARIANTS.values()]
