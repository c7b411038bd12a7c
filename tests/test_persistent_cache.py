"""JAX's persistent compilation cache serves single launches: a second launch of a config compiles
nothing and loads every program the first compiled, from the default folder; the folder's rule;
the start-up figure each launch logs."""

import json
import pathlib
import re

import pytest

from bnresearch.persistent_cache import DIRECTORY_VARIABLE, cache_directory
from tests.train.runs import launch

SHORT = {"train_duration": "4 steps", "eval_every": "2 steps", "checkpoint.every": "2 steps"}


def launch_logging_compilations(workdir, data_dir, cache_home):
    """A short run in a fresh process, with JAX logging each program it compiles or loads, and
    the user's cache home at `cache_home` (and no explicit cache folder)."""
    env = {
        "XDG_CACHE_HOME": str(cache_home),
        DIRECTORY_VARIABLE: "",
        "JAX_LOG_COMPILES": "1",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
    result = launch(workdir, data_dir, devices=1, env=env, **SHORT)
    assert result.returncode == 0, result.stderr
    programs = re.findall(r"Finished XLA compilation of (\S+) in", result.stderr)
    loaded = re.findall(r"Persistent compilation cache hit for '([^']+)'", result.stderr)
    return result.stderr, programs, loaded


def test_a_second_launch_compiles_nothing(tmp_path, prepared_data_dir):
    cache_home = tmp_path / "cache_home"
    console, first, loaded = launch_logging_compilations(
        tmp_path / "a", prepared_data_dir, cache_home
    )
    assert not loaded and len(first) >= 3  # the init, the train step, the eval step at least
    assert re.search(r"first step after [\d.]+ s \(compiling [\d.]+ s\)", console)
    folder = cache_home / "bnresearch" / "jax"
    kept = sorted(folder.iterdir())
    # Another workdir, the same config: every program comes from the cache, none is added.
    console, second, loaded = launch_logging_compilations(
        tmp_path / "b", prepared_data_dir, cache_home
    )
    assert len(second) == len(first) == len(loaded) and "jit_train_step" in loaded
    assert sorted(folder.iterdir()) == kept
    for workdir in (tmp_path / "a", tmp_path / "b"):
        record = json.loads((workdir / "environment.json").read_text())[-1]
        assert record["first_step_after_s"] > record["compiling_s"] > 0


@pytest.mark.parametrize(
    "environ, folder",
    [
        (
            {DIRECTORY_VARIABLE: "/sweep/compilation_cache", "XDG_CACHE_HOME": "/x"},
            "/sweep/compilation_cache",
        ),
        ({"XDG_CACHE_HOME": "/x"}, "/x/bnresearch/jax"),
        (
            {DIRECTORY_VARIABLE: "", "XDG_CACHE_HOME": ""},
            str(pathlib.Path.home() / ".cache/bnresearch/jax"),
        ),
    ],
)
def test_an_explicit_folder_wins_then_the_users_cache_home(environ, folder):
    assert cache_directory(environ) == pathlib.Path(folder)
