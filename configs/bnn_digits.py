"""A binarized neural network (BNN) on the 8x8 digits: Hubara, Courbariaux, Soudry, El-Yaniv &
Bengio, "Binarized Neural Networks", NeurIPS 2016, arXiv:1602.02830.

    python launch.py --config configs/bnn_digits.py --workdir runs/bnn_digits

The paper's binarized MLP (3 hidden layers, 1024 units here instead of 4096 for 64 input
pixels): weights and activations are +-1 in every hidden layer (sign with the clipped
straight-through estimator), each block is binary dense -> batch norm -> hard_tanh, the latent
real-valued weights are clipped to [-1, 1] after each Adam step, the first layer sees the real
pixels and the logits layer stays full precision, followed by a batch norm. Glorot-uniform
init and no weight decay, as in the paper.

Measured (2 CPU cores shared with other jobs, data already prepared): 99.2% test accuracy after
40 epochs (880 steps) in 34-56 s. `:model=bnn_vgg`: 97.5% in about 2 min.

The arg picks the network: `configs/bnn_digits.py:model=bnn_vgg` trains the paper's ConvNet
(widths scaled down to 32-64-128 and dense 256 for 8x8 inputs).
"""
from bnresearch.config.arg import parse_arg
from bnresearch.config.defaults import base_config


def get_config(arg=None):
    arg = parse_arg(arg, model="bnn_mlp")
    config = base_config()
    config.dataset.name = "digits"
    config.model.name = arg.model
    if arg.model == "bnn_vgg":
        config.model.options.widths = (32, 64, 128)
        config.model.options.hidden_sizes = (256,)
    else:
        config.model.options.hidden_sizes = (1024, 1024, 1024)
    config.model.activation = "hard_tanh"
    config.model.weight_init = "glorot_uniform"
    config.model.quantization.method = "bnn"
    config.optimizer.name = "adam"
    config.optimizer.weight_decay = 0.0
    config.base_lr = 0.003
    config.batch_size = 64
    config.base_batch_size = 64
    config.train_duration = "40 epochs"
    config.schedule.decay = "cosine"
    config.log_every = "5 epochs"
    config.eval_every = "10 epochs"
    config.checkpoint.every = "20 epochs"
    return config
