"""Preparing a TFDS builder's data once, also when several processes ask at the same moment.

A sweep may start many runs on one data dir together. TFDS writes into a temporary folder and
renames it at the end, so two concurrent preparations would both do the work and the second
rename would fail; an exclusive file lock per dataset variant makes the others wait and reuse.
"""

import contextlib
import fcntl
import os
from typing import Callable, Iterator

import tensorflow_datasets as tfds

LOCK_FOLDER = ".locks"


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Holds an exclusive flock on ``path`` (created if needed); the OS drops it if we die."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def lock_path(builder: tfds.core.DatasetBuilder) -> str:
    """One lock file per dataset variant ('name/config/version'), outside TFDS's own folders."""
    file_name = builder.info.full_name.replace("/", "--") + ".lock"
    return os.path.join(os.fspath(builder.data_dir_root), LOCK_FOLDER, file_name)


def prepare_once(
    make_builder: Callable[[], tfds.core.DatasetBuilder],
    prepare: Callable[[tfds.core.DatasetBuilder], None],
) -> tfds.core.DatasetBuilder:
    """A builder whose data are on disk; ``prepare(builder)`` runs only if no one prepared them."""
    builder = make_builder()
    if builder.is_prepared():
        return builder
    with exclusive_lock(lock_path(builder)):
        # Whoever held the lock before may have prepared the data meanwhile, and a builder made
        # before the data existed knows no splits: ask a fresh one.
        builder = make_builder()
        if not builder.is_prepared():
            prepare(builder)
    return make_builder()
