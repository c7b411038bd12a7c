"""The large-batch configs: every grid point is a valid config, and each sweep entry applied to the
default config gives the config its arg selects."""

import pytest

from bnresearch.train.preflight import check_config
from configs import batch_augmentation, batch_scaling, increase_batch


def overridden(module, overrides):
    config = module.get_config()
    config.lock()  # as launch.py does: an override can only name an existing field
    config.update_from_flattened_dict({k: v for k, v in overrides.items() if k != "seed"})
    return config


def arg_of(module, overrides):
    if module is batch_scaling:
        warmup = next(
            name
            for name, fields in batch_scaling.WARMUPS.items()
            if fields == (overrides["schedule.warmup"], overrides["schedule.warmup_rule"])
        )
        return (
            f"batch_size={overrides['batch_size']},scaling={overrides['lr_scaling']},"
            f"warmup={warmup}"
        )
    if module is batch_augmentation:
        return f"multiplicity={overrides['batch_augmentation.multiplicity']}"
    return "schedule=" + next(
        name
        for name, fields in increase_batch.VARIANTS.items()
        if all(overrides[key] == value for key, value in fields.items())
    )


@pytest.mark.parametrize(
    "module, points", [(batch_scaling, 35), (batch_augmentation, 4), (increase_batch, 2)]
)
def test_each_sweep_entry_is_the_config_of_its_arg(module, points):
    sweep = module.get_sweep("seeds=2")
    assert len(sweep) == 2 * points and {entry["seed"] for entry in sweep} == {0, 1}
    for overrides in sweep[:points]:
        config = overridden(module, overrides)
        check_config(config)
        assert config.to_dict() == module.get_config(arg_of(module, overrides)).to_dict()


@pytest.mark.parametrize(
    "module, arg",
    [
        (batch_scaling, "model=resnet20,seeds=1"),
        (batch_augmentation, "model=resnet20,seeds=1"),
        (increase_batch, "schedule=decay,seeds=1"),
    ],
)
def test_sweeps_take_the_config_arg_and_flat_values(module, arg):
    # A sweep runs get_config(arg) with each point's overrides given as --config.FIELD=VALUE
    # flags, whose tuples hold plain values.
    module.get_config(arg)
    for overrides in module.get_sweep(arg):
        for value in overrides.values():
            if isinstance(value, tuple):
                assert all(isinstance(v, (bool, int, float, str)) for v in value), overrides


def test_legw_points_use_sqrt_scaling():
    legw = [p for p in batch_scaling.get_sweep() if p["schedule.warmup_rule"] == "legw"]
    assert len(legw) == len(batch_scaling.BATCH_SIZES)
    assert {p["lr_scaling"] for p in legw} == {"sqrt"}
