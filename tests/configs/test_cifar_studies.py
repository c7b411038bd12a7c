"""configs/cifar_norms.py and configs/cifar_augment.py, the two CIFAR studies: every sweep point
applies to the locked config and passes the preflight check (no data is read), the points are
the variants and batch sizes the studies' READMEs describe, and bad args are refused."""

import pytest

from bnresearch.config.fields import set_fields
from bnresearch.errors import UsageError
from bnresearch.layers import NORMALIZATIONS
from bnresearch.sweep import grid
from bnresearch.train.preflight import check_config
from configs import cifar_augment, cifar_norms


def checked_points(module):
    points = module.get_sweep()
    for point in points:
        config = module.get_config()
        config.lock()  # an override of a field that does not exist fails here
        set_fields(config, {k: v for k, v in point.items() if k != grid.LABEL})
        check_config(config)
    return points


def test_cifar_norms_points():
    points = checked_points(cifar_norms)
    labels = [point[grid.LABEL] for point in points]
    # every normalization of the kit at batch 128, the small-batch set at batch 8, 2 seeds each
    assert {cifar_norms._variant(v, 128)["model.norm"] for v in cifar_norms.VARIANTS} == set(
        NORMALIZATIONS
    )
    expected = [f"{v},batch=128" for v in cifar_norms.VARIANTS]
    expected += [f"{v},batch=8" for v in cifar_norms.SMALL_BATCH_VARIANTS]
    assert labels[::2] == expected and len(points) == 2 * len(expected)
    for point in points:
        assert point["batch_size"] == int(point[grid.LABEL].rsplit("=", 1)[1])
        if point["model.norm"] == "batch_renorm":
            # Ioffe's milestones as fractions of this run: 1 epoch of 20,000 images
            steps = 20_000 // point["batch_size"]
            assert point["model.norm_kwargs.rmax_end"] == steps
            assert point["model.norm_kwargs.relax_start"] == steps * 5 // 40


def test_cifar_norms_single_point_arg():
    config = cifar_norms.get_config("norm=group,batch=8")
    assert (config.model.norm, config.batch_size, config.model.norm_kwargs.num_groups) == (
        "group",
        8,
        8,
    )
    assert config.eval_every == "625 steps"  # 4 evaluations over 2,500 steps
    with pytest.raises(UsageError, match="unknown norm variant 'gruop'; valid: batch, "):
        cifar_norms.get_config("norm=gruop")


def test_cifar_augment_points():
    points = checked_points(cifar_augment)
    assert [point[grid.LABEL] for point in points[::2]] == list(cifar_augment.VARIANTS)
    augments = [point["dataset.augment"] for point in points[::2]]
    assert augments == ["none", "flip", "crop_flip", "crop_flip,cutout", "crop_flip,mixup"]
    with pytest.raises(UsageError, match="unknown augmentation variant 'cutmix'; valid: none, "):
        cifar_augment.get_config("augment=cutmix")
