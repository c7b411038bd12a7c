"""Option checks shared by the model families."""

from collections.abc import Sequence

from bnresearch.errors import UsageError


def check_positive_int(model: str, option: str, value) -> None:
    if not (isinstance(value, int) and value > 0):
        raise UsageError(f"{model}: {option} must be a positive int, got {value!r}")


def check_positive_ints(model: str, option: str, values: Sequence[int]) -> None:
    if not (
        isinstance(values, Sequence)
        and values
        and all(isinstance(value, int) and value > 0 for value in values)
    ):
        raise UsageError(
            f"{model}: {option} must be a non-empty sequence of positive ints, got {values!r}"
        )
