"""Fine-tuning from another run's checkpoint, end to end on digits: what is loaded, re-initialised
and frozen, what is refused before the workdir exists, the source left untouched, exact resume;
and re-estimating a finished run's statistics on their own."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.train.loop import train_and_evaluate
from bnresearch.train.reestimate_run import reestimate_run
from tests.train.runs import StopAt, final_state, read_metrics, tiny_config

SOURCE = {"train_duration": "12 steps", "checkpoint.every": "6 steps", "eval_every": "12 steps"}
# Three of the ten digits: the classifier's shape differs from the source's (10 classes).
FINE_TUNE = {
    "train_duration": "12 steps",
    "checkpoint.every": "6 steps",
    "eval_every": "12 steps",
    "dataset.classes": (7, 8, 9),
}


def files_of(directory):
    """Every file under `directory` with its size and modification time."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in pathlib.Path(directory).rglob("*")
    }


def leaves_under(tree, prefix=""):
    """{path: array} of every leaf of a restored pytree, paths as 'prefix/key/...'."""
    return {
        "/".join(
            [prefix] * bool(prefix) + [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        ): np.asarray(value)
        for path, value in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("source") / "work"
    assert train_and_evaluate(tiny_config(data_dir, **SOURCE), str(workdir)) == "done"
    return workdir


def fine_tune_config(data_dir, source, **overrides):
    return tiny_config(data_dir, **{**FINE_TUNE, "init_from.workdir": str(source), **overrides})


@pytest.fixture(scope="module")
def linear_probe(tmp_path_factory, data_dir, source):
    """A linear probe with the running statistics frozen, the source's files listed before."""
    before = files_of(source)
    workdir = tmp_path_factory.mktemp("probe") / "work"
    config = fine_tune_config(
        data_dir, source, **{"fine_tune.train_last_stages": 1, "fine_tune.norm": "frozen"}
    )
    assert train_and_evaluate(config, str(workdir)) == "done"
    return workdir, before


def test_a_linear_probe_leaves_every_frozen_parameter_and_statistic_bitwise_unchanged(
    linear_probe, source
):
    workdir, _ = linear_probe
    start, end = final_state(source), final_state(workdir)
    body = {
        name: value
        for collection in ("params", "batch_stats")
        for name, value in leaves_under(start[collection], collection).items()
        if not name.startswith(f"{collection}/head")
    }
    assert len(body) > 20
    ours = {
        **leaves_under(end["params"], "params"),
        **leaves_under(end["batch_stats"], "batch_stats"),
    }
    for name, value in body.items():
        assert ours[name].tobytes() == value.tobytes(), name
    # The head trained: it is not what it was initialised to at any two checkpoints.
    assert not np.array_equal(end["params"]["head"]["kernel"], final_state_at(workdir, 6))


def final_state_at(workdir, step):
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")[
        "params"
    ]["head"]["kernel"]


def test_the_new_head_is_reinitialised_with_the_new_classes(linear_probe, source):
    workdir, _ = linear_probe
    source_kernel = final_state(source)["params"]["head"]["kernel"]
    kernel = final_state(workdir)["params"]["head"]["kernel"]
    assert source_kernel.shape == (source_kernel.shape[0], 10)
    assert kernel.shape == (source_kernel.shape[0], 3)
    record = json.loads((workdir / "transfer.json").read_text())["init_from"]
    assert list(record["reinitialized"]) == ["head"]
    assert "kernel: (128, 10) in the checkpoint, (128, 3) here" in record["reinitialized"]["head"]
    assert "head" not in record["loaded"] and "stage1_conv1" in record["loaded"]


def test_the_run_records_its_source_and_never_writes_there(linear_probe, source):
    workdir, before = linear_probe
    assert files_of(source) == before
    record = json.loads((workdir / "transfer.json").read_text())
    assert record["init_from"]["workdir"] == str(source)
    assert record["init_from"]["step"] == 12  # the latest
    assert record["init_from"]["config"] == json.loads((source / "config.json").read_text())
    assert record["norm"] == "frozen"
    assert "head" not in record["frozen"] and "stage3_conv2_norm" in record["frozen"]


def test_frozen_patterns_freeze_those_layers_and_the_others_train(tmp_path, data_dir, source):
    config = fine_tune_config(
        data_dir, source, **{"fine_tune.freeze": ("stage1_*",), "init_from.step": 6}
    )
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    start = leaves_under(final_state_of_step(source, 6)["params"])
    end = leaves_under(final_state(tmp_path)["params"])
    for name in start:
        if name.startswith("stage1_"):
            assert end[name].tobytes() == start[name].tobytes(), name
        elif name.startswith("stage3_"):
            assert not np.array_equal(end[name], start[name]), name


def final_state_of_step(workdir, step):
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Another architecture: the checkpoint lacks every layer of the MLP.
        ({"model.name": "mlp"}, "the checkpoint lacks .* of this model's layers"),
        ({"init_from.step": 7}, "init_from.step=7 is not a checkpoint of .*; its steps: 6, 12"),
        ({"fine_tune.freeze": ("stage9_*",)}, "fine_tune.freeze pattern 'stage9_\\*' names no"),
        ({"fine_tune.train_last_stages": 5}, "the model has 4 stages"),
        ({"model.norm": "group", "fine_tune.norm": "frozen"}, "has no running statistics"),
    ],
)
def test_a_misfit_is_refused_in_one_line_and_leaves_no_workdir(
    tmp_path, data_dir, source, overrides, message
):
    workdir = tmp_path / "work"
    with pytest.raises(UsageError, match=message) as refused:
        train_and_evaluate(fine_tune_config(data_dir, source, **overrides), str(workdir))
    assert "\n" not in str(refused.value)
    assert not workdir.exists()


def test_a_source_that_is_no_run_is_refused(tmp_path, data_dir):
    with pytest.raises(UsageError, match="is not a run's workdir"):
        train_and_evaluate(fine_tune_config(data_dir, tmp_path), str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_a_resumed_fine_tuning_run_is_bitwise_the_uninterrupted_one(
    tmp_path, data_dir, source, monkeypatch
):
    config = fine_tune_config(
        data_dir,
        source,
        **{
            "fine_tune.train_last_stages": 2,
            "fine_tune.norm": "reestimate",
            "fine_tune.head_lr": 3.0,
        },
    )
    assert train_and_evaluate(config, str(tmp_path / "once")) == "done"
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(8))
    assert train_and_evaluate(config, str(tmp_path / "twice")) == "preempted"
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    assert train_and_evaluate(config, str(tmp_path / "twice")) == "done"
    assert read_metrics(tmp_path / "twice") == read_metrics(tmp_path / "once")
    once, twice = final_state(tmp_path / "once"), final_state(tmp_path / "twice")
    for name, value in leaves_under(once).items():
        assert leaves_under(twice)[name].tobytes() == value.tobytes(), name


def test_reestimating_a_finished_run_on_its_own(source, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source, run)
    checkpoints = files_of(run / "checkpoints")
    record = reestimate_run(run)
    # Evaluated as saved, it is the run's own final evaluation, to the last bit.
    final = [m for m in read_metrics(run) if "eval/accuracy" in m][-1]
    assert record["as_saved"] == {key: final[key] for key in ("eval/loss", "eval/accuracy")}
    assert record["step"] == 12 and record["batch_size"] == 32
    assert 0 <= record["reestimated"]["eval/accuracy"] <= 1
    assert json.loads((run / "reestimated.json").read_text()) == record
    assert files_of(run / "checkpoints") == checkpoints


def test_reestimating_a_run_from_before_the_newer_fields(source, tmp_path):
    # A config.json written before the kit had mesh, sharding, init_from and fine_tune: those
    # fields read as their defaults, and the run evaluates as saved, as before.
    run = tmp_path / "run"
    shutil.copytree(source, run)
    stored = json.loads((run / "config.json").read_text())
    for field in ("mesh", "sharding", "init_from", "fine_tune"):
        del stored[field]
    (run / "config.json").write_text(json.dumps(stored))
    record = reestimate_run(run)
    final = [m for m in read_metrics(run) if "eval/accuracy" in m][-1]
    assert record["as_saved"] == {key: final[key] for key in ("eval/loss", "eval/accuracy")}
