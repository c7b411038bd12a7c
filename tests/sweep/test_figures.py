"""Axis choices of the report's figures."""
from bnresearch.report.figures import _scale


def test_log_axes_where_values_span_a_factor_of_four():
    assert _scale([64, 128, 256, 512]) == {"value": "log", "base": 2}
    assert _scale([0.01, 0.1, 0.4]) == {"value": "log", "base": 10}
    assert _scale([0.5, 0.9]) == {"value": "linear"}
    assert _scale([0, 1, 10]) == {"value": "linear"}
