"""The bnresearch side of the benchmark: a model's train and eval steps built and compiled by the
library's own code, as `launch.py` builds them, then timed on a fixed random batch.

Only the data differ from a real run: random images of the model's input shape stand in for a
dataset (a step's cost does not depend on pixel values). Everything else goes through the
library: the config schema (`base_config`) and its checks (`preflight.check_config`), the plan
(`make_plan`), the model (`model_from_config` with the facts preflight passes), the lr schedule
and the optimizer, the train state's layout (`preflight.resolve`) and `loop.compile_steps`,
which jits `steps.train_step` with the state donated, ahead of time.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from bnresearch import data
from bnresearch.config.defaults import base_config
from bnresearch.data.augment import Augmentation, make_augmentation
from bnresearch.parallel.mesh import global_batch, make_mesh
from bnresearch.train import loop
from bnresearch.train.preflight import Setup, check_config, resolve

# The plan counts epochs over this many training images; with a constant lr nothing measured
# depends on it (CIFAR-10's training split).
NUM_TRAIN = 50_000
SEED = 0


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A benchmarked model: its config name and options, and the data it is run on."""

    name: str  # the key of --models
    model: str  # config.model.name
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    default_batch_size: int
    options: dict = dataclasses.field(default_factory=dict)  # config.model.options


MODEL_CASES = {
    # Projection shortcuts (1x1 conv + BN where the shape changes): the PyTorch peer's
    # architecture; the library's default is the paper's parameter-free 'pad' shortcut.
    "resnet20": ModelCase("resnet20", "resnet20", (32, 32, 3), 10, 128, {"shortcut": "projection"}),
    # The quickstart's CNN on 8x8 digits at the quickstart's batch (configs/quickstart.py).
    "cnn": ModelCase("cnn", "cnn", (8, 8, 1), 10, 64),
    # The ImageNet ResNet-18 with its default (7x7 stride-2, max-pool) stem on 64x64 images.
    "resnet18": ModelCase("resnet18", "resnet18", (64, 64, 3), 10, 128),
}


def model_names(text: str, parser) -> list[str]:
    """The models of a comma-separated `--models` value; `parser.error` (exit 2) naming the
    valid ones for an unknown name or none."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in MODEL_CASES]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; valid: {', '.join(MODEL_CASES)}")
    return names


def benchmark_config(case: ModelCase, batch_size: int, compute_dtype: str, norm: str = "batch"):
    """A run's config for `case`, with the peer's optimizer: SGD with momentum 0.9, lr 0.1 at
    every batch size (constant), coupled weight decay 5e-4 on all parameters. `norm` is the
    model's normalization: 'none' (no normalization; convs then get a bias) measures what the
    convolutions and the rest of the step cost without it."""
    config = base_config()
    config.model.name = case.model
    config.model.norm = norm
    for option, value in case.options.items():
        config.model.options[option] = value
    config.batch_size = config.eval_batch_size = batch_size
    # The lr rule scales base_lr by batch_size / base_batch_size: equal, so the lr is 0.1.
    config.base_batch_size = batch_size
    config.base_lr = 0.1
    config.schedule.decay = "constant"
    config.optimizer.name = "momentum"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.weight_decay_style = "coupled"
    config.compute_dtype = compute_dtype
    check_config(config)
    return config


@dataclasses.dataclass(frozen=True)
class RandomData:
    """In place of `data.Dataset` for `resolve` (the state's layout) and `loop.compile_steps`,
    which read only its facts (`info`) and whether its batches are mixed (`augmentation`)."""

    info: data.DatasetInfo
    augmentation: Augmentation

    @classmethod
    def like(cls, case: ModelCase, num_test: int) -> "RandomData":
        """Random images of `case`'s shape: not augmented, not mixed."""
        info = data.DatasetInfo(
            name="random",
            num_classes=case.num_classes,
            image_shape=case.image_shape,
            num_train=NUM_TRAIN,
            num_test=num_test,
        )
        return cls(info, make_augmentation("none", crop_padding=0, image_size=case.image_shape[0]))


def build_setup(case: ModelCase, batch_size: int, compute_dtype: str, norm: str = "batch") -> Setup:
    """What `preflight` resolves for a run of `case`, the dataset's facts taken from `case`."""
    config = benchmark_config(case, batch_size, compute_dtype, norm)
    return resolve(config, RandomData.like(case, batch_size), make_mesh())


def random_batch(case: ModelCase, batch_size: int, mesh, *, with_mask: bool = False) -> dict:
    """A fixed batch of standard-normal images and uniform labels, sharded as the loop shards."""
    rng = np.random.default_rng(SEED)
    batch = {
        "image": rng.standard_normal((batch_size, *case.image_shape), dtype=np.float32),
        "label": rng.integers(0, case.num_classes, batch_size, dtype=np.int32),
    }
    if with_mask:  # the eval step sums over the real (mask 1) examples of a padded batch
        batch["mask"] = np.ones(batch_size, np.float32)
    return global_batch(batch, mesh)


def _flops(compiled) -> float:
    """XLA's FLOP count of one call of `compiled` (older jax returns a list per computation)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def _memory(compiled) -> dict:
    """The compiled step's buffers in bytes. Donated outputs reuse the argument buffers
    (`alias`), so a step holds argument + output - alias + temp bytes at its peak."""
    stats = compiled.memory_analysis()
    sizes = {
        key: int(getattr(stats, f"{key}_size_in_bytes"))
        for key in ("argument", "output", "alias", "temp")
    }
    sizes["step"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    return sizes


class LibraryStep:
    """bnresearch's compiled train and eval steps for one model, batch size and compute dtype.

    Construction compiles (timed); `train(steps)` and `evaluate(steps)` time `steps` calls and
    wait for the results once, at the end, so the host dispatches ahead as in a real run.
    """

    name = "bnresearch"

    def __init__(self, case: ModelCase, batch_size: int, compute_dtype: str, norm: str = "batch"):
        self.batch_size = batch_size
        setup = build_setup(case, batch_size, compute_dtype, norm)
        start = time.perf_counter()
        compiled = loop.compile_steps(setup, start_step=0)
        self.compile_s = time.perf_counter() - start
        self._train = compiled.train[batch_size]
        self._batch = random_batch(case, batch_size, setup.mesh)
        self._state = self._init_state(setup)
        eval_batch = random_batch(case, batch_size, setup.mesh, with_mask=True)
        start = time.perf_counter()
        self._eval = compiled.eval.lower(self._state, eval_batch).compile()
        self.eval_compile_s = time.perf_counter() - start
        self._eval_batch = eval_batch
        self.flops_per_step = _flops(self._train)
        self.memory = _memory(self._train)

    def _init_state(self, setup: Setup):
        # As loop.restore_or_init: compiled without backend optimization, since it runs once.
        key = jax.random.PRNGKey(SEED)
        init_once = (
            jax.jit(setup.init, out_shardings=setup.layout.sharding)
            .lower(key, self._batch["image"])
            .compile({**setup.compiler_options, "xla_backend_optimization_level": 0})
        )
        return init_once(key, self._batch["image"])

    def parameter_count(self) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(self._state.params))

    def train(self, steps: int) -> tuple[float, float]:
        """Seconds for `steps` train steps, and the loss of the last one."""
        start = time.perf_counter()
        for _ in range(steps):
            self._state, metrics = self._train(self._state, self._batch)
        jax.block_until_ready((self._state, metrics))
        return time.perf_counter() - start, float(metrics["loss"])

    def evaluate(self, steps: int) -> float:
        """Seconds for `steps` eval steps on one batch."""
        start = time.perf_counter()
        sums = [self._eval(self._state, self._eval_batch) for _ in range(steps)]
        jax.block_until_ready(sums)
        return time.perf_counter() - start


def matmul_flops_per_s(size: int, calls: int, repeats: int) -> float:
    """The machine's float32 matmul rate through XLA: a jitted (size x size) @ (size x size),
    `calls` calls per repeat with one wait at the end, the median over `repeats`."""
    keys = jax.random.split(jax.random.PRNGKey(SEED))
    a, b = (jax.random.normal(key, (size, size), jnp.float32) for key in keys)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    matmul(a, b).block_until_ready()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        products = [matmul(a, b) for _ in range(calls)]
        jax.block_until_ready(products)
        rates.append(2 * size**3 * calls / (time.perf_counter() - start))
    return float(np.median(rates))
