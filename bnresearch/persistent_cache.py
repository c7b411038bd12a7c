"""JAX's persistent compilation cache, for every launch: the programs a launch compiles are kept on
disk, and a later launch that needs the same ones (the same config again, another seed, a resumed
run) loads them instead of compiling: the same executables, so the same numbers.

Where: `$JAX_COMPILATION_CACHE_DIR` when set (a sweep sets `DIR/compilation_cache` for its
points, `bnresearch/sweep/local.py`), else `$XDG_CACHE_HOME/bnresearch/jax`, which is
`~/.cache/bnresearch/jax` by default. The executables are built for this machine's CPU or
accelerator; the folder can be deleted at any time.

`launch.py` turns the cache on before anything compiles; a process that imports the library
(the tests, a notebook) keeps JAX's own setting, none unless it sets one.
"""

import os
import pathlib
from collections.abc import Mapping

# JAX reads this variable itself when it is imported; a value set by the user wins.
DIRECTORY_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
# Likewise, JAX's threshold: programs that compiled faster than this are not kept.
MIN_COMPILE_TIME_VARIABLE = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def cache_directory(environ: Mapping[str, str]) -> pathlib.Path:
    """The cache's folder under the environment `environ` (see the module's docstring)."""
    if environ.get(DIRECTORY_VARIABLE):
        return pathlib.Path(environ[DIRECTORY_VARIABLE])
    base = environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "bnresearch" / "jax"


def enable() -> pathlib.Path:
    """Turns the cache on for this process; call it before the process compiles anything (JAX
    sets its cache up at the first compilation). Returns the cache's folder."""
    import jax  # here, not above: the sweep's process reads the names above and imports no JAX

    directory = cache_directory(os.environ)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if MIN_COMPILE_TIME_VARIABLE not in os.environ:
        # JAX keeps only programs that took a second or more to compile by default: the init,
        # the eval step and orbax's small programs would compile again at every launch.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
