"""Bad input through the real command line: one clear line, a non-zero exit, nothing trained."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def launch(workdir, *flags):
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={REPO}/configs/quickstart.py",
        f"--workdir={workdir}",
        *flags,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.dataset.name=cifar11"], "unknown dataset 'cifar11'"),
        (["--config.model.name=resnet21"], "unknown model 'resnet21'; valid models: mlp, cnn,"),
        (["--config.model.norm=batchnorm"], "unknown normalization 'batchnorm'"),
        (["--config.optimizer.name=adamax"], "unknown optimizer.name 'adamax'"),
        (["--config.lr_scaling=cubic"], "unknown lr_scaling 'cubic'"),
        (["--config.batch_size=0"], "batch_size=0 must be a positive whole number"),
        (["--config.train_duration=10"], "bad duration '10'"),
        (
            [
                "--config.batch_size_schedule.epochs=(10, 10)",
                "--config.batch_size_schedule.batch_sizes=(80, 400)",
            ],
            "batch_size_schedule.epochs must increase from above 0, got 10 after 10",
        ),
        (
            ["--config.batch_size_schedule.epochs=(10, 20)"],
            "batch_size_schedule has 2 epochs but 0 batch_sizes",
        ),
        (
            ["--config.schedule.warmup_rule=legw", "--config.schedule.warmup=5 epochs"],
            "schedule.warmup_rule=legw goes with lr_scaling='sqrt'",
        ),
        (
            ["--config.optimizer.name=adamw", "--config.optimizer.weight_decay_style=coupled"],
            "valid for adamw: auto, decoupled",
        ),
        # Values that train to a meaningless result rather than fail: refused before anything runs.
        (["--config.base_lr=nan"], "base_lr=nan must be a positive, finite learning rate"),
        (["--config.base_lr=-0.1"], "base_lr=-0.1 must be a positive, finite learning rate"),
        (["--config.optimizer.momentum=1.0"], "optimizer.momentum=1.0 must lie in [0, 1)"),
        # mixup and CutMix mix the finished batch: last, and one of them.
        (
            ["--config.dataset.augment=mixup,crop"],
            "augment 'mixup,crop' puts 'mixup' before 'crop'",
        ),
        (
            ["--config.dataset.augment=crop,mixup,cutmix"],
            "names 2 mixings (mixup, cutmix); use one of them",
        ),
        (
            [
                "--config.dataset.augment=crop,cutmix",
                "--config.dataset.augment_kwargs.cutmix.alpha=0.0",
            ],
            "augment_kwargs.cutmix.alpha=0.0 must be a positive number",
        ),
    ],
)
def test_bad_config_values_fail_in_one_line(tmp_path, data_dir, flags, message):
    result = launch(tmp_path / "w", f"--config.dataset.data_dir={data_dir}", *flags)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line, result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.batch_sise=64",
            "unknown config field 'batch_sise'; fields of the config: "
            "activation_stats, base_batch_size, base_lr, batch_augmentation, batch_size,",
        ),
        (
            "--config.model.norm_kwargs.num_group=8",
            "unknown config field 'model.norm_kwargs.num_group'; "
            "fields of model.norm_kwargs: data_dependent_init, dmax,",
        ),
        (
            "--config.dataset.augment=crop,cutuot",
            "unknown augmentation 'cutuot' in augment 'crop,cutuot'; valid: auto, none, crop,",
        ),
    ],
)
def test_a_misspelt_override_names_the_field_and_the_valid_ones(tmp_path, override, message):
    result = launch(tmp_path / "w", override)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "w").exists()


def test_an_unknown_config_arg_is_named(tmp_path):
    command = [
        sys.executable,
        str(REPO / "launch.py"),
        f"--config={REPO}/configs/quickstart.py:modle=cnn",
        f"--workdir={tmp_path}/w",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "unknown config arg 'modle'; valid: activation, dataset, model, norm" in result.stderr


def test_the_sweeps_command_runs_the_installed_package_from_any_directory(tmp_path):
    """Sweep points run `python -m bnresearch.launch`: the same command line as launch.py, and
    from a directory without the checkout on the path, as the package is installed."""
    result = subprocess.run(
        [sys.executable, "-m", "bnresearch.launch", f"--workdir={tmp_path}", "--status"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path} holds neither a sweep (sweep.json) nor a run (config.json)\n"
    )
