"""How local sweeps divide a machine's GPUs and CPU cores among concurrent points."""

import pytest

from bnresearch.errors import UsageError
from bnresearch.sweep import devices


def test_each_slot_gets_an_equal_share_of_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [s.env for s in devices.device_slots(4)] == [
        {"CUDA_VISIBLE_DEVICES": gpu} for gpu in "4567"
    ]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in devices.device_slots(2)] == ["4,5", "6,7"]
    # Equal shares: every point sees as many devices; the fourth GPU stays idle.
    assert [s.label for s in devices.device_slots(3)] == ["GPU 4", "GPU 5", "GPU 6"]
    assert all(s.cpus is None for s in devices.device_slots(2))
    with pytest.raises(UsageError, match="--parallel=5 needs as many GPUs; this machine shows 4"):
        devices.device_slots(5)


def test_gpus_are_counted_with_nvidia_smi_when_the_variable_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: a)'\necho 'GPU 1: NVIDIA H100 (UUID: b)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}")
    assert devices.visible_gpus() == ["0", "1"]


def test_without_gpus_the_cpu_cores_are_split(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(8)))
    slots = devices.device_slots(3)
    assert [s.cpus for s in slots] == [frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})]
    assert [s.label for s in slots] == ["CPU cores 0-1", "CPU cores 2-3", "CPU cores 4-5"]
    assert devices.device_slots(1)[0].cpus is None  # alone: the whole machine, as launched
    with pytest.raises(UsageError, match="--parallel=9 exceeds the 8 CPU cores"):
        devices.device_slots(9)
