"""The report of a finished sweep against the metrics files it came from.

Reads the finished sweep of tests/conftest.py, which the sweep tests share.
"""

import csv
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bnresearch.report.make import make_report
from tests.sweep.sweeps import REPO

VARIANTS = {
    "batch_size=16": ["batch_size=16,seed=0", "batch_size=16,seed=1"],
    "batch_size=32": ["batch_size=32,seed=0"],
}
DIVERGED = "norm=none,base_lr=1e+30"
DIGITS_TRAIN_EXAMPLES = 1797 - 360  # scikit-learn's digits less our test split


def evals(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]


def read_csv(path):
    with path.open() as file:
        return {row["variant"]: row for row in csv.DictReader(file)}


def expected_row(workdir, points, target, batch_size):
    final = np.array([evals(workdir / p)[-1][1] for p in points])
    best = np.array([max(a for _, a in evals(workdir / p)) for p in points])
    reached = [next((s for s, a in evals(workdir / p) if a >= target), None) for p in points]
    reached = np.array([s for s in reached if s is not None], dtype=float)
    steps_per_epoch = DIGITS_TRAIN_EXAMPLES // batch_size
    wall = np.array(
        [json.loads((workdir / p / "status.json").read_text())["wall_time_s"] for p in points]
    )

    def std(values):  # over seeds, ddof=1; none for a single seed
        return values.std(ddof=1) if values.size > 1 else None

    return {
        "final_accuracy_mean": final.mean(),
        "final_accuracy_std": std(final),
        "best_accuracy_mean": best.mean(),
        "best_accuracy_std": std(best),
        "steps_to_target_mean": reached.mean() if reached.size else None,
        "steps_to_target_std": std(reached),
        # one batch size throughout, and an epoch of whole batches only
        "epochs_to_target_mean": (reached.mean() / steps_per_epoch if reached.size else None),
        "epochs_to_target_std": (None if std(reached) is None else std(reached) / steps_per_epoch),
        "reached_target": reached.size,
        "wall_time_s_mean": wall.mean(),
    }


def own_copy(finished_sweep, tmp_path):
    """The shared sweep copied: a regenerated report must not change what other tests read."""
    workdir = tmp_path / "tiny"
    shutil.copytree(finished_sweep[0], workdir)
    return workdir


def test_report_numbers_are_those_of_the_metrics_files(finished_sweep, tmp_path):
    workdir = own_copy(finished_sweep, tmp_path)
    # A target between the accuracies the runs reached, so some points reach it and some not.
    all_evals = [a for points in VARIANTS.values() for p in points for _, a in evals(workdir / p)]
    target = float(np.median(all_evals))
    result = subprocess.run(
        [sys.executable, "-m", "bnresearch.report", str(workdir), f"--target_accuracy={target}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = read_csv(workdir / "report.csv")
    assert list(rows) == [*VARIANTS, DIVERGED, "norm=no_such_norm"]
    for variant, points in VARIANTS.items():
        batch_size = int(variant.split("=")[1])
        row, expected = rows[variant], expected_row(workdir, points, target, batch_size)
        assert (row["points"], row["done"], row["diverged"]) == (str(len(points)),) * 2 + ("0",)
        assert int(row["batch_size"]) == batch_size
        for key, value in expected.items():
            if value is None:
                assert row[key] == ""
            else:
                assert float(row[key]) == pytest.approx(value, rel=1e-12), key
    failed = rows["norm=no_such_norm"]
    assert (failed["done"], failed["final_accuracy_mean"], failed["batch_size"]) == ("0", "", "32")
    diverged = rows[DIVERGED]  # counted, not averaged
    assert (diverged["points"], diverged["done"], diverged["diverged"]) == ("1", "0", "1")
    assert (diverged["final_accuracy_mean"], diverged["base_lr"]) == ("", "1e+30")
    # The table a terminal shows, and the markdown one, hold the same numbers.
    expected = expected_row(workdir, VARIANTS["batch_size=16"], target, 16)
    shown = f"{expected['final_accuracy_mean']:.4f} ± {expected['final_accuracy_std']:.4f}"
    assert shown in result.stdout
    markdown = (workdir / "report.md").read_text()
    assert f"| batch_size=16 | 2/2 | 0 | {shown} |" in markdown
    assert f"| {DIVERGED} | 0/1 | 1 |  |  |  |  |  |" in markdown
    assert re.search(rf"^{re.escape(DIVERGED)} +0/1 +1$", result.stdout, re.M)
    assert (
        f"Regenerate with `python -m bnresearch.report {workdir} "
        f"--target_accuracy={target!r}`." in markdown
    )


def test_report_figures_are_pngs_and_linked_from_the_markdown(finished_sweep, tmp_path):
    workdir = own_copy(finished_sweep, tmp_path)
    report = make_report(workdir)
    names = [path.name for path in report.files]
    assert names == ["report.md", "report.csv", "curves.png", "final_accuracy_vs_batch_size.png"]
    markdown = (workdir / "report.md").read_text()
    for name in names[2:]:
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown


def test_a_directory_without_a_sweep_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bnresearch.report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr == f"error: {tmp_path} holds no sweep.json: a report needs a sweep "
        "directory\n"
    )


def synthetic_sweep(directory, runs):
    """A claimed sweep of the tiny config, one point per entry of `runs` (seeds 0, 1, ...), whose
    run directories hold the given status.json and train losses, as launch.py leaves them."""
    from bnresearch.sweep import grid
    from bnresearch.sweep.spec import claim, expand
    from tests.sweep import tiny_sweep

    module = directory.parent / f"{directory.name}_sweep.py"
    module.write_text(
        "from bnresearch.sweep import grid\n"
        "from tests.sweep.tiny_sweep import get_config\n"
        f"def get_sweep(arg=None):\n    return grid.seeds({len(runs)})\n"
    )
    config = tiny_sweep.get_config()
    config.lock()
    sweep = expand(str(module), None, config, {})
    assert [p.overrides for p in sweep.points] == grid.seeds(len(runs))
    claim(sweep, directory)
    for point, (status, losses) in zip(sweep.points, runs):
        run_dir = directory / point.name
        run_dir.mkdir()
        (run_dir / "status.json").write_text(
            json.dumps(
                {"status": status, "step": len(losses), "total_steps": 6, "wall_time_s": 0.5}
            )
        )
        (run_dir / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"step": step, "train/loss": loss}) + "\n"
                for step, loss in enumerate(losses, 1)
            )
        )
    return sweep


def test_a_sweep_that_only_diverged_is_reported_and_has_finished(tmp_path, monkeypatch, capsys):
    from bnresearch.sweep.runner import launch_sweep

    # Both at their first step: no finite value to plot at all.
    sweep = synthetic_sweep(tmp_path / "s", [("diverged", [math.nan]), ("diverged", [math.inf])])
    monkeypatch.chdir(tmp_path)
    assert launch_sweep(sweep, tmp_path / "s") == 0  # nothing to run; both finished
    out = capsys.readouterr().out
    assert re.search(r"^base +0/2 +2$", out, re.M), out
    assert "all 2 points finished (2 diverged)" in out
    markdown = (tmp_path / "s" / "report.md").read_text()
    assert "| base | 0/2 | 2 |  |  |  |  |" in markdown
    # The directory relative to where the report ran, as the command to run there.
    assert "Regenerate with `python -m bnresearch.report s --target_accuracy=0.9`." in markdown
    assert (tmp_path / "s" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert read_csv(tmp_path / "s" / "report.csv")["base"]["diverged"] == "2"


def test_a_sweep_with_no_result_writes_no_report(tmp_path, capsys):
    from bnresearch.sweep.runner import _finish

    sweep = synthetic_sweep(tmp_path / "s", [("preempted", [2.3, 2.2]), ("failed", [])])
    assert _finish(sweep, tmp_path / "s", True, None) == 1
    out = capsys.readouterr().out
    assert "report" not in out and not (tmp_path / "s" / "report.md").exists()
    assert "1 preempted, 1 failed of 2 points; status: " in out
    # Asked for anyway, the report shows the two points, neither finished.
    make_report(tmp_path / "s")
    assert "| base | 0/2 | 0 |" in (tmp_path / "s" / "report.md").read_text()


def test_epochs_to_target_follow_the_logged_epochs_across_a_batch_size_change(tmp_path):
    from bnresearch.report.runs import summarize_run

    # 10 steps of 0.1 epoch (batch B), then steps of 0.5 epoch (batch 5B), logged every 2 steps;
    # eval accuracy first reaches 0.9 at step 13, an odd step: between logged epochs 2.0 and 3.0.
    epoch = {step: 0.1 * min(step, 10) + 0.5 * max(step - 10, 0) for step in range(1, 17)}
    records = [{"step": s, "train/loss": 1.0, "train/epoch": epoch[s]} for s in range(2, 17, 2)]
    records += [{"step": s, "eval/accuracy": a} for s, a in ((5, 0.5), (13, 0.92), (16, 0.95))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "status.json").write_text(json.dumps({"status": "done", "step": 16}))
    summary = summarize_run(tmp_path, target_accuracy=0.9)
    assert (summary.steps_to_target, summary.epochs_to_target) == (13, pytest.approx(2.5))
    assert summarize_run(tmp_path, target_accuracy=0.99).epochs_to_target is None
