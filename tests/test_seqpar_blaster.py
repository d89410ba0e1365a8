"""seqpar/blaster.py: min-max contiguous partition and DP bucketing, each against brute force."""
import itertools

import numpy as np
import pytest

from paraplan.seqpar.blaster import blast, bucket, min_max_partition, min_microbatches


def brute_min_max(tokens, parts):
    n = len(tokens)
    best = None
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(tokens[bounds[i]:bounds[i + 1]]) for i in range(parts))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_min_max_partition_is_optimal(seed):
    rng = np.random.default_rng(seed)
    tokens = [int(x) for x in rng.integers(1, 100, size=int(rng.integers(2, 10)))]
    for parts in range(1, len(tokens) + 1):
        runs = min_max_partition(tokens, parts)
        assert len(runs) == parts and runs[0][0] == 0 and runs[-1][1] == len(tokens)
        assert all(a < b for a, b in runs) and all(runs[i][1] == runs[i + 1][0] for i in range(parts - 1))
        assert max(sum(tokens[a:b]) for a, b in runs) == brute_min_max(tokens, parts)


def test_blast_sorts_longest_first_and_covers_the_batch():
    lengths = [5, 100, 7, 60, 3, 90]
    parts = blast(lengths, 3)
    flat = [int(k) for p in parts for k in p]
    assert sorted(flat) == list(range(6))
    assert [lengths[k] for k in flat] == sorted(lengths, reverse=True)


def brute_bucket_error(s, q):
    s = sorted(s)
    best = None
    for cuts in itertools.combinations(range(1, len(s)), q - 1):
        bounds = (0, *cuts, len(s))
        err = sum(s[b - 1] - x for i in range(q) for b in [bounds[i + 1]] for x in s[bounds[i]:b])
        best = err if best is None else min(best, err)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_bucketing_minimises_padding(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 1000, size=9)
    for q in (1, 2, 3, 5):
        bounds, members = bucket(lengths, q)
        assert sorted(int(k) for m in members for k in m) == list(range(9))
        assert all(lengths[m].max() == b for b, m in zip(bounds, members))
        error = sum(int(b) * len(m) - int(lengths[m].sum()) for b, m in zip(bounds, members))
        assert error == brute_bucket_error(lengths.tolist(), q)


def test_min_microbatches():
    # M_min = ceil(tokens / capacity) (FlexSP §4.2): 1000 tokens on a 300-token cluster -> 4
    assert min_microbatches([400, 600], 300) == 4
    assert min_microbatches([10], 300) == 1
