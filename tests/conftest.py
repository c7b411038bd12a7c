"""Test-wide JAX settings, applied before any test imports jax.

Eight simulated CPU devices let every test check sharded behaviour against one device; most XLA
optimizations are off because compile time, not run time, dominates tiny test models.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (must follow the environment above)
import pytest  # noqa: E402

from bnresearch.data.dataset import load_dataset  # noqa: E402
from tests.data.datatest_utils import make_config  # noqa: E402
from tests.sweep.sweeps import launch_sweep  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """A cache folder of the session's own in place of the user's (~/.cache): the runs the tests
    launch keep their compiled programs there (bnresearch/persistent_cache.py)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user_cache")))
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session: digits are prepared into it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


# One finished sweep of tests/sweep/tiny_sweep.py for the session (3 points that train, 1 that
# diverges and 1 that fails, run 2 at a time), read by the sweep's and the report's tests.
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
