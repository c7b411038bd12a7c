"""One finished sweep of tests/sweep/tiny_sweep.py for the session: 3 points that train, 1 that
diverges and 1 that fails, run 2 at a time."""
import pytest

from bnresearch.data.dataset import load_dataset
from tests.data.datatest_utils import make_config
from tests.sweep.sweeps import launch_sweep


@pytest.fixture(scope="session")
def prepared_data_dir(data_dir):
    """Digits prepared before any point starts: concurrent points must not each prepare them."""
    load_dataset(make_config("digits", data_dir))
    return data_dir


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, prepared_data_dir):
    workdir = tmp_path_factory.mktemp("sweep") / "tiny"
    result = launch_sweep(workdir, prepared_data_dir, "--parallel=2")
    return workdir, result
