import math

import pytest

from bnresearch.config.learning_rate import scaled_learning_rate
from bnresearch.errors import UsageError


@pytest.mark.parametrize("batch_size", [32, 128, 256, 1024, 8192])
def test_scaling_rules(batch_size):
    ratio = batch_size / 256
    assert scaled_learning_rate(0.1, batch_size, 256, "none") == 0.1
    assert scaled_learning_rate(0.1, batch_size, 256, "linear") == pytest.approx(0.1 * ratio)
    assert scaled_learning_rate(0.1, batch_size, 256, "sqrt") == pytest.approx(
        0.1 * math.sqrt(ratio))


def test_goyal_et_al_reference_point():
    # Goyal et al. 2017: lr 0.1 at batch 256 becomes 3.2 at batch 8192.
    assert scaled_learning_rate(0.1, 8192, 256, "linear") == pytest.approx(3.2)


def test_unknown_rule():
    with pytest.raises(UsageError, match="valid: none, linear, sqrt"):
        scaled_learning_rate(0.1, 256, 256, "cubic")
