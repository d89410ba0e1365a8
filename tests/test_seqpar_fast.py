"""seqpar/fast.py: the fast planner's plans are valid, and within 2% of the exact MILP on random micro-batches
drawn from the shipped long-tail distributions (the bound the issue asks for; benchmarks/flexsp.py checks >= 100)."""
import numpy as np
import pytest

from paraplan.seqpar.blaster import blast, min_microbatches
from paraplan.seqpar.fast import solve_fast
from paraplan.seqpar.lengths import sample_lengths
from paraplan.seqpar.milp import solve_milp
from tests.seqpar_cases import small_cost_model


def micro_batches(cm, count, max_seqs=14):
    """Micro-batches as the blaster cuts them from 40-sequence batches of each distribution, up to max_seqs long."""
    out = []
    seed = 0
    capacity = cm.world_size * cm.tokens_per_rank
    while len(out) < count:
        dist = ("wikipedia", "commoncrawl", "github")[seed % 3]
        lengths = np.array(sample_lengths(dist, 40, capacity // 2, seed=seed))
        for part in blast(lengths, min_microbatches(lengths, capacity)):
            if len(part) <= max_seqs and len(out) < count:
                out.append(lengths[part])
        seed += 1
    return out


def check_valid(sol, lengths, cm):
    members = sorted(k for _, ms in sol.groups for k in ms)
    assert members == list(range(len(lengths)))                      # every sequence exactly once
    assert sum(cm.shapes[t].size for t, _ in sol.groups) <= cm.world_size
    for t, ms in sol.groups:
        assert lengths[ms].sum() <= cm.capacity(t)                   # no group over its memory


def test_fast_within_two_percent_of_milp():
    cm = small_cost_model()
    gaps = []
    for lengths in micro_batches(cm, 16):
        fast = solve_fast(lengths, cm)
        exact = solve_milp(lengths, cm)
        assert exact.status == "optimal"
        check_valid(fast, lengths, cm)
        gaps.append(fast.makespan_s / exact.solution.makespan_s - 1)
    assert min(gaps) >= -1e-9            # the MILP is optimal: the heuristic cannot beat it
    assert max(gaps) <= 0.02


def test_fast_handles_memory_tight_micro_batches():
    # 82.8K tokens where the 16 GPUs hold ~102K: a greedy that opens the smallest group for each long sequence
    # runs out of GPUs; growing an open group instead finds the MILP's two groups of 8
    cm = small_cost_model()
    lengths = np.array([384, 35341, 11868, 14834, 3265, 11853, 5264])
    fast = solve_fast(lengths, cm)
    check_valid(fast, lengths, cm)
    assert fast.makespan_s <= 1.02 * solve_milp(lengths, cm).solution.makespan_s


def test_infeasible_micro_batch_returns_none():
    cm = small_cost_model()
    assert solve_fast(np.array([cm.world_size * cm.tokens_per_rank + 1]), cm) is None
    assert solve_fast(np.array([cm.world_size * cm.tokens_per_rank // 2 + 1] * 2 + [10]), cm) is None


@pytest.mark.parametrize("dist", ["wikipedia", "github"])
def test_large_micro_batch_is_valid(dist):
    cm = small_cost_model(nodes=8)
    lengths = np.array(sample_lengths(dist, 300, 50000, seed=1))
    part = blast(lengths, min_microbatches(lengths, cm.world_size * cm.tokens_per_rank))[-1]
    sol = solve_fast(lengths[part], cm)
    check_valid(sol, lengths[part], cm)
