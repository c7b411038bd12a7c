"""Axis choices of the report's figures."""
from bnresearch.report.figures import _scale, numeric_fields
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
    variants = [variant(norm="batch", batch_size=64, base_lr=0.1),
                variant(norm="batch", batch_size=256, base_lr=0.1),
                variant(norm="weight", batch_size=64, base_lr=0.003)]
    assert numeric_fields(variants) == ["batch_size"]
