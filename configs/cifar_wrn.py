"""Zagoruyko & Komodakis 2016's WRN-28-10 on CIFAR.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146: the
pre-activation WRN-28-10 (4 blocks per stage, 160/320/640 channels), batch 128, SGD with
nesterov momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by 0.2 at epochs 60, 120 and 160,
200 epochs; 4-pixel padding, random crop and horizontal flip, per-channel mean/std
normalization.

    python launch.py --config configs/cifar_wrn.py:dataset=cifar100,dropout \
        --workdir runs/wrn28_10_c100_dropout

Reported test error (the paper's mean/std-preprocessing numbers, as quoted in
../shared/reference/methods.md section 11): 3.89% on CIFAR-10 and 18.85% on CIFAR-100 without
dropout; 3.80% and 18.30% with dropout 0.3 in the blocks (accuracy 96.11 / 81.15%, 96.20 /
81.70%). Earlier versions of the paper (ZCA whitening) report other numbers for the same rows.

Budget: 200 epochs, 78,000 steps of 128 = 9.98M images (the kit's epoch is 390 full batches
of CIFAR's 50,000 training images).

Cost, measured on this machine's 2 CPU cores, no GPU measured: WRN-28-10 through launch.py (2,000
images of ../shared/data/cifar10-jpeg-subset, batch 32 for the measurement, 9 steps), with
another job sharing the cores, trained 2.7 images/s (96 images per 36 s): about 43 days for the
budget, out of reach of a CPU.

The arg, e.g. `configs/cifar_wrn.py:dataset=cifar100,dropout`:
  dataset: cifar10 | cifar100 | imagefolder:PATH (32x32 images).
  dropout: false | true (0.3 between the two convs of each block, the paper's placement).
  depth, width: the WRN's (28, 10); other values are other networks of the paper's family,
    not the reported row.

Where this differs from the paper: its padding fills with the image's reflection, the kit's crop
pads with zeros (dataset.crop_padding); the learning rate and weight decay are those of the
paper's Torch code as the kit applies them (coupled L2, decay on every parameter).
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config

DATASETS = ("cifar10", "cifar100", "imagefolder:PATH")
DROPOUT = 0.3
EPOCHS = 200
DECAY_EPOCHS = (60, 120, 160)


def get_config(arg=None):
    arg = parse_arg(arg, dataset="cifar10", dropout=False, depth=28, width=10)
    check_choice("dataset", arg.dataset, DATASETS)
    config = base_config()
    config.dataset.name = arg.dataset
    config.dataset.augment = "crop_flip"
    config.dataset.crop_padding = 4
    config.model.name = "wrn"
    config.model.options.depth = arg.depth
    config.model.options.width = arg.width
    config.model.dropout.hidden = DROPOUT if arg.dropout else 0.0
    config.batch_size = 128
    config.base_batch_size = 128
    config.base_lr = 0.1
    config.optimizer.name = "nesterov"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.train_duration = f"{EPOCHS} epochs"
    config.schedule.decay = "step"
    config.schedule.boundaries = tuple(f"{epoch} epochs" for epoch in DECAY_EPOCHS)
    config.schedule.decay_factor = 0.2
    config.log_every = "100 steps"
    config.eval_every = "10 epochs"
    config.checkpoint.every = "5 epochs"
    return config
