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

jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session: digits are prepared into it once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))
