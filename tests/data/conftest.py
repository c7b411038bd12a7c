"""Fixtures for the data tests. Every data dir is a pytest temporary folder, so no test reads or
writes ~/tensorflow_datasets."""

import pytest

from bnresearch.data.dataset import load_dataset
from tests.data.datatest_utils import make_config


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A data dir with digits prepared once for the session."""
    data_dir = str(tmp_path_factory.mktemp("digits_data"))
    load_dataset(make_config("digits", data_dir))
    return data_dir
