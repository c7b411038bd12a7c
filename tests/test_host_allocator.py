"""glibc's allocator tunables: set by an entry point restarting itself, never over the user's
own value; what a run computes does not change."""

import json
import pathlib
import platform

import pytest

from bnresearch import host_allocator
from tests.programs import run_python
from tests.train.runs import launch

HUGETLB = "glibc.malloc.hugetlb"
ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not ON_GLIBC, reason="the tunables are glibc's")


def test_the_tunable_is_added_after_the_users():
    assert host_allocator.with_kit_tunables("") == f"{HUGETLB}=1"
    assert (
        host_allocator.with_kit_tunables("glibc.malloc.arena_max=2")
        == f"glibc.malloc.arena_max=2:{HUGETLB}=1"
    )


def test_a_tunable_the_user_set_keeps_the_users_value():
    mine = f"glibc.malloc.arena_max=2:{HUGETLB}=0"
    assert host_allocator.with_kit_tunables(mine) == mine
    once = host_allocator.with_kit_tunables("")
    assert host_allocator.with_kit_tunables(once) == once


def _run_python(program: str, env: dict):
    return run_python(program, env, without=(host_allocator.ENVIRONMENT_VARIABLE,))


RESTARTING = """
import os
from bnresearch import host_allocator
print("started", os.getpid(), flush=True)
host_allocator.restart_with_tunables()
print("running", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""))
"""


@needs_glibc
def test_an_entry_point_restarts_once_as_the_same_process_with_the_tunable():
    lines = _run_python(RESTARTING, {}).stdout.splitlines()
    started = [line for line in lines if line.startswith("started")]
    running = [line.split() for line in lines if line.startswith("running")]
    assert len(started) == 2  # the program ran again, once, after the exec
    assert len(running) == 1 and running[0][1] == started[0].split()[1] == started[1].split()[1]
    assert running[0][2] == f"{HUGETLB}=1"


@needs_glibc
def test_the_users_value_is_not_restarted_over():
    lines = _run_python(RESTARTING, {"GLIBC_TUNABLES": f"{HUGETLB}=0"}).stdout.splitlines()
    assert sum(line.startswith("started") for line in lines) == 1
    assert lines[-1].split()[2] == f"{HUGETLB}=0"


# Touches a freshly allocated 64 MiB block three times over, freeing it in between, as XLA's
# runtime does with a step's temporary buffers; prints the page faults it took.
FAULTS = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(ctypes.c_void_p(block))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _transparent_huge_pages() -> str:
    path = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.read_text() if path.exists() else ""


@needs_glibc
@pytest.mark.skipif(
    not any(f"[{mode}]" in _transparent_huge_pages() for mode in ("always", "madvise")),
    reason="the kernel's transparent huge pages are off",
)
def test_glibc_then_takes_large_blocks_in_huge_pages():
    small_pages = int(_run_python(FAULTS, {"GLIBC_TUNABLES": f"{HUGETLB}=0"}).stdout)
    huge_pages = int(_run_python(FAULTS, {"GLIBC_TUNABLES": f"{HUGETLB}=1"}).stdout)
    four_kib_pages = 3 * (64 << 20) // 4096
    if "[always]" not in _transparent_huge_pages():  # with 'always' both get huge pages
        assert small_pages >= four_kib_pages
    assert huge_pages < four_kib_pages // 20


@needs_glibc
def test_a_run_computes_the_same_with_and_without_huge_pages(tmp_path, data_dir):
    # launch.py adds the tunable to an empty GLIBC_TUNABLES and keeps the user's 0.
    for name, value in (("huge", ""), ("small", f"{HUGETLB}=0")):
        launch(tmp_path / name, data_dir, devices=1, env={"GLIBC_TUNABLES": value})
    environments = [
        json.loads((tmp_path / name / "environment.json").read_text())[0]
        for name in ("huge", "small")
    ]
    assert [record["glibc_tunables"] for record in environments] == [
        f"{HUGETLB}=1",
        f"{HUGETLB}=0",
    ]
    metrics = [(tmp_path / name / "metrics.jsonl").read_text() for name in ("huge", "small")]
    assert metrics[0] == metrics[1] and len(metrics[0].splitlines()) > 2
