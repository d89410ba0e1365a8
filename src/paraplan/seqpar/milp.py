"""The exact FlexSP MILP for one micro-batch (paper eqs. 5-10, bucketed form 17-22), solved by HiGHS through
scipy.optimize.milp.

Virtual groups: for each shape of size d, floor(N / d) copies (at most one per sequence). Variables:
    x[i, p] in {0..count_i}  how many sequences of item i (a sequence, or a bucket of them) group p runs
    m[p]    in {0, 1}        group p is formed
    C       >= 0             the makespan
    min C  s.t.  sum_p x[i, p] = count_i                              every sequence exactly once   (10)
                 fixed_p m_p + sum_i cost[i, p] x[i, p] <= C          group time under the makespan (6)
                 sum_i len_i x[i, p] <= capacity_p m_p                memory; also ties x to m      (7, 9)
                 sum_p d_p m_p <= N                                   GPU count                     (8)
                 x[i, p] = 0 where len_i > capacity_p                 (FlexSP's min-SP pruning)
Symmetry among copies of one shape is broken by forming them in order: m_p >= m_{p+1}.
With buckets, item i stands for its sequences at the bucket's upper bound (costs and memory are then upper bounds);
real sequences are dealt to the groups afterwards and the makespan is recomputed with the true lengths.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from paraplan.seqpar.blaster import bucket
from paraplan.seqpar.costmodel import SeqParCostModel
from paraplan.seqpar.fast import MicroBatchSolution, group_times


@dataclass
class MilpResult:
    solution: MicroBatchSolution | None
    objective_s: float | None         # the MILP's makespan (bucket upper bounds when bucketed)
    bound_s: float | None             # HiGHS's proven lower bound on it
    status: str
    solve_s: float
    variables: int


def solve_milp(lengths, cm: SeqParCostModel, indices=None, buckets: int | None = None,
               time_limit_s: float = 10.0, mip_rel_gap: float = 1e-4) -> MilpResult:
    """Solve one micro-batch exactly (buckets=None: one item per sequence) or on `buckets` DP length buckets."""
    lengths = np.asarray(lengths, dtype=np.int64)
    indices = list(range(len(lengths))) if indices is None else [int(i) for i in indices]
    if buckets is not None and buckets < len(lengths):
        bounds_len, members = bucket(lengths, buckets)
        item_len = bounds_len.astype(float)
        item_members = [list(m) for m in members]
    else:
        order = np.argsort(-lengths, kind="stable")
        item_len = lengths[order].astype(float)
        item_members = [[int(k)] for k in order]
    counts = np.array([len(m) for m in item_members], dtype=float)
    n_items = len(item_len)
    cost = cm.cost_matrix(item_len)                 # items x shapes, inf where it does not fit
    caps = cm.capacities
    sizes = cm.sizes
    total_seqs = int(counts.sum())

    groups: list[int] = []                          # shape of each virtual group
    for t, d in enumerate(sizes):
        if not np.isfinite(cost[:, t]).any():
            continue
        groups += [t] * min(cm.world_size // int(d), total_seqs)
    n_groups = len(groups)
    pairs = [(i, p) for p in range(n_groups) for i in range(n_items) if np.isfinite(cost[i, groups[p]])]
    nx = len(pairs)
    n_var = nx + n_groups + 1
    c_index = n_var - 1
    m_index = lambda p: nx + p  # noqa: E731

    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add(entries, lower, upper):
        nonlocal r
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        lo.append(lower)
        hi.append(upper)
        r += 1

    by_item: dict[int, list[int]] = {i: [] for i in range(n_items)}
    by_group: dict[int, list[int]] = {p: [] for p in range(n_groups)}
    for j, (i, p) in enumerate(pairs):
        by_item[i].append(j)
        by_group[p].append(j)
    for i in range(n_items):                                     # (10) each sequence exactly once
        add([(j, 1.0) for j in by_item[i]], counts[i], counts[i])
    for p in range(n_groups):
        t = groups[p]
        load = [(j, float(cost[pairs[j][0], t])) for j in by_group[p]] + [(m_index(p), float(cm.fixed_s[t]))]
        add(load + [(c_index, -1.0)], -np.inf, 0.0)               # (6) group time <= C
        add([(j, float(item_len[pairs[j][0]])) for j in by_group[p]] + [(m_index(p), -float(caps[t]))],
            -np.inf, 0.0)                                        # (7) memory, forces x = 0 when m = 0
    add([(m_index(p), float(sizes[groups[p]])) for p in range(n_groups)], -np.inf, cm.world_size)  # (8)
    for p in range(n_groups - 1):                                # symmetry among copies of one shape: the
        if groups[p] == groups[p + 1]:                           # formed ones come first
            add([(m_index(p + 1), 1.0), (m_index(p), -1.0)], -np.inf, 0.0)
    # (Ordering the copies by load as well is valid, but HiGHS 1.x (scipy 1.17) then proved a wrong optimum on
    # some instances, 4.7% above the true one: tests/test_seqpar_milp.py keeps that instance.)

    a = coo_matrix((vals, (rows, cols)), shape=(r, n_var)).tocsr()
    objective = np.zeros(n_var)
    objective[c_index] = 1.0
    integrality = np.ones(n_var)
    integrality[c_index] = 0
    upper = np.concatenate([[counts[i] for i, _ in pairs], np.ones(n_groups), [np.inf]])
    start = time.perf_counter()
    res = milp(objective, constraints=LinearConstraint(a, lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(n_var), upper),
               options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap, "disp": False})
    elapsed = time.perf_counter() - start
    status = {0: "optimal", 1: "time limit", 2: "infeasible", 3: "unbounded", 4: "other"}.get(res.status, str(res.status))
    bound = getattr(res, "mip_dual_bound", None)
    if res.x is None:
        return MilpResult(None, None, bound, status, elapsed, n_var)
    x = np.round(res.x[:nx]).astype(int)
    used = np.round(res.x[nx:nx + n_groups]).astype(int)
    # deal each item's real sequences (longest first) to the groups in proportion to x
    pools = {i: sorted(item_members[i], key=lambda k: -lengths[k]) for i in range(n_items)}
    members: dict[int, list[int]] = {p: [] for p in range(n_groups)}
    for j, (i, p) in enumerate(pairs):
        for _ in range(x[j]):
            members[p].append(pools[i].pop(0))
    chosen = [(groups[p], [indices[k] for k in members[p]]) for p in range(n_groups) if used[p]]
    spare = cm.world_size - sum(int(sizes[t]) for t, _ in chosen)
    smallest = int(np.argmin(sizes))
    chosen += [(smallest, [])] * (spare // int(sizes[smallest]))
    position = {g: k for k, g in enumerate(indices)}
    times = group_times(chosen, lambda ms: lengths[[position[g] for g in ms]], cm)
    sol = MicroBatchSolution(chosen, max(times), "milp", {"status": status, "objective_s": float(res.fun)})
    return MilpResult(sol, float(res.fun), bound, status, elapsed, n_var)
