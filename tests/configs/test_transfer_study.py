"""configs/transfer.py, the transfer study: every sweep point applies to the locked config and
passes the preflight check (no data or checkpoint is read), the points are the regimes, modes and
sizes experiments/transfer/README.md describes, and bad args are refused."""

import pytest

from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.sweep import grid
from bnresearch.train import transfer as transfer_module
from bnresearch.train.preflight import check_config
from configs import transfer


def test_every_point_applies_and_passes_the_config_check(monkeypatch):
    # The source's checkpoint steps are what the check reads of it.
    monkeypatch.setattr(transfer_module, "source_steps", lambda workdir: [468])
    points = transfer.get_sweep("source=runs/x/pretrain")
    labels = [point[grid.LABEL] for point in points[::2]]
    expected = [f"scratch,n={n}" for n in (20, 100, 500)]
    for regime, modes in (
        ("linear", ("adapt", "frozen", "reestimate")),
        ("last_stage", ("adapt",)),
        ("full", ("adapt", "frozen", "reestimate")),
    ):
        expected += [f"{regime},norm={mode},n={n}" for mode in modes for n in (20, 100, 500)]
    assert labels == expected and len(points) == 2 * len(expected)
    for point in points:
        config = transfer.get_config("source=runs/x/pretrain")
        config.lock()
        set_fields(config, {k: v for k, v in point.items() if k != grid.LABEL})
        check_config(config)
        regime = point[grid.LABEL].split(",")[0]
        assert config.init_from.workdir == ("" if regime == "scratch" else "runs/x/pretrain")
        stages = {"scratch": 0, "linear": 1, "last_stage": 2, "full": 0}[regime]
        assert config.fine_tune.train_last_stages == stages
        assert config.dataset.classes == (5, 6, 7, 8, 9)


def test_pretraining_sees_the_other_classes():
    config = transfer.get_config("stage=pretrain")
    assert config.dataset.classes == (0, 1, 2, 3, 4) and not config.init_from.workdir
    check_config(config)


def test_a_bad_arg_is_refused():
    with pytest.raises(UsageError, match="config arg regime='probe'; valid: scratch, linear"):
        transfer.get_config("regime=probe")
