"""The PyTorch eager peers of the benchmarked models, and their timed train and eval steps.

Each model has the layers of bnresearch's (bnresearch/models/cifar_resnet.py, cnn.py,
resnet.py): convs without bias, each followed by batch norm (eps 1e-5, running averages with
weight 0.1 on the new value: the library's flax-convention 0.9 on the old one), relu, global
average pooling and a linear head with bias. With norm 'none' the convs have a bias and nothing
follows them, as the library builds its models without normalization. Residual blocks are
post-activation basic blocks with a 1x1 conv + batch norm shortcut where the shape changes. The
optimizer is `torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)`, the loss the mean
cross-entropy.
Images are NCHW (PyTorch's default layout); bfloat16 runs under CPU autocast (bfloat16 convs
and matmuls, float32 parameters), as the library computes in bfloat16 with float32 parameters.

Only the benchmark imports this module: torch is not a dependency of the library.
"""

import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0


def conv_norm(in_channels: int, out_channels: int, kernel: int, stride: int, norm: str):
    """A conv padded by kernel // 2 (as the library pads), then batch norm ('batch', the conv
    without bias) or nothing ('none', the conv with a bias)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=norm == "none")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity())


class BasicBlock(nn.Module):
    """relu(conv-BN-relu-conv-BN(x) + shortcut(x)); the shortcut is the identity, or a strided
    1x1 conv + BN where the block changes the shape (the library's 'projection')."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        self.branch = nn.Sequential(
            conv_norm(in_channels, out_channels, 3, stride, norm),
            nn.ReLU(),
            conv_norm(out_channels, out_channels, 3, 1, norm),
        )
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = (
            conv_norm(in_channels, out_channels, 1, stride, norm) if reshapes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class Classifier(nn.Module):
    """`features`, then global average pooling and a linear head."""

    def __init__(self, features: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def residual_net(stem: list, stem_width: int, widths, blocks_per_stage, num_classes, norm):
    """`stem`, then stages of basic blocks, stride 2 at the first block of every stage but the
    first, then the classifier."""
    layers, channels = list(stem), stem_width
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels, width, stride, norm))
            channels = width
    return Classifier(nn.Sequential(*layers), channels, num_classes)


def resnet20(channels: int, num_classes: int, norm: str) -> nn.Module:
    """He et al.'s CIFAR ResNet-20: 3x3 stem with 16 channels, 3 stages of 3 blocks."""
    stem = [conv_norm(channels, 16, 3, 1, norm), nn.ReLU()]
    return residual_net(stem, 16, (16, 32, 64), (3, 3, 3), num_classes, norm)


def resnet18(channels: int, num_classes: int, norm: str) -> nn.Module:
    """The ImageNet ResNet-18: 7x7 stride-2 stem and 3x3 stride-2 max pool, 4 stages of 2."""
    stem = [conv_norm(channels, 64, 7, 2, norm), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    return residual_net(stem, 64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes, norm)


def cnn(channels: int, num_classes: int, norm: str) -> nn.Module:
    """The library's default CNN: stages of two conv-BN-relu (32, 64, 128 channels), the first
    conv of every stage but the first with stride 2."""
    layers = []
    for stage, width in enumerate((32, 64, 128)):
        for conv in range(2):
            stride = 2 if stage > 0 and conv == 0 else 1
            layers += [conv_norm(channels, width, 3, stride, norm), nn.ReLU()]
            channels = width
    return Classifier(nn.Sequential(*layers), channels, num_classes)


MODELS = {"resnet20": resnet20, "resnet18": resnet18, "cnn": cnn}


def use_all_cores() -> int:
    """One intra-op thread per core, as XLA's CPU client uses by default; returns the count."""
    torch.set_num_threads(os.cpu_count())
    return torch.get_num_threads()


class TorchPeer:
    """A PyTorch eager model and optimizer on a fixed random batch, with the interface of
    `library_step.LibraryStep`: `train(steps)` and `evaluate(steps)` time `steps` calls."""

    name = "torch"

    def __init__(
        self, model: str, *, batch_size: int, image_shape, num_classes: int, dtype: str, norm: str
    ):
        torch.manual_seed(SEED)
        height, width, channels = image_shape
        self.batch_size = batch_size
        self.model = MODELS[model](channels, num_classes, norm)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4
        )
        self.images = torch.randn(batch_size, channels, height, width)
        self.labels = torch.randint(0, num_classes, (batch_size,))
        self.bfloat16 = dtype == "bfloat16"

    def _precision(self):
        if self.bfloat16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def _train_step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._precision():
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()
        return loss

    def train(self, steps: int) -> tuple[float, float]:
        """Seconds for `steps` train steps, and the loss of the last one. Eager CPU ops finish
        before they return, so no wait is needed at the end."""
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            loss = self._train_step()
        return time.perf_counter() - start, loss.item()

    @torch.inference_mode()
    def evaluate(self, steps: int) -> float:
        """Seconds for `steps` eval steps: running statistics, the sums of the loss and of the
        correct predictions, as the library's eval step computes."""
        self.model.eval()
        start = time.perf_counter()
        for _ in range(steps):
            with self._precision():
                logits = self.model(self.images).float()
            F.cross_entropy(logits, self.labels, reduction="sum")
            (logits.argmax(-1) == self.labels).sum()
        elapsed = time.perf_counter() - start
        self.model.train()
        return elapsed


def matmul_flops_per_s(size: int, calls: int, repeats: int) -> float:
    """torch's float32 matmul rate, timed as `library_step.matmul_flops_per_s` times XLA's."""
    generator = torch.Generator().manual_seed(SEED)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    torch.matmul(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        rates.append(2 * size**3 * calls / (time.perf_counter() - start))
    return statistics.median(rates)
