"""The quickstart (configs/quickstart.py) with K seeds, for benchmarks/population.py:

    python launch.py --config benchmarks/population_sweep.py:members=8 --workdir DIR --sweep

The arg `members` is K, the number of seeds (default 8).
"""

import importlib.util
import pathlib

from bnresearch.config.arg import parse_arg
from bnresearch.sweep import grid

_QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", _QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    parse_arg(arg, members=8)  # checks the arg; the config is the quickstart's
    return _quickstart().get_config()


def get_sweep(arg=None):
    return grid.seeds(parse_arg(arg, members=8).members)
