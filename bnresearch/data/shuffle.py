"""Grain's global shuffle, a whole epoch at once.

``grain.MapDataset.shuffle`` puts record ``index_shuffle(i, max_index=n - 1, seed, rounds=4)`` at
position i of an epoch: a Simon block cipher of at least 16 bits, cycle-walked into [0, n)
(grain's index_shuffle.cc). Its binding answers one index per call, tens of microseconds each
for small datasets (a 16-bit block holds 45 times digits' 1437 records, so a walk takes about 45
encryptions); ``epoch_permutation`` computes the same numbers for all of [0, n) with NumPy, a few
milliseconds per epoch up to 2^16 records (1.3 s for ImageNet's 1.28 million).
tests/data/test_shuffle.py checks it against the binding.
"""

import math

import numpy as np

# grain's kMinBlockSize: smaller blocks showed patterns in the permutations.
MIN_BLOCK_BITS = 16
ROUNDS = 4  # what grain's ShuffleMapDataset passes


def _round_keys(seed: int, count: int) -> list[int]:
    """``std::seed_seq{seed}.generate`` of ``count`` 32-bit words (C++ [rand.util.seedseq])."""
    mask = 0xFFFFFFFF
    keys = [0x8B8B8B8B] * count
    n, s = count, 1
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)
    for k in range(m):
        r1 = keys[k % n] ^ keys[(k + p) % n] ^ keys[(k - 1) % n]
        r1 = 1664525 * (r1 ^ (r1 >> 27)) & mask
        r2 = (r1 + (s if k == 0 else k % n + seed if k <= s else k % n)) & mask
        keys[(k + p) % n] = (keys[(k + p) % n] + r1) & mask
        keys[(k + q) % n] = (keys[(k + q) % n] + r2) & mask
        keys[k % n] = r2
    for k in range(m, m + n):
        r3 = (keys[k % n] + keys[(k + p) % n] + keys[(k - 1) % n]) & mask
        r3 = 1566083941 * (r3 ^ (r3 >> 27)) & mask
        r4 = (r3 - k % n) & mask
        keys[(k + p) % n] ^= r3
        keys[(k + q) % n] ^= r4
        keys[k % n] = r4
    return keys


def epoch_permutation(length: int, seed: int) -> np.ndarray:
    """[index_shuffle(i, length - 1, seed, 4) for i in range(length)], as int64."""
    if length == 1:
        return np.zeros(1, np.int64)
    # The block must hold length - 1 and be even (two words); grain computes it in doubles.
    bits = math.ceil(math.log2(length - 1))
    word = max(bits + bits % 2, MIN_BLOCK_BITS) // 2
    mask = np.uint64((1 << word) - 1)
    keys = [np.uint64(key) & mask for key in _round_keys(seed, ROUNDS)]
    width, one, two, eight = np.uint64(word), np.uint64(1), np.uint64(2), np.uint64(8)

    def rotl(x, r):
        return ((x << r) | (x >> (width - r))) & mask

    def encrypt(values):
        left, right = (values >> width) & mask, values & mask
        for k1, k2 in zip(keys[::2], keys[1::2]):
            left ^= (rotl(right, one) & rotl(right, eight)) ^ rotl(right, two) ^ k1
            right ^= (rotl(left, one) & rotl(left, eight)) ^ rotl(left, two) ^ k2
        return (left << width) | right

    # Cycle walking: index i goes to the first of E(i), E(E(i)), ... inside [0, length). Walks
    # of tiny datasets in a 16-bit block run to thousands of steps, so they are taken by pointer
    # doubling over the whole block: after t rounds jump[x] is the walk from x, stopped inside
    # the range or after 2^t steps.
    block = 1 << (2 * word)
    jump = encrypt(np.arange(block, dtype=np.uint64)).astype(np.int64)
    while (jump[:length] >= length).any():
        jump = np.where(jump < length, jump, jump[jump])
    # grain's cipher keeps the low 2 * word bits of its input: when length - 1 is 2^(2 * word)
    # (65536, 2^18, ...) the block lacks it, and it walks as index 0 does.
    return jump[np.arange(length) & (block - 1)]
