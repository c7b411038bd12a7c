from tests.sweep.conftest import prepared_data_dir  # noqa: F401  (digits prepared once)
