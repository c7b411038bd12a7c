"""The zoo's Inception-style net with the training recipe of Inception-v3.

Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception Architecture for Computer
Vision", CVPR 2016, arXiv:1512.00567, section 8: RMSProp with decay 0.9 and epsilon 1.0, lr 0.045
multiplied by 0.94 every 2 epochs, gradient clipping at 2.0, batch 32 (per replica, 50
replicas), 100 epochs; label smoothing 0.1 (section 7); 299 x 299 inputs.

    python launch.py --config configs/imagenet_inception.py --workdir runs/inception

This is NOT Inception-v3 and does not reproduce its numbers (21.2% top-1, 5.6% top-5 error, one
crop, section 8, table 3). The zoo's net (bnresearch/models/inception.py, docs/models.md) is
Inception-style, built for CIFAR-sized inputs: a stride-1 3x3 stem, two figure-5 modules, one
grid reduction, two figure-6 modules with 1x7/7x1 factorization, no auxiliary classifier. At 299
it runs its first modules on the full 299 x 299 grid, where v3's stem has reduced it to 35 x 35
first, so it costs far more per image than v3. No number is expected of it: this config is the
v3 recipe elements on the zoo's net, a baseline for comparisons within the kit.

Budget: 100 epochs of ImageNet's 1,281,167 training images, 128.1M images: 4,003,600 steps of
32 (40,036 full batches an epoch).

Cost: no throughput could be measured at 299, and no GPU was measured. On this machine (2 CPU
cores, 24 GB), batch 8 at 299 compiled in 7 s and was then killed for lack of memory (24 GB
resident) before its first step finished: this command, idle machine, at commit 3d097c7,
    python launch.py --config configs/imagenet_inception.py:dataset=imagefolder:PATH \
        --config.batch_size=8 --config.train_duration="4 steps" --config.eval_every="0 steps"
The net runs its first modules (256 channels out) on 28 times as many positions as ResNet-50's
first stage (256 channels, 56 x 56 at 224; 299^2 / 56^2 = 28.5), and ResNet-50 at 224 trained
0.42 images/s here (configs/imagenet_resnet50.py): out of reach of a CPU. The tests train it on
16 x 16 images.

The arg: dataset: imagenet2012 | imagefolder:PATH.

Where the kit's settings carry the recipe differently:
- The lr decays in steps of 0.94 every 2 epochs, as the paper's "decayed every two epochs": a
  step decay with a boundary at every second epoch.
- RMSProp: the kit's is TensorFlow's (epsilon inside the square root); the mean square starts at
  1.0, as TensorFlow's RMSPropOptimizer starts it. The paper names no momentum and the kit's
  rmsprop has none (TF-slim's training script added 0.9).
- Gradient clipping: the paper gives the threshold, 2.0, not the norm; this is the global norm.
- Weight decay: not in the paper; 4e-5, TF-slim's Inception-v3 default, coupled L2 on kernels.
- The 50 replicas trained asynchronously; here one synchronous batch of 32 (lr_scaling=linear
  from 32, so a larger batch raises the lr in proportion: the kit's rule, not the paper's).
- Evaluation: the shorter side resized to 299 / 0.875 = 342 and the centre 299 crop (v3's is the
  central 87.5% resized to 299: the same region).
"""

from bnresearch.config.arg import check_choice, parse_arg
from bnresearch.config.defaults import base_config

DATASETS = ("imagenet2012", "imagefolder:PATH")
EPOCHS = 100
DECAY_EVERY_EPOCHS = 2


def get_config(arg=None):
    arg = parse_arg(arg, dataset="imagenet2012")
    check_choice("dataset", arg.dataset, DATASETS)
    config = base_config()
    config.dataset.name = arg.dataset
    config.dataset.augment = "resized_crop_flip"
    config.dataset.image_size = 299
    config.model.name = "inception"
    config.batch_size = 32
    config.base_batch_size = 32
    config.base_lr = 0.045
    config.lr_scaling = "linear"
    config.optimizer.name = "rmsprop"
    config.optimizer.rho = 0.9
    config.optimizer.eps = 1.0
    config.optimizer.initial_accumulator = 1.0
    config.optimizer.grad_clip_norm = 2.0
    config.optimizer.weight_decay = 4e-5
    config.optimizer.weight_decay_on = "kernels"
    config.label_smoothing = 0.1
    config.train_duration = f"{EPOCHS} epochs"
    config.schedule.decay = "step"
    config.schedule.boundaries = tuple(
        f"{epoch} epochs" for epoch in range(DECAY_EVERY_EPOCHS, EPOCHS, DECAY_EVERY_EPOCHS)
    )
    config.schedule.decay_factor = 0.94
    config.eval_batch_size = 500  # divides ImageNet's 50,000 validation images
    config.log_every = "100 steps"
    config.eval_every = "5 epochs"
    config.checkpoint.every = "1 epochs"
    return config
