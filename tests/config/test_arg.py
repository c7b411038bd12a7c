import pytest

from bnresearch.config.arg import parse_arg
from bnresearch.errors import UsageError


def test_defaults_when_no_arg():
    assert parse_arg(None, model="cnn", steps=10).to_dict() == {"model": "cnn", "steps": 10}


def test_values_take_the_type_of_their_default():
    arg = parse_arg(
        "model=resnet20,steps=5,lr=0.5,runlocal", model="cnn", steps=10, lr=0.1, runlocal=False
    )
    assert arg.to_dict() == {"model": "resnet20", "steps": 5, "lr": 0.5, "runlocal": True}


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(UsageError, match="unknown config arg 'modle'; valid: model, steps"):
        parse_arg("modle=x", model="cnn", steps=1)


def test_badly_typed_value():
    with pytest.raises(UsageError, match="expected a int"):
        parse_arg("steps=many", steps=1)
