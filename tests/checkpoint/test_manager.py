"""Damaged checkpoints, replayed through the real loop: a step that does not restore is set aside
(renamed, never deleted) with a one-line warning, and the run resumes from the newest step that
restores, bitwise as if nothing had happened; when none restores, one line and nothing moved."""

import json
import logging
import re
import shutil

import orbax.checkpoint as ocp
import pytest

from bnresearch.checkpoint import manager
from bnresearch.errors import UsageError
from bnresearch.train.loop import train_and_evaluate
from tests.train.runs import read_metrics, tiny_config

# Checkpoints at steps 6, 12 and 18, all kept.
OVERRIDES = {"train_duration": "18 steps", "eval_every": "6 steps", "checkpoint.every": "6 steps"}


def truncate_a_data_file(step_dir):
    """The largest array data file of the state, cut in half (a partial copy, a full disk)."""
    data = max(
        (p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def remove_the_state_item(step_dir):
    shutil.rmtree(step_dir / "state")


def remove_the_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


def files(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "work"
    assert train_and_evaluate(tiny_config(data_dir, **OVERRIDES), str(workdir)) == "done"
    return workdir


def crashed_copy(finished_run, workdir):
    """The finished run as if it had crashed after its last checkpoint."""
    shutil.copytree(finished_run, workdir)
    (workdir / "status.json").write_text(json.dumps({"status": "running", "step": 18}))
    return workdir


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (truncate_a_data_file, r"ValueError: (OUT_OF_RANGE|FAILED_PRECONDITION): Error reading"),
        (remove_the_state_item, r'KeyError: Item "state" was not found in the checkpoint'),
        (remove_the_metadata, r"ValueError: pytree structure error"),
    ],
)
def test_a_damaged_newest_step_is_set_aside_and_the_run_resumes_bitwise(
    finished_run, tmp_path, data_dir, caplog, damage, reason
):
    workdir = crashed_copy(finished_run, tmp_path / "work")
    checkpoints = workdir / "checkpoints"
    damage(checkpoints / "18")
    damaged_files = files(checkpoints / "18")
    with caplog.at_level(logging.INFO, logger="bnresearch"):
        assert train_and_evaluate(tiny_config(data_dir, **OVERRIDES), str(workdir)) == "done"

    [set_aside] = checkpoints.glob("damaged-18-*")
    assert files(set_aside) == damaged_files
    [warning] = warnings_of(caplog)
    assert "\n" not in warning
    assert warning.startswith("the checkpoint at step 18 does not restore (")
    assert warning.endswith(f"): set aside as {set_aside}")
    assert re.search(reason, warning), warning
    assert "resumed from the checkpoint at step 12" in caplog.text
    # Step 18 was saved again under its own name, and the set-aside copy is not a step to orbax.
    assert ocp.CheckpointManager(checkpoints).all_steps() == [6, 12, 18]
    assert read_metrics(workdir) == read_metrics(finished_run)


def test_when_no_step_restores_one_line_says_why_and_nothing_moves(
    finished_run, tmp_path, data_dir
):
    workdir = crashed_copy(finished_run, tmp_path / "work")
    checkpoints = workdir / "checkpoints"
    truncate_a_data_file(checkpoints / "18")
    remove_the_state_item(checkpoints / "12")
    remove_the_metadata(checkpoints / "6")
    before = files(checkpoints)
    with pytest.raises(UsageError) as raised:
        train_and_evaluate(tiny_config(data_dir, **OVERRIDES), str(workdir))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {checkpoints} restores (step 18: ValueError: ")
    assert '; step 12: KeyError: Item "state" was not found' in message
    assert "; step 6: ValueError: pytree structure error" in message
    assert f"move {checkpoints} away to start afresh" in message
    assert files(checkpoints) == before


def test_an_error_that_is_not_damage_propagates_and_renames_nothing(
    finished_run, tmp_path, data_dir, monkeypatch
):
    # A bug in the restore (a TypeError) says nothing about the files: it keeps its traceback.
    workdir = crashed_copy(finished_run, tmp_path / "work")
    before = files(workdir / "checkpoints")

    def buggy_restore(self, step, abstract_state, data_iterator):
        raise TypeError("a bug")

    monkeypatch.setattr(manager.Checkpointer, "_restore", buggy_restore)
    with pytest.raises(TypeError, match="a bug"):
        train_and_evaluate(tiny_config(data_dir, **OVERRIDES), str(workdir))
    assert files(workdir / "checkpoints") == before
