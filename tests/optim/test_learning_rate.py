import math

import pytest

from bnresearch.errors import UsageError
from bnresearch.optim.learning_rate import (
    check_warmup,
    legw_warmup_epochs,
    phase_peak_lrs,
    scaled_learning_rate,
)


@pytest.mark.parametrize("batch_size", [32, 128, 256, 1024, 8192])
def test_scaling_rules(batch_size):
    ratio = batch_size / 256
    assert scaled_learning_rate(0.1, batch_size, 256, "none") == 0.1
    assert scaled_learning_rate(0.1, batch_size, 256, "linear") == pytest.approx(0.1 * ratio)
    assert scaled_learning_rate(0.1, batch_size, 256, "sqrt") == pytest.approx(
        0.1 * math.sqrt(ratio)
    )


def test_goyal_et_al_reference_point():
    # Goyal et al. 2017: lr 0.1 at batch 256 becomes 3.2 at batch 8192.
    assert scaled_learning_rate(0.1, 8192, 256, "linear") == pytest.approx(3.2)


def test_unknown_rule():
    with pytest.raises(UsageError, match="valid: none, linear, sqrt"):
        scaled_learning_rate(0.1, 256, 256, "cubic")


@pytest.mark.parametrize(
    "batch_size, warmup_epochs", [(256, 5.0), (512, 10.0), (1024, 20.0), (8192, 160.0), (128, 2.5)]
)
def test_legw_warmup_grows_with_the_batch(batch_size, warmup_epochs):
    # You et al. 2019: 5 warmup epochs at 256 become 5 * B/256 epochs at B.
    assert legw_warmup_epochs(5.0, batch_size, 256) == pytest.approx(warmup_epochs)


def test_legw_requires_sqrt_scaling_and_epochs():
    check_warmup("5 epochs", "legw", "sqrt")
    check_warmup("500 steps", "linear", "linear")
    with pytest.raises(UsageError, match="legw goes with lr_scaling='sqrt'.*not 'linear'"):
        check_warmup("5 epochs", "legw", "linear")
    with pytest.raises(UsageError, match="legw needs schedule.warmup in epochs"):
        check_warmup("500 steps", "legw", "sqrt")
    with pytest.raises(UsageError, match="valid: linear, legw"):
        check_warmup("5 epochs", "gradual", "sqrt")


def test_phase_peak_lrs_fixed_or_rescaled():
    sizes = [128, 640, 3200]
    assert phase_peak_lrs(0.1, 128, "linear", sizes, "fixed") == (0.1, 0.1, 0.1)
    assert phase_peak_lrs(0.1, 128, "linear", sizes, "rescaled") == pytest.approx((0.1, 0.5, 2.5))
    assert phase_peak_lrs(0.1, 128, "sqrt", sizes, "rescaled") == pytest.approx(
        (0.1, 0.1 * math.sqrt(5), 0.5)
    )
    # fixed keeps the lr of the first phase, itself scaled from base_batch_size.
    assert phase_peak_lrs(0.1, 64, "linear", sizes, "fixed") == pytest.approx((0.2,) * 3)
    with pytest.raises(UsageError, match="valid: fixed, rescaled"):
        phase_peak_lrs(0.1, 128, "linear", sizes, "grow")
