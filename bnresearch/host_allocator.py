"""The C library allocator's settings for the kit's processes: set where a process starts
(launch.py, the benchmarks), never on import.

Why: XLA's CPU runtime allocates a compiled program's temporary buffers each time it runs the
program and frees them when it returns, a 383 MiB block per train step for the CIFAR ResNet-20
at batch 128. glibc's malloc takes blocks that large fresh from the kernel (mmap) and gives them
back on free, so every step touches its whole working set anew: about 98,000 page faults per
ResNet-20 step, each a 4 KiB page the kernel must zero. With the glibc tunable
``glibc.malloc.hugetlb=1`` malloc asks for transparent huge pages for those blocks (madvise):
2 MiB pages, about 600 faults per step, and the ResNet-20 step alone runs 1.10-1.14x as fast
on the 2-core development machine (benchmarks/README.md, "What was changed"). Where memory
comes from does not change what is computed: runs are bitwise the same with and without it.

glibc reads its tunables only when a process starts, so an entry point restarts itself once,
before it imports JAX, through exec (the same process id, arguments and environment, plus the
tunable): `restart_with_tunables`. Child processes (a sweep's points) inherit the environment.
Importing the library restarts nothing: a notebook gets the setting when Jupyter is started with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its environment.

A value the user set for a tunable in ``GLIBC_TUNABLES`` keeps it (``glibc.malloc.hugetlb=0``
turns this off); other C libraries (macOS, musl) are left alone. Where the kernel's transparent
huge pages are off (``/sys/kernel/mm/transparent_hugepage/enabled`` is ``never``) and in glibc
before 2.35, which does not know the tunable, it changes nothing.
"""

import os
import platform
import sys

TUNABLES = {"glibc.malloc.hugetlb": "1"}
ENVIRONMENT_VARIABLE = "GLIBC_TUNABLES"


def with_kit_tunables(glibc_tunables: str) -> str:
    """`glibc_tunables` (a ``GLIBC_TUNABLES`` value: ``name=value`` pairs joined by ':') plus
    each kit tunable it does not set already."""
    pairs = [pair for pair in glibc_tunables.split(":") if pair]
    present = {pair.split("=", 1)[0] for pair in pairs}
    added = [f"{name}={value}" for name, value in TUNABLES.items() if name not in present]
    return ":".join(pairs + added)


def restart_with_tunables() -> None:
    """Re-executes this process with the kit's tunables in its environment, unless they are
    there already (then it returns), or the C library is not glibc. Call it first thing in an
    entry point: what the process did before is lost, output written so far is flushed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    current = os.environ.get(ENVIRONMENT_VARIABLE, "")
    wanted = with_kit_tunables(current)
    if wanted == current:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, ENVIRONMENT_VARIABLE: wanted})
