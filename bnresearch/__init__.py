"""bnresearch: reproducible deep-learning experiments on normalization and training tricks.

Importing the package first sets the XLA options the kit compiles with (``xla_flags.py``).
"""

from bnresearch import xla_flags

xla_flags.apply()
