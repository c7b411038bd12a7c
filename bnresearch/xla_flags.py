"""The XLA options the kit sets, in one place: applied when ``bnresearch`` is first imported
(``bnresearch/__init__.py``), so ``launch.py``, the sweeps' child processes, the benchmark, the
tests and a notebook that imports the library all compile with them.

XLA reads ``XLA_FLAGS`` when JAX starts its backend (its first computation), not when jax is
imported, so importing jax first is fine; a process that ran a JAX computation before importing
bnresearch keeps XLA's defaults, and is warned.

Each option yields to the user: a flag already in ``XLA_FLAGS`` keeps its value, and
``BNRESEARCH_XLA_FLAGS=off`` leaves ``XLA_FLAGS`` untouched altogether. The flags in effect are
recorded with every run (``environment.json``), so a number can be traced to the options that
produced it.

Why these options: ``benchmarks/README.md`` measures each CPU option of this jaxlib and records
the ones that did not win. XLA's CPU backend already runs convolutions through its YNNPACK
library; routing the element-wise operations and reductions there too (normalization, ReLU,
residual adds, their gradients) stops XLA from re-computing whole chains of them inside the
layout transposes of the weight gradients, which made the CIFAR ResNet-20 train step about twice
as fast. The option names CPU code paths only: GPU and TPU compilations ignore it.
"""

import os
import sys
import warnings

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
    ),
}
OPT_OUT = "BNRESEARCH_XLA_FLAGS"
# YNN's fusions fail at run time in programs whose train state is split over devices (ResNet-50
# under fsdp on 8 simulated devices: "Instruction with unsupported layout in YNN fusion", a
# parameter shard's layout), so such CPU programs compile without them, with XLA's own kernels
# for those operations (`compile_options`); replicated runs keep the faster setting.
SPLIT_STATE_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def with_kit_options(xla_flags: str) -> str:
    """`xla_flags` (an ``XLA_FLAGS`` value) plus each kit option it does not set already."""
    present = {flag.split("=", 1)[0].lstrip("-") for flag in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in CPU_OPTIONS.items() if name not in present]
    return " ".join([xla_flags.strip(), *added]).strip()


def compile_options(platform: str, state_is_split: bool) -> dict:
    """Per-program XLA options for a run's compiled steps (jit's `compiler_options`): none, except
    SPLIT_STATE_CPU_OPTIONS for a CPU program whose state is split over devices. Set per program,
    not in XLA_FLAGS, so a process's other programs keep the kit's options."""
    return dict(SPLIT_STATE_CPU_OPTIONS) if platform == "cpu" and state_is_split else {}


def apply() -> None:
    """Puts the kit's options into ``XLA_FLAGS`` for this process and its children."""
    if os.environ.get(OPT_OUT, "").lower() == "off":
        return
    current = os.environ.get("XLA_FLAGS", "")
    wanted = with_kit_options(current)
    if wanted == current:
        return
    if _backend_started():
        warnings.warn(
            "bnresearch was imported after JAX started its backend, so this process compiles "
            "without the kit's XLA options (bnresearch/xla_flags.py); import bnresearch before "
            "running any JAX computation",
            stacklevel=3,
        )
        return
    os.environ["XLA_FLAGS"] = wanted


def _backend_started() -> bool:
    """Whether JAX already created its backends (which read XLA_FLAGS once, when created)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # no public API tells whether the backends exist

    return xla_bridge.backends_are_initialized()
