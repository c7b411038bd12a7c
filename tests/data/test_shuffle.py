"""epoch_permutation is grain's per-index shuffle, computed for a whole epoch at once."""

import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

from bnresearch.data.shuffle import epoch_permutation


@pytest.mark.parametrize(
    "length, seed",
    [
        (1, 3),
        (2, 0),
        (10, 5),
        (1437, 123),  # digits' train split
        (1437, 2**32 - 1),
        (65536, 7),  # the largest in the 16-bit block
        (65537, 9),  # length - 1 = 2^16: grain's block lacks it and walks it as 0
        (70000, 11),  # an 18-bit block
    ],
)
def test_epoch_permutation_is_grains_index_shuffle(length, seed):
    expected = [
        index_shuffle_module.index_shuffle(i, max_index=length - 1, seed=seed, rounds=4)
        for i in range(length)
    ]
    np.testing.assert_array_equal(epoch_permutation(length, seed), expected)
