"""Runs one experiment from a config, or a sweep of them.

    python launch.py --config configs/quickstart.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
    python launch.py --config FILE[:ARG] --workdir DIR --sweep [--parallel N] [--retry_failed]
    python launch.py --workdir DIR --status

The code, and what each flag does: bnresearch/launch.py (`python -m bnresearch.launch` runs it
too, with the same flags).
"""

from absl import flags

from bnresearch import launch

flags.adopt_module_key_flags(launch)  # `--help` lists them as this script's flags

if __name__ == "__main__":
    launch.run()
