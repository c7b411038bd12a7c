"""configs/norm_comparison.py: every variant is a valid config, the sweep's points are every
variant x seed and apply to the locked config, and the arg names the valid variants."""

import pytest

from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.layers import NORMALIZATIONS
from bnresearch.sweep import grid
from bnresearch.train.preflight import check_config
from configs import norm_comparison


def test_every_normalization_is_compared():
    norms = {
        norm_comparison.variant_overrides(variant)["model.norm"]
        for variant in norm_comparison.VARIANTS
    }
    assert norms == set(NORMALIZATIONS)


@pytest.mark.parametrize("variant", list(norm_comparison.VARIANTS))
def test_each_variant_is_a_valid_config(variant):
    config = norm_comparison.get_config(f"norm={variant}")
    config.lock()
    check_config(config)
    expected = norm_comparison.variant_overrides(variant)
    assert config.model.norm == expected["model.norm"]


def test_sweep_points_are_every_variant_and_seed_and_reach_the_config():
    points = norm_comparison.get_sweep()
    assert len(points) == 3 * len(norm_comparison.VARIANTS)
    assert len({tuple(sorted(point.items())) for point in points}) == len(points)
    assert [point[grid.LABEL] for point in points[::3]] == list(norm_comparison.VARIANTS)
    for point in points:
        config = norm_comparison.get_config()
        config.lock()  # overrides of fields that do not exist would fail here
        set_fields(config, {k: v for k, v in point.items() if k != grid.LABEL})
        check_config(config)
    small_init = [p for p in points if p.get("model.norm_kwargs.scale_init") == 0.1]
    assert len(small_init) == 3 and all(p["model.norm"] == "batch" for p in small_init)


def test_an_unknown_variant_names_the_valid_ones():
    with pytest.raises(UsageError, match="unknown norm variant 'batchnorm'; valid: batch, "):
        norm_comparison.get_config("norm=batchnorm")
