"""Sweep expansion without running anything: grid helpers, names, checks, command lines."""

import json
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from bnresearch.errors import UsageError
from bnresearch.report.naming import short_labels, unique_names
from bnresearch.report.sweep_file import Point
from bnresearch.sweep import grid
from bnresearch.sweep.spec import (
    check_override,
    claim,
    expand,
    flag_text,
    group_points,
    point_command,
    population_command,
)
from tests.sweep import tiny_sweep

TINY = str(pathlib.Path(tiny_sweep.__file__))
REPO = pathlib.Path(__file__).resolve().parents[2]


def locked_config():
    config = tiny_sweep.get_config()
    config.lock()
    return config


def test_product_varies_the_last_grid_fastest():
    points = grid.product(grid.axis("model.norm", ["batch", "group"]), grid.seeds(2, start=5))
    assert points == [
        {"model.norm": "batch", "seed": 5},
        {"model.norm": "batch", "seed": 6},
        {"model.norm": "group", "seed": 5},
        {"model.norm": "group", "seed": 6},
    ]


def test_zip_pairs_and_hand_written_lists_compose():
    scaled = grid.zip(grid.axis("batch_size", [32, 64]), grid.axis("base_lr", [0.1, 0.2]))
    variants = [{"model.norm": "batch"}, {"model.norm": "group", "model.norm_kwargs.groups": 8}]
    points = grid.product(variants, scaled)
    assert len(points) == 4
    assert points[3] == {
        "model.norm": "group",
        "model.norm_kwargs.groups": 8,
        "batch_size": 64,
        "base_lr": 0.2,
    }
    with pytest.raises(UsageError, match="one length"):
        grid.zip(grid.axis("a", [1, 2]), grid.axis("b", [1]))
    with pytest.raises(UsageError, match="both set seed"):
        grid.product(grid.seeds(2), grid.seeds(2))


def test_names_are_short_readable_safe_and_unique():
    assert short_labels(["model.norm", "model.norm_kwargs.num_groups", "seed"]) == {
        "model.norm": "norm",
        "model.norm_kwargs.num_groups": "num_groups",
        "seed": "seed",
    }
    assert short_labels(["model.name", "dataset.name"]) == {
        "model.name": "model.name",
        "dataset.name": "dataset.name",
    }
    names = unique_names(
        [
            {"model.norm": "group", "model.norm_kwargs.num_groups": 8, "seed": 1},
            {"train_duration": "2 epochs", "dataset.name": "imagefolder:/data/x"},
            {"train_duration": "2_epochs", "dataset.name": "imagefolder:/data/x"},
            {"schedule.boundaries": ("1 epochs", "3 epochs"), "optimizer.weight_decay": 1e-05},
            {},
        ]
    )
    assert names == [
        "norm=group,num_groups=8,seed=1",
        "train_duration=2_epochs,name=imagefolder__data_x",
        "train_duration=2_epochs,name=imagefolder__data_x~2",
        "boundaries=1_epochs+3_epochs,weight_decay=1e-05",
        "base",
    ]


def test_expansion_names_points_and_builds_their_commands(tmp_path):
    sweep = expand(TINY, None, locked_config(), {"dataset.data_dir": "/d"})
    assert [p.name for p in sweep.points] == [
        "batch_size=16,seed=0",
        "batch_size=16,seed=1",
        "batch_size=32,seed=0",
        "norm=none,base_lr=1e+30",
        "norm=no_such_norm",
    ]
    command = point_command(sweep, sweep.points[1], tmp_path)
    assert command[1:] == [
        "-m",
        "bnresearch.launch",
        f"--config={TINY}",
        f"--workdir={tmp_path / sweep.points[1].name}",
        "--config.dataset.data_dir=/d",
        "--config.batch_size=16",
        "--config.seed=1",
    ]
    assert (
        point_command(expand(TINY, "one", locked_config(), {}), sweep.points[0], tmp_path)[3]
        == f"--config={TINY}:one"
    )


def test_labeled_points_are_named_by_label_and_seed(tmp_path):
    config_file = tmp_path / "labeled.py"
    config_file.write_text(
        "from bnresearch.sweep import grid\n"
        "from tests.sweep.tiny_sweep import get_config\n"
        "def get_sweep(arg=None):\n"
        "    small = grid.labeled('small_init', {'model.norm_kwargs.scale_init': 0.1,\n"
        "                                        'optimizer.lr_multipliers.scale': 0.01})\n"
        "    return grid.product([{'model.norm': 'group'}, small], grid.seeds(2))\n"
    )
    sweep = expand(str(config_file), None, locked_config(), {})
    assert [p.name for p in sweep.points] == [
        "norm=group,seed=0",
        "norm=group,seed=1",
        "small_init,seed=0",
        "small_init,seed=1",
    ]
    assert sweep.points[2].label == "small_init"
    assert sweep.points[2].overrides == {
        "model.norm_kwargs.scale_init": 0.1,
        "optimizer.lr_multipliers.scale": 0.01,
        "seed": 0,
    }
    assert not [
        flag
        for flag in point_command(sweep, sweep.points[2], tmp_path)
        if "_label" in flag and flag.startswith("--config.")
    ]
    assert type(sweep).from_json(sweep.to_json()).points[2].label == "small_init"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.nrom", "group", "unknown config field 'model.nrom'; fields of model: activation,"),
        (
            "batch_sise",
            32,
            "unknown config field 'batch_sise'; fields of the config: "
            "activation_stats, base_batch_size",
        ),
        ("seed.x", 1, "unknown config field 'seed.x'; fields of seed: (none: it is not a group)"),
        ("model", "x", "config field 'model' is a group"),
        ("batch_size", "32", "config field 'batch_size' takes an int, got '32'"),
        ("batch_size", 32.0, "takes an int"),
        ("base_lr", True, "takes a float"),
        ("model.norm", None, "takes a str, got None"),
    ],
)
def test_bad_overrides_are_refused(field, value, message):
    with pytest.raises(UsageError) as error:
        check_override(locked_config(), field, value)
    assert message in str(error.value)


def test_a_typo_in_a_sweep_is_refused_before_anything_is_written(tmp_path):
    module = tmp_path / "typo.py"
    module.write_text(
        pathlib.Path(TINY).read_text().replace('grid.axis("batch_size"', 'grid.axis("batch_sise"')
    )
    with pytest.raises(UsageError, match=r"sweep point 0 .*unknown config field 'batch_sise'"):
        expand(str(module), None, locked_config(), {})
    with pytest.raises(UsageError, match="conflicts with the sweep"):
        expand(TINY, None, locked_config(), {"seed": 3})


def test_override_text_parses_back_to_the_value():
    """What the points' command lines say is what their configs get, for every kind of field."""
    overrides = {
        "seed": 3,
        "base_lr": 0.1,
        "optimizer.eps": 1e-05,
        "dataset.name": "digits",
        "schedule.boundaries": ("1 epochs", "2 epochs"),
        "model.options.hidden_sizes": [8, 4],
    }
    config = locked_config()
    for field, value in overrides.items():
        check_override(config, field, value)
    argv = [
        "launch.py",
        f"--config={TINY}",
        *(f"--config.{k}={flag_text(v)}" for k, v in overrides.items()),
    ]
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    parsed = holder.value
    assert (parsed.seed, parsed.base_lr, parsed.optimizer.eps, parsed.dataset.name) == (
        3,
        0.1,
        1e-05,
        "digits",
    )
    assert parsed.schedule.boundaries == ("1 epochs", "2 epochs")
    assert parsed.model.options.hidden_sizes == (8, 4)


def test_claim_writes_sweep_json_and_refuses_another_sweep(tmp_path):
    sweep = expand(TINY, None, locked_config(), {})
    claim(sweep, tmp_path / "s")
    stored = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["overrides"] for p in stored["points"]][0] == {"batch_size": 16, "seed": 0}
    claim(sweep, tmp_path / "s")  # the same sweep again: accepted
    before = (tmp_path / "s" / "sweep.json").read_bytes()
    with pytest.raises(UsageError, match=r"holds another sweep \(points removed: batch_size="):
        claim(expand(TINY, "one", locked_config(), {}), tmp_path / "s")
    assert (tmp_path / "s" / "sweep.json").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no sweep.json"):
        claim(sweep, tmp_path / "other")


def test_the_sweep_parent_and_the_report_import_no_jax():
    code = (
        "import sys; import bnresearch.sweep.runner, bnresearch.sweep.local, "
        "bnresearch.sweep.slurm, bnresearch.sweep.status, bnresearch.report.make; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_report_imports_nothing_of_the_sweep():
    """One direction: the sweep writes the report; the report reads files (sweep.json too)."""
    code = (
        "import sys; import bnresearch.report.__main__; "
        "print(sorted(m for m in sys.modules if m.startswith('bnresearch.sweep')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_slurm_settings_come_from_the_config_module_and_are_checked(tmp_path):
    from bnresearch.sweep.slurm import check_settings
    from bnresearch.sweep.spec import module_settings

    module = tmp_path / "cluster.py"
    module.write_text(
        "def get_slurm(arg=None):\n    return {'partition': 'gpu', 'time': 60 if arg else 240}\n"
    )
    assert module_settings(str(module), "short", "get_slurm") == {"partition": "gpu", "time": 60}
    assert module_settings(TINY, None, "get_slurm") == {}
    check_settings("submitit_local", {"partition": "gpu", "mem_gb": 16, "options": "qos=high"})
    with pytest.raises(UsageError, match="unknown SLURM setting 'gpus'; valid: partition, time"):
        check_settings("submitit_local", {"gpus": 1})
    with pytest.raises(UsageError, match="SLURM setting time='4h' must be an int"):
        check_settings("submitit_local", {"time": "4h"})


def test_points_differing_only_in_member_fields_are_grouped_into_populations(tmp_path):
    sweep = expand(TINY, None, locked_config(), {"dataset.data_dir": "/d"})
    names = lambda groups: [[point.name for point in group] for group in groups]
    # Seeds: the two seeds of batch_size=16 train together; every other point alone.
    assert names(group_points(sweep, list(sweep.points), "seeds")) == [
        ["batch_size=16,seed=0", "batch_size=16,seed=1"],
        ["batch_size=32,seed=0"],
        ["norm=none,base_lr=1e+30"],
        ["norm=no_such_norm"],
    ]
    assert names(group_points(sweep, list(sweep.points), "off")) == [
        [point.name] for point in sweep.points
    ]
    command = population_command(sweep, sweep.points[:2], tmp_path)
    assert command[1:] == [
        "-m",
        "bnresearch.launch",
        f"--config={TINY}",
        f"--workdir={tmp_path.resolve()}",
        "--member=batch_size=16,seed=0",
        "--member=batch_size=16,seed=1",
        "--config.dataset.data_dir=/d",
    ]
    # Hyperparameters: points of one program that differ in their lr, optimizer numbers, layer
    # options (dropout rate, the normalization's epsilon) and seed group together; one whose
    # optimizer has another structure (no weight decay), that differs in a compiled constant
    # (the activation) or that cannot be a member (steps_per_call > 1) stays alone.
    points = [
        Point("a", {"seed": 0, "base_lr": 0.1}),
        Point("b", {"seed": 1, "base_lr": 0.3, "schedule.warmup": "2 steps"}),
        Point("c", {"seed": 0, "optimizer.weight_decay": 0.0}),
        Point("d", {"seed": 0, "steps_per_call": 2}),
        Point("e", {"seed": 1, "steps_per_call": 2}),
        Point("f", {"seed": 0, "optimizer.weight_decay": 1e-3, "optimizer.momentum": 0.5}),
        Point("g", {"seed": 0, "model.activation": "gelu"}),
        Point("h", {"seed": 1, "model.dropout.hidden": 0.1, "model.norm_kwargs.epsilon": 1e-3}),
    ]
    grouped = group_points(sweep, points, "hyperparameters")
    assert names(grouped) == [["a", "b", "f", "h"], ["c"], ["d"], ["e"], ["g"]]
    assert names(group_points(sweep, points, "seeds")) == [[p.name] for p in points]
