"""Sequence Blaster (FlexSP §4.2, App. A) and length bucketing (FlexSP §4.1.3, eqs. 15-16).

Blaster: sort the batch by length (longest first) and cut it into M contiguous micro-batches whose largest token
count is as small as possible (the min-max partition of eqs. 23-24). Sorting keeps lengths alike inside a
micro-batch (memory grows linearly and time quadratically in the length, so mixing them strands one or the other).
Bucketing: collapse sorted lengths into Q buckets represented by their upper bound, choosing the bounds that
minimise the padded tokens (exact DP, O(Q K^2) vectorised over one index).
"""
from __future__ import annotations

import bisect
import math

import numpy as np


def min_microbatches(lengths, tokens_capacity: int) -> int:
    """M_min = ceil(batch tokens / cluster token capacity) (FlexSP §4.2)."""
    return max(1, math.ceil(int(np.sum(lengths)) / tokens_capacity))


def _fits(prefix: list[int], limit: int, parts: int) -> bool:
    """Greedy: can the tokens with these prefix sums be cut into at most `parts` contiguous runs of sum <= limit?
    Each run extends as far as the limit allows (a bisection on the prefix sums: parts steps, not one per item)."""
    n = len(prefix) - 1
    start = 0
    for _ in range(parts):
        end = bisect.bisect_right(prefix, prefix[start] + limit, start + 1) - 1
        if end == start:
            return False                  # one item over the limit
        if end >= n:
            return True
        start = end
    return False


def min_max_partition(tokens: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut `tokens` (in order) into exactly min(parts, len) contiguous non-empty runs, [start, end) each, whose
    largest sum is the least possible (binary search on the limit with the greedy check: exact for positive
    weights). Among the optimal cuts it picks the one nearest to equal shares, so the runs stay balanced."""
    n = len(tokens)
    parts = max(1, min(parts, n))
    prefix = [0]
    for t in tokens:
        prefix.append(prefix[-1] + t)
    total = prefix[-1]
    lo, hi = max(max(tokens), -(-total // parts)), total     # no run can be below the largest item or the mean
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(prefix, mid, parts):
            hi = mid
        else:
            lo = mid + 1
    limit = lo
    # need[c]: fewest runs within the limit for tokens[c:] (greedy from c is optimal), by two pointers
    need = [0] * (n + 1)
    end = n
    for c in range(n - 1, -1, -1):
        while prefix[end] - prefix[c] > limit:
            end -= 1
        need[c] = 1 + need[end]
    cuts = [0]
    for i in range(1, parts):
        start, left = cuts[-1], parts - i
        target = total * i / parts
        best = None
        for c in range(start + 1, n - left + 1):
            if prefix[c] - prefix[start] > limit:
                break
            if need[c] <= left and (best is None or abs(prefix[c] - target) < abs(prefix[best] - target)):
                best = c
        cuts.append(best if best is not None else start + 1)   # None cannot happen at the optimal limit
    cuts.append(n)
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


def blast(lengths, parts: int) -> list[np.ndarray]:
    """Indices of each micro-batch: the batch sorted longest first, cut by min_max_partition."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    runs = min_max_partition([int(x) for x in lengths[order]], parts)
    return [order[a:b] for a, b in runs]


def bucket(lengths, buckets: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(upper bounds, member indices per bucket) of the DP bucketing: minimise sum over buckets of
    (bound - length) over its members, bounds taken from the lengths themselves (FlexSP eq. 15-16)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    s = lengths[order].astype(float)
    k = len(s)
    q = max(1, min(buckets, k))
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    inf = float("inf")
    # err[j]: least padding of the first j items in the current number of buckets; choice[b][i] the split
    err = np.array([0.0] + [inf] * k)
    choice = np.zeros((q + 1, k + 1), dtype=int)
    idx = np.arange(k + 1)
    for b in range(1, q + 1):
        new = np.full(k + 1, inf)
        for i in range(1, k + 1):
            j = idx[:i]
            # items j..i-1 in one bucket of bound s[i-1]: padding = s[i-1]*(i-j) - (prefix[i]-prefix[j])
            cand = err[:i] + s[i - 1] * (i - j) - (prefix[i] - prefix[j])
            best = int(np.argmin(cand))
            new[i], choice[b][i] = cand[best], best
        err = new
    bounds, members = [], []
    i = k
    for b in range(q, 0, -1):
        j = choice[b][i]
        if i > j:
            bounds.append(int(s[i - 1]))
            members.append(order[j:i])
        i = j
    return np.array(bounds[::-1]), members[::-1]
