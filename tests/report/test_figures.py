"""Axis choices of the report's figures."""

from bnresearch.report.figures import (
    _examples_per_step_differ,
    _facets,
    _in_epochs,
    _scale,
    numeric_fields,
)
from bnresearch.report.table import Variant


def test_log_axes_where_values_span_a_factor_of_four():
    assert _scale([64, 128, 256, 512]) == {"value": "log", "base": 2}
    assert _scale([0.01, 0.1, 0.4]) == {"value": "log", "base": 10}
    assert _scale([0.5, 0.9]) == {"value": "linear"}
    assert _scale([0, 1, 10]) == {"value": "linear"}


def variant(**values):
    return Variant(name=repr(values), overrides=values, values=values, point_names=[], runs=[])


def test_only_fields_that_vary_on_their_own_are_plotted_against():
    # batch_size varies with norm fixed; base_lr only comes with the 'weight' variant
    variants = [
        variant(norm="batch", batch_size=64, base_lr=0.1),
        variant(norm="batch", batch_size=256, base_lr=0.1),
        variant(norm="weight", batch_size=64, base_lr=0.003),
    ]
    assert numeric_fields(variants) == ["batch_size"]


def test_many_variants_become_one_row_of_curves_per_value_of_a_swept_number():
    # 3 batch sizes x 4 rules: 12 lines are too many for one plot, 4 per row are not
    grid = [
        variant(batch_size=size, lr_scaling=rule)
        for size in (256, 64, 128)
        for rule in ("none", "linear", "sqrt", "legw")
    ]
    field, facets = _facets(grid)
    assert field == "batch_size"
    assert [value for value, _ in facets] == [64, 128, 256]
    for value, members in facets:
        assert [v.values for v in members] == [
            {"batch_size": value, "lr_scaling": rule} for rule in ("none", "linear", "sqrt", "legw")
        ]
    assert _facets(grid[:8]) == (None, [(None, grid[:8])])  # few enough: one plot


def test_curves_are_drawn_against_epochs_where_batch_sizes_differ():
    # Two runs that log every epoch of 1280 examples: 20 steps of 64, or 10 steps of 128.
    def run(batch_size, steps_per_epoch):
        return [
            {
                "step": step,
                "train/batch_size": batch_size,
                "train/epoch": step / steps_per_epoch,
                "train/loss": 1.0 / step,
            }
            for step in range(steps_per_epoch, 4 * steps_per_epoch + 1, steps_per_epoch)
        ]

    small, large = run(64, 20), run(128, 10)
    assert _examples_per_step_differ([small, large])
    assert not _examples_per_step_differ([small, small])
    # eval records at steps between the logged ones: epochs interpolated linearly, from 0 at 0
    assert _in_epochs(large, [(5, 0.5), (10, 0.7), (25, 0.9)]) == [
        (0.5, 0.5),
        (1.0, 0.7),
        (2.5, 0.9),
    ]


def test_the_probes_figures_are_drawn_for_what_the_runs_logged(tmp_path):
    import json

    from bnresearch.report.figures import last_per_layer, probe_figures, site_mean

    def run(name, scale):
        records = [
            {"step": 2, "landscape/loss_range": scale, "landscape/beta_smoothness": 2 * scale},
            {"step": 2, "activations/a/output_std": 1.0, "activations/b/output_std": 3.0 * scale},
            {"step": 4, "landscape/loss_range": scale / 2, "landscape/beta_smoothness": scale},
            {"step": 4, "train/loss": 1.0},
        ]
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps(record) + "\n" for record in records)
        )
        return records

    first = run("p0", 1.0)
    run("p1", 2.0)
    assert site_mean(first, "output_std") == [(2, 2.0)]
    shift = [
        {"step": 5, "ics/01_b/l2": 3.0, "ics/00_z/l2": 1.0, "ics/mean_l2": 3.0},
        {"step": 9, "ics/10_c/l2": 9.0, "ics/01_b/l2": 4.0, "ics/00_z/l2": 2.0},
    ]
    assert last_per_layer(shift) == [2.0, 4.0, 9.0]  # the last record, in forward order
    both = Variant(name="batch", overrides={}, values={}, point_names=["p0", "p1"], runs=[])
    paths = probe_figures([both], tmp_path, tmp_path)
    # No covariate shift was logged: no figure of it.
    assert [path.name for path in paths] == ["landscape.png", "activations.png"]
    assert all(path.stat().st_size > 0 for path in paths)
