"""The recipe configs: each one's fields against the numbers of its paper, typed here from the
papers; each arg refused in one line naming the valid values; and each recipe trained end to end
for two steps on a tiny image folder, through train_and_evaluate, with only its size reduced."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from bnresearch.errors import UsageError
from bnresearch.optim.schedules import make_schedule
from bnresearch.train.plan import make_plan
from configs import cifar_resnet, cifar_wrn, imagenet_inception, imagenet_resnet50
from tests.data.datatest_utils import write_image_folder

CIFAR_TRAIN, IMAGENET_TRAIN = 50_000, 1_281_167
REPO = pathlib.Path(__file__).resolve().parents[2]
MODULES = {
    "cifar_resnet": cifar_resnet,
    "cifar_wrn": cifar_wrn,
    "imagenet_resnet50": imagenet_resnet50,
    "imagenet_inception": imagenet_inception,
}


def lr_at(config, num_train, step):
    """The lr the kit applies at update `step` (counted from 0) of `config`'s plan."""
    return float(make_schedule(make_plan(config, num_train).schedule)(step))


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_is_he_et_al_section_4_2(depth):
    config = cifar_resnet.get_config(f"depth={depth}")
    assert config.model.name == f"resnet{depth}" and config.model.options.shortcut == "pad"
    assert (config.batch_size, config.optimizer.name, config.optimizer.momentum) == (
        128,
        "momentum",
        0.9,
    )
    assert config.optimizer.weight_decay == 1e-4 and config.model.norm == "batch"
    assert (config.dataset.augment, config.dataset.crop_padding) == ("crop_flip", 4)
    plan = make_plan(config, CIFAR_TRAIN)
    assert plan.total_steps == 64_000
    # lr 0.1, /10 at 32k and 48k iterations (ResNet-110: after the warmup of 400 steps).
    start = 400 if depth == 110 else 0
    for step, lr in [(start, 0.1), (31_999, 0.1), (32_000, 0.01), (47_999, 0.01), (48_000, 1e-3)]:
        assert lr_at(config, CIFAR_TRAIN, step) == pytest.approx(lr, rel=1e-6)
    assert lr_at(config, CIFAR_TRAIN, 0) == pytest.approx(0.1 / 400 if depth == 110 else 0.1)


@pytest.mark.parametrize("dropout, rate", [("false", 0.0), ("true", 0.3)])
def test_cifar_wrn_is_zagoruyko_and_komodakis_wrn_28_10(dropout, rate):
    config = cifar_wrn.get_config(f"dropout={dropout}")
    assert (config.model.name, config.model.options.depth, config.model.options.width) == (
        "wrn",
        28,
        10,
    )
    assert config.model.dropout.hidden == rate
    assert (config.optimizer.name, config.optimizer.momentum) == ("nesterov", 0.9)
    assert config.optimizer.weight_decay == 5e-4 and config.batch_size == 128
    steps_per_epoch = CIFAR_TRAIN // 128
    assert make_plan(config, CIFAR_TRAIN).total_steps == 200 * steps_per_epoch
    # lr 0.1, x0.2 at epochs 60, 120 and 160.
    for epoch, lr in [(0, 0.1), (60, 0.02), (120, 0.004), (160, 0.0008)]:
        boundary = epoch * steps_per_epoch
        assert lr_at(config, CIFAR_TRAIN, boundary) == pytest.approx(lr, rel=1e-6)
        if epoch:
            before = lr_at(config, CIFAR_TRAIN, boundary - 1)
            assert before == pytest.approx(lr / 0.2, rel=1e-6)


@pytest.mark.parametrize("batch_size", [256, 8192])
def test_imagenet_resnet50_is_goyal_et_al(batch_size):
    config = imagenet_resnet50.get_config(f"batch_size={batch_size}")
    assert config.model.name == "resnet50" and config.model.options.zero_init_residual
    assert (config.model.norm, config.model.norm_kwargs.virtual_batch_size) == ("ghost_batch", 32)
    assert (config.optimizer.name, config.optimizer.momentum) == ("nesterov", 0.9)
    assert config.optimizer.weight_decay == 1e-4
    assert config.optimizer.weight_decay_on == "kernels"  # no decay on BN's gamma and beta
    assert (config.dataset.augment, config.dataset.image_size) == ("resized_crop_flip", 224)
    steps_per_epoch = IMAGENET_TRAIN // batch_size
    assert make_plan(config, IMAGENET_TRAIN).total_steps == 90 * steps_per_epoch
    peak = 0.1 * batch_size / 256
    # Warmup over 5 epochs for B > 256 (at 256 the paper's ramp is constant), then x0.1 at
    # epochs 30, 60 and 80.
    warmup = 5 * steps_per_epoch if batch_size > 256 else 0
    assert lr_at(config, IMAGENET_TRAIN, 0) == pytest.approx(peak / max(warmup, 1), rel=1e-6)
    for epoch, factor in [(5, 1.0), (30, 0.1), (60, 0.01), (80, 0.001)]:
        step = epoch * steps_per_epoch
        assert lr_at(config, IMAGENET_TRAIN, step) == pytest.approx(peak * factor, rel=1e-5)
        assert lr_at(config, IMAGENET_TRAIN, step - 1) == pytest.approx(
            peak * factor * (1 if epoch == 5 else 10), rel=1e-5
        )


def test_imagenet_inception_has_the_v3_recipe_elements():
    config = imagenet_inception.get_config()
    assert config.model.name == "inception"
    assert (config.optimizer.name, config.optimizer.rho, config.optimizer.eps) == (
        "rmsprop",
        0.9,
        1.0,
    )
    assert config.optimizer.grad_clip_norm == 2.0 and config.label_smoothing == 0.1
    assert (config.dataset.augment, config.dataset.image_size) == ("resized_crop_flip", 299)
    assert config.batch_size == 32
    steps_per_epoch = IMAGENET_TRAIN // 32
    assert make_plan(config, IMAGENET_TRAIN).total_steps == 100 * steps_per_epoch
    # lr 0.045 x 0.94 every two epochs, in steps.
    for epoch in (0, 2, 10, 98):
        step = epoch * steps_per_epoch
        expected = 0.045 * 0.94 ** (epoch // 2)
        assert lr_at(config, IMAGENET_TRAIN, step) == pytest.approx(expected, rel=1e-5)
        assert lr_at(config, IMAGENET_TRAIN, step + 2 * steps_per_epoch - 1) == pytest.approx(
            expected, rel=1e-5
        )


@pytest.mark.parametrize(
    "module, arg, message",
    [
        (cifar_resnet, "depth=50", "unknown config arg depth=50; valid: 20, 32, 44, 56, 110"),
        (
            cifar_resnet,
            "dataset=mnist",
            "unknown config arg dataset='mnist'; valid: cifar10, cifar100, imagefolder:PATH",
        ),
        (cifar_resnet, "norm=bn", "unknown config arg norm='bn'; valid: batch, ghost_batch, "),
        (
            cifar_wrn,
            "dataset=imagenet2012",
            "unknown config arg dataset='imagenet2012'; valid: cifar10, cifar100, imagefolder:PATH",
        ),
        (
            imagenet_resnet50,
            "dataset=cifar10",
            "unknown config arg dataset='cifar10'; valid: imagenet2012, imagefolder:PATH",
        ),
        (
            imagenet_inception,
            "dataset=cifar10",
            "unknown config arg dataset='cifar10'; valid: imagenet2012, imagefolder:PATH",
        ),
        (cifar_resnet, "width=2", "unknown config arg 'width'; valid: dataset, depth, norm"),
    ],
)
def test_a_bad_arg_is_refused_in_one_line_naming_the_valid_values(module, arg, message):
    with pytest.raises(UsageError) as refused:
        module.get_config(arg)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_every_norm_of_the_kit_is_accepted():
    from bnresearch.layers import NORMALIZATIONS

    for norm in NORMALIZATIONS:
        assert cifar_resnet.get_config(f"norm={norm}").model.norm == norm


# 12 classes, so that top-5 is computed too; 16 x 16 images, one per class in each split.
CLASSES = [f"class{i:02d}" for i in range(12)]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_images")
    write_image_folder(root, CLASSES, {"train": 1, "test": 1}, (16, 16))
    return root


# The size of each run, the only fields overridden: batch 8, 2 steps.
TINY = {
    "batch_size": 8,
    "eval_batch_size": 8,
    "train_duration": "2 steps",
    "log_every": "1 steps",
    "eval_every": "0 steps",
    "checkpoint.every": "0 steps",
}
# recipe -> (its arg, the overrides that shrink its network or images, its lr at batch 8 from the
# paper: base lr x 8 / its base batch).
RECIPES = {
    "cifar_resnet": ("depth=20", {}, 0.1 * 8 / 128),
    "cifar_wrn": ("depth=10,width=1,dropout", {}, 0.1 * 8 / 128),
    "imagenet_resnet50": (
        "batch_size=256",
        {"dataset.image_size": 32, "model.norm_kwargs.virtual_batch_size": 8},
        0.1 * 8 / 256,
    ),
    "imagenet_inception": (
        "",
        {"dataset.image_size": 16, "model.options.base_width": 4},
        0.045 * 8 / 32,
    ),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_trains_and_evaluates_end_to_end(recipe, image_folder, data_dir, tmp_path):
    """Through launch.py as a user runs it, on one device: the recipe's sharding is that of
    every run, and one device compiles ResNet-50 in a fraction of the time eight simulated ones
    take (the sharded runs are tested on the quickstart's CNN)."""
    arg, shrink, lr = RECIPES[recipe]
    arg = ",".join(filter(None, [arg, f"dataset=imagefolder:{image_folder}"]))
    overrides = {**TINY, **shrink, "dataset.data_dir": data_dir}
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={REPO}/configs/{recipe}.py:{arg}",
        f"--workdir={tmp_path}",
        *(f"--config.{field}={value}" for field, value in overrides.items()),
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    recipe_config = MODULES[recipe].get_config(arg)
    # Only the size was overridden: the recipe's optimizer, schedule and norm are what ran.
    for block in ("optimizer", "schedule"):
        assert config[block] == json.loads(recipe_config[block].to_json())
    assert config["model"]["norm"] == recipe_config.model.norm
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/lr" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert train[0]["train/lr"] == pytest.approx(lr, rel=1e-6)
    assert all(math.isfinite(r["train/loss"]) for r in train)
    (final,) = [r for r in records if "eval/accuracy" in r]
    # One test image per class: accuracies are multiples of 1/12, top-5 at least top-1.
    assert final["step"] == 2 and math.isfinite(final["eval/loss"])
    assert 0 <= final["eval/accuracy"] <= final["eval/top5_accuracy"] <= 1
    assert round(final["eval/top5_accuracy"] * 12, 4) % 1 == 0
