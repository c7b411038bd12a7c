"""Goyal et al. 2017's ImageNet ResNet-50: linear lr scaling with gradual warmup.

Goyal, Dollar, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch, Jia & He, "Accurate, Large
Minibatch SGD: Training ImageNet in 1 Hour", 2017, arXiv:1706.02677, section 5.1: ResNet-50
(stride on the 3x3 convs), 90 epochs, SGD with nesterov momentum 0.9, lr 0.1 x B/256 multiplied
by 0.1 at epochs 30, 60 and 80, gradual warmup over the first 5 epochs for B > 256, weight decay
1e-4 on all but the batch-norm gains and biases, the gain of each residual block's last batch
norm initialised to 0, batch-norm statistics over 32 images per worker (running averages with
momentum 0.9); random-resized 224 crop and horizontal flip; evaluated on the 224 centre crop of
the image resized to 256 (shorter side).

    python launch.py --config configs/imagenet_resnet50.py:batch_size=256 --workdir runs/rn50_b256

Reported top-1 validation error: 23.60% +/- 0.12 at B = 256 and 23.74% +/- 0.09 at B = 8k
(top-1 accuracy 76.4 / 76.3%); the kit logs top-1 and top-5 (eval/top5_accuracy).

Budget: 90 epochs of ImageNet's 1,281,167 training images, 115.3M images: 450,360 steps at
B = 256 (5,004 full batches an epoch), 14,040 at 8k.

Cost, measured on this machine's 2 CPU cores, no GPU measured: ResNet-50 at 224 through
launch.py (2,000 CIFAR-10 JPEGs of ../shared/data/cifar10-jpeg-subset upsampled by the crop,
batch 32 for the measurement) trained 0.42 images/s (96 images in 228 s) while other jobs kept
the load average at 5-6 (the process got about a fifth of a core). ImageNet's 90 epochs are out
of reach of a CPU.

The arg, e.g. `configs/imagenet_resnet50.py:batch_size=8192`:
  batch_size: any multiple of 32 (the batch-norm groups); the lr is 0.1 x batch_size/256
    (lr_scaling=linear, base_batch_size=256).
  dataset: imagenet2012 (prepared from the manual download, docs/data.md) | imagefolder:PATH.

Where this differs from the paper:
- Warmup: the paper ramps the lr linearly from 0.1 to 0.1 x B/256 over 5 epochs; the kit's
  warmup ramps it from (0.1 x B/256)/W to 0.1 x B/256 over the W steps of 5 epochs. At B = 256
  the paper's ramp is constant, and this config has none.
- Batch-norm statistics over 32 images are ghost batch norm with virtual batches of 32
  consecutive examples (model.norm=ghost_batch), the paper's per-worker batches on any number of
  devices.
- Weight decay: optimizer.weight_decay_on=kernels exempts the batch-norm gains and biases, as
  the paper does, and the classifier's bias too (1,000 numbers), which the paper decays.
- The kit's nesterov keeps the velocity of the gradients and multiplies the step by the current
  lr, which equals the paper's update with its momentum correction (section 2.1) at every lr
  change.
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config

DATASETS = ("imagenet2012", "imagefolder:PATH")
BASE_BATCH_SIZE, BASE_LR = 256, 0.1
BN_GROUP = 32  # images per batch-norm statistic: the paper's per-worker batch
WARMUP_EPOCHS = 5
DECAY_EPOCHS = (30, 60, 80)


def get_config(arg=None):
    arg = parse_arg(arg, batch_size=BASE_BATCH_SIZE, dataset="imagenet2012")
    check_choice("dataset", arg.dataset, DATASETS)
    config = base_config()
    config.dataset.name = arg.dataset
    config.dataset.augment = "resized_crop_flip"
    config.dataset.image_size = 224  # eval: shorter side to 224 / 0.875 = 256, centre 224
    config.model.name = "resnet50"
    config.model.options.stem = "imagenet"
    config.model.options.zero_init_residual = True
    config.model.norm = "ghost_batch"
    config.model.norm_kwargs.virtual_batch_size = BN_GROUP
    config.batch_size = arg.batch_size
    config.base_batch_size = BASE_BATCH_SIZE
    config.base_lr = BASE_LR
    config.lr_scaling = "linear"
    config.optimizer.name = "nesterov"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.weight_decay_on = "kernels"
    config.train_duration = "90 epochs"
    config.schedule.decay = "step"
    config.schedule.boundaries = tuple(f"{epoch} epochs" for epoch in DECAY_EPOCHS)
    config.schedule.decay_factor = 0.1
    # The paper's ramp goes from 0.1 to 0.1 x B/256: nothing to ramp at B <= 256.
    warmup = WARMUP_EPOCHS if arg.batch_size > BASE_BATCH_SIZE else 0
    config.schedule.warmup = f"{warmup} epochs"
    config.eval_batch_size = 500  # divides ImageNet's 50,000 validation images
    config.log_every = "100 steps"
    config.eval_every = "5 epochs"
    config.checkpoint.every = "1 epochs"
    return config
