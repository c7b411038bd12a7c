"""configs/why_bn.py, the why-does-it-work study: every sweep point applies to the locked config
and passes the preflight check (no data is read), the variants are those its README describes,
and bad args are refused."""

import pytest

from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.sweep import grid
from bnresearch.train.preflight import check_config
from configs import why_bn


def test_every_point_is_a_valid_run_of_the_variants_the_readme_describes():
    points = why_bn.get_sweep()
    configs = {}
    for point in points:
        config = why_bn.get_config()
        config.lock()  # an override of a field that does not exist fails here
        set_fields(config, {k: v for k, v in point.items() if k != grid.LABEL})
        check_config(config)
        configs[point[grid.LABEL], point["seed"]] = config
    variants = list(why_bn.VARIANTS)
    assert variants == [
        "standard",
        "batch_norm",
        "noisy_batch_norm",
        "deep_standard",
        "deep_gradinit",
        "deep_lecun",
        "deep_lecun_gradinit",
    ]
    assert sorted(configs) == sorted((v, seed) for v in variants for seed in (0, 1))
    for (variant, _), config in configs.items():
        deep = variant.startswith("deep")
        assert config.model.options.convs_per_stage == (5 if deep else 2)
        assert (config.model.norm == "batch") == variant.endswith("batch_norm")
        assert (config.model.init_method == "gradinit") == variant.endswith("gradinit")
        assert (config.model.weight_init == "lecun_normal") == ("lecun" in variant)
        # The probes on the shallow networks only; training identical but for the variant.
        assert config.landscape.enabled == config.covariate_shift.enabled == (not deep)
        assert (config.base_lr, config.batch_size, config.train_duration) == (
            0.1,
            128,
            "200 steps",
        )
    assert configs["noisy_batch_norm", 0].model.norm_kwargs.noise_shift == 1.0
    assert configs["deep_gradinit", 0].gradinit.iterations == 78  # about one epoch


def test_a_bad_variant_is_refused_with_the_valid_ones():
    with pytest.raises(UsageError, match="variant='deep'; valid: standard, batch_norm, "):
        why_bn.get_config("variant=deep")
