import pytest

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError
from bnresearch.optim.batch_size_schedule import make_timeline


@pytest.mark.parametrize(
    "text, steps_per_epoch, expected",
    [
        ("500 steps", 7, 500),
        ("1 step", 7, 1),
        ("12st", 7, 12),
        ("3 epochs", 7, 21),
        ("1 epoch", 7, 7),
        ("0.5 ep", 10, 5),
        ("0.25 epochs", 10, 2),  # 2.5 rounds to the nearest even step
        ("0 steps", 7, 0),
    ],
)
def test_durations_in_steps(text, steps_per_epoch, expected):
    timeline = make_timeline(num_train=10 * steps_per_epoch + 3, batch_size=10)
    assert timeline.step_at(text) == expected


@pytest.mark.parametrize("text", ["10", "ten epochs", "5 minutes", "1.5 steps", "-3 steps", ""])
def test_bad_durations_are_one_line_errors(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)
