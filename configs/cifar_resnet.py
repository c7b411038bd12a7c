"""He et al. 2016's CIFAR-10 ResNets, the recipe of their table 6.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385, section 4.2: ResNet-20/32/44/56/110 (option A, parameter-free shortcuts),
batch 128, SGD with momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k
iterations, stop at 64k; 4-pixel zero padding, random 32x32 crop and horizontal flip; the test
image evaluated as is.

    python launch.py --config configs/cifar_resnet.py:depth=56 --workdir runs/cifar_resnet56

Reported CIFAR-10 test error: ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43%
(accuracy 91.25 / 92.49 / 92.83 / 93.03 / 93.57%; 110: best of 5 runs, mean 6.61 +/- 0.16).

Budget: 64,000 steps x 128 = 8.19M images, 164 epochs of CIFAR's 50,000 training images (the
kit's epoch is 390 full batches; boundaries at epochs 82 and 123). The budget is in steps, as
the paper's, on any dataset.

Cost, measured on this machine's 2 CPU cores, no GPU measured: ResNet-20's train step at batch
128 runs 353 images/s on the idle machine (benchmarks/README.md): 6.4 h for the 8.19M images.
This config through launch.py (2,000 images of ../shared/data/cifar10-jpeg-subset, 40 steps),
with another job sharing the 2 cores, trained ResNet-20 at 209-277 images/s (10-step windows)
and ResNet-56 at 36-54 images/s (5-step windows; this repository's tests ran beside it too).
Depth 110 has 6x the block convolutions of depth 20 (18 blocks per stage against 3).

The arg, e.g. `configs/cifar_resnet.py:depth=56,dataset=cifar100,norm=group`:
  depth: 20 | 32 | 44 | 56 | 110.
  dataset: cifar10 | cifar100 | imagefolder:PATH (32x32 images; the same step budget).
  norm: any normalization of the kit (docs/normalizations.md); the paper's is batch.

Where this differs from the paper:
- He et al. chose the schedule on a 45k/5k train/validation split; this config trains on all
  50,000 training images and evaluates on the 10,000 test images, as the reported numbers are.
- ResNet-110 started at lr 0.01 for about 400 iterations (until the training error fell below
  80%), then 0.1. The kit's warmup is linear, so depth 110 ramps the lr linearly from 0.1/400 to
  0.1 over its first 400 steps instead: the same purpose (0.1 is too large to start at), not
  the same lr.
- The paper's batch-norm statistics were those of 64 images on each of two GPUs; here they are
  those of the whole batch of 128.
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config
from bnresearch.layers import NORMALIZATIONS

DEPTHS = (20, 32, 44, 56, 110)
DATASETS = ("cifar10", "cifar100", "imagefolder:PATH")
# The paper's warmup of the deepest net (see the docstring): depth -> warmup steps.
WARMUP_STEPS = {110: 400}


def get_config(arg=None):
    arg = parse_arg(arg, depth=20, dataset="cifar10", norm="batch")
    check_choice("depth", arg.depth, DEPTHS)
    check_choice("dataset", arg.dataset, DATASETS)
    check_choice("norm", arg.norm, tuple(NORMALIZATIONS))
    config = base_config()
    config.dataset.name = arg.dataset
    config.dataset.augment = "crop_flip"
    config.dataset.crop_padding = 4
    config.model.name = f"resnet{arg.depth}"
    config.model.norm = arg.norm
    config.model.options.shortcut = "pad"  # option A
    config.batch_size = 128
    config.base_batch_size = 128
    config.base_lr = 0.1
    config.optimizer.name = "momentum"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.train_duration = "64000 steps"
    config.schedule.decay = "step"
    config.schedule.boundaries = ("32000 steps", "48000 steps")
    config.schedule.decay_factor = 0.1
    config.schedule.warmup = f"{WARMUP_STEPS.get(arg.depth, 0)} steps"
    config.log_every = "100 steps"
    config.eval_every = "4000 steps"
    config.checkpoint.every = "4000 steps"
    return config
