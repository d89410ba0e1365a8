"""Fast planner for one micro-batch: which groups (shapes) to form and which sequences each one runs, minimising the
largest group time (the MILP's objective) in milliseconds instead of seconds.

It is a bin packing with variable bin types. For a target makespan C, `pack` decides greedily whether the
micro-batch fits on N GPUs: sequences longest first; each goes to the open group with the least time left after
taking it (best fit, memory checked), else opens the smallest group that runs it within C (a smaller group spends
fewer GPU-seconds per token: less all-to-all, no cross-node traffic) or enlarges an open group when that costs no
more GPUs (keeps memory together). Sequences that fit on the smallest group are poured into the group with the most
time left (a heap), and the shortest are first bundled into chunks of a few hundred tokens (time and memory add
up). A binary search finds the least C that packs, for three opening rules (if none packs, new groups open
larger still); the homogeneous layouts (N/d groups of one shape, filled LPT) are candidates too. Spare GPUs become empty one-GPU groups; the groups are refilled
earliest-finish-first and a local search moves or swaps sequences off the slowest group. Checked against the MILP
in tests/test_seqpar_fast.py and benchmarks/flexsp.py (within 2% on 120 micro-batches).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from paraplan.seqpar.costmodel import SeqParCostModel


@dataclass
class MicroBatchSolution:
    """Groups of one micro-batch: (shape index into the cost model, global sequence indices)."""
    groups: list[tuple[int, list[int]]]
    makespan_s: float                  # largest group time (without the micro-batch floor)
    solver: str = "fast"
    notes: dict = field(default_factory=dict)

    def gpus_used(self, cm: SeqParCostModel) -> int:
        return sum(cm.shapes[t].size for t, _ in self.groups)


def group_times(groups, lengths_of, cm: SeqParCostModel) -> list[float]:
    """Exact time of each group (fixed part + its sequences) with the true lengths."""
    out = []
    for t, members in groups:
        if not members:
            out.append(0.0)
            continue
        c = cm.cost_matrix(lengths_of(members))[:, t]
        out.append(float(cm.fixed_s[t] + c.sum()))
    return out


class _Instance:
    """One micro-batch: costs per (sequence, shape) and the data the packing loops read (python lists: faster
    than numpy element access in tight loops)."""

    def __init__(self, lengths: np.ndarray, cm: SeqParCostModel, pour_fraction: float = 0.25):
        self.cm = cm
        seq_costs = cm.cost_matrix(lengths)
        self.beta = list(cm.fixed_s)
        self.caps = [float(c) for c in cm.capacities]
        self.sizes = [int(d) for d in cm.sizes]
        self.n = cm.world_size
        # shapes by size (then by cost) for opening a new group
        self.by_size = sorted(range(len(self.sizes)), key=lambda t: self.sizes[t])
        self.class_sizes = sorted(set(self.sizes))
        self.size_classes = [[t for t in self.by_size if self.sizes[t] == d] for d in self.class_sizes]
        self.class_of = [self.class_sizes.index(d) for d in self.sizes]
        single = seq_costs + np.asarray(self.beta)[None, :]
        self.best_single = single.min(axis=1)
        gpu_seconds = (seq_costs * np.asarray(self.sizes)[None, :]).min(axis=1).sum()
        self._lower_bound = float(max(self.best_single.max(), gpu_seconds / self.n)) if len(lengths) else 0.0
        self.small_len = min(self.caps[t] for t in self.size_classes[0])
        # items: the shortest sequences are packed together in chunks of a few hundred tokens (time and memory
        # add up, so a chunk is exact as an item); long-tail batches have hundreds of them, and the loops below
        # cost per item
        chunk_tokens = min(self.small_len / 4, float(np.sum(lengths)) / (2 * self.n))
        members: list[list[int]] = []
        current, tokens = [], 0
        for k in np.argsort(lengths, kind="stable"):
            k = int(k)
            if lengths[k] > chunk_tokens:
                members.append([k])
                continue
            if current and tokens + lengths[k] > chunk_tokens:
                members.append(current)
                current, tokens = [], 0
            current.append(k)
            tokens += int(lengths[k])
        if current:
            members.append(current)
        self.members = members
        self.costs = np.array([seq_costs[m].sum(axis=0) for m in members]) if members else seq_costs
        self.rows = self.costs.tolist()
        self.len_list = [int(lengths[m].sum()) for m in members]
        self.order = sorted(range(len(members)), key=lambda i: -self.len_list[i])
        # a sequence is "small" when it fits on the smallest group: small ones are poured into the group with the
        # most time left (LPT), big ones packed best-fit (they decide which groups exist)
        self.small_cost = self.costs[:, self.size_classes[0][0]].tolist()
        self.pour_fraction = pour_fraction

    def lower_bound(self) -> float:
        """max(longest single sequence on its best group, GPU-seconds at each sequence's cheapest shape / N)."""
        return self._lower_bound

    def pack(self, target: float, grow: int = 0, prefer_grow: bool = True):
        """Groups as [shape, load, tokens, members] if the micro-batch packs on N GPUs within `target`. A new
        group takes the smallest size that runs its first sequence within the target, or with `grow` the size
        that many steps larger (room for the sequences that follow: less memory fragmentation). Instead of
        opening a group, an open group may grow to the next size when that costs fewer GPUs (or as many, with
        `prefer_grow`)."""
        rows, beta, caps, sizes, lens = self.rows, self.beta, self.caps, self.sizes, self.len_list
        groups: list[list] = []
        used = 0
        heap: list[tuple[float, int]] = []      # (-slack, group) for the pouring phase
        small_limit = 1e-3 * target
        shortest = lens[self.order[-1]]
        pour_limit = self.pour_fraction * target
        pouring = False
        for k in self.order:
            row, s = rows[k], lens[k]
            if not pouring and s <= self.small_len and self.small_cost[k] <= pour_limit:
                pouring = True
                heap = [(-(target - g[1]), i) for i, g in enumerate(groups)]
                heapq.heapify(heap)
            if pouring:
                placed = False
                set_aside = []                       # groups without memory for this one (maybe for the next)
                while heap:
                    neg_slack, gi = heap[0]
                    g = groups[gi]
                    c = row[g[0]]
                    if g[2] + s <= caps[g[0]] and g[1] + c <= target:
                        g[1] += c
                        g[2] += s
                        g[3].append(k)
                        heapq.heapreplace(heap, (-(target - g[1]), gi))
                        placed = True
                        break
                    if -neg_slack < small_limit or g[2] + shortest > caps[g[0]]:
                        heapq.heappop(heap)          # too little time or memory left for any small sequence
                    elif g[2] + s > caps[g[0]]:
                        set_aside.append(heapq.heappop(heap))
                    else:
                        break                        # the roomiest group cannot take it: open a new one
                for item in set_aside:
                    heapq.heappush(heap, item)
                if placed:
                    continue
            else:
                best, best_slack = -1, float("inf")
                for gi, g in enumerate(groups):
                    t = g[0]
                    c = row[t]
                    if g[2] + s <= caps[t]:
                        slack = target - g[1] - c
                        if 0.0 <= slack < best_slack:
                            best, best_slack = gi, slack
                if best >= 0:
                    g = groups[best]
                    g[1] += row[g[0]]
                    g[2] += s
                    g[3].append(k)
                    continue
            # open the smallest group that runs this sequence within the target (cheapest of that size)
            feasible = []                        # per size (ascending): its cheapest shape within the target
            for shapes in self.size_classes:
                best_t, best_c = -1, 0.0
                for t in shapes:
                    c = beta[t] + row[t]
                    if c <= target and (best_t < 0 or c < best_c):
                        best_t, best_c = t, c
                if best_t >= 0:
                    feasible.append((best_t, best_c))
                    if len(feasible) > grow:
                        break
            pick = len(feasible) - 1
            while pick > 0 and used + sizes[feasible[pick][0]] > self.n:
                pick -= 1
            new_extra = sizes[feasible[pick][0]] if feasible else None
            # or enlarge an open group to the next size, if that costs no more GPUs (keeps memory together)
            grown = None                         # (extra GPUs, load after, group, new shape)
            if not pouring:
                for gi, g in enumerate(groups):
                    ci = self.class_of[g[0]]
                    if ci + 1 >= len(self.size_classes):
                        continue
                    extra = self.class_sizes[ci + 1] - sizes[g[0]]
                    if (new_extra is not None and (extra > new_extra or (extra == new_extra and not prefer_grow))
                            or used + extra > self.n):
                        continue
                    if grown is not None and extra > grown[0]:
                        continue
                    for t2 in self.size_classes[ci + 1]:
                        if g[2] + s > caps[t2]:
                            continue
                        load2 = beta[t2] + row[t2] + sum(rows[m][t2] for m in g[3])
                        if load2 <= target and (grown is None or (extra, load2) < grown[:2]):
                            grown = (extra, load2, gi, t2)
            if grown is not None:
                extra, load2, gi, t2 = grown
                g = groups[gi]
                g[0], g[1], g[2] = t2, load2, g[2] + s
                g[3].append(k)
                used += extra
                continue
            if not feasible:
                return None
            choice, choice_cost = feasible[pick]
            used += sizes[choice]
            if used > self.n:
                return None
            groups.append([choice, choice_cost, s, [k]])
            if pouring:
                heapq.heappush(heap, (-(target - choice_cost), len(groups) - 1))
        return groups

    def homogeneous(self, shape: int):
        """N / d groups of one shape, sequences dealt longest first to the least loaded group with memory left
        (LPT): the BatchAda layouts, which the packing above can miss on micro-batches of many similar sequences."""
        rows, caps, lens = self.rows, self.caps, self.len_list
        count = self.n // self.sizes[shape]
        groups = [[shape, 0.0, 0, []] for _ in range(count)]
        heap = [(0.0, i) for i in range(count)]
        for k in self.order:
            set_aside = []
            while heap and groups[heap[0][1]][2] + lens[k] > caps[shape]:
                set_aside.append(heapq.heappop(heap))
            if not heap:
                return None
            _, gi = heap[0]
            g = groups[gi]
            if not g[3]:
                g[1] = self.beta[shape]
            g[1] += rows[k][shape]
            g[2] += lens[k]
            g[3].append(k)
            heapq.heapreplace(heap, (g[1], gi))
            for item in set_aside:
                heapq.heappush(heap, item)
        return groups

    def refit(self, groups: list[list]):
        """The same groups, refilled longest first, each sequence to the group where it would finish earliest
        (memory permitting): LPT for unrelated machines. None if some sequence finds no room."""
        rows, caps, lens, beta = self.rows, self.caps, self.len_list, self.beta
        fresh = [[g[0], 0.0, 0, []] for g in groups]
        for k in self.order:
            best, best_finish = None, float("inf")
            for g in fresh:
                t = g[0]
                if g[2] + lens[k] <= caps[t]:
                    finish = (g[1] if g[3] else beta[t]) + rows[k][t]
                    if finish < best_finish:
                        best, best_finish = g, finish
            if best is None:
                return None
            best[1], best[2] = best_finish, best[2] + lens[k]
            best[3].append(k)
        return fresh

    def improve(self, groups: list[list], max_moves: int = 16, candidates: int = 4) -> list[list]:
        """Move, else swap, one of the `candidates` costliest items of the slowest group to the group where the
        pair's larger time drops most; repeat while the makespan drops (bounded work: this runs every step)."""
        rows, caps, lens, beta = self.rows, self.caps, self.len_list, self.beta
        for _ in range(max_moves):
            loads = [g[1] for g in groups]
            worst = loads.index(max(loads))
            src = groups[worst]
            peak, t_src = src[1], src[0]
            movable = sorted(src[3], key=lambda k: -rows[k][t_src])[:candidates]
            best = None      # (new peak of the pair, k, dest, k2 or -1)
            # a sequence costs the same on every group of a shape: per shape, the least loaded group with room
            by_shape: dict[int, list[tuple[float, int]]] = {}
            for di, dst in enumerate(groups):
                if di != worst:
                    by_shape.setdefault(dst[0], []).append((dst[1] + (0.0 if dst[3] else beta[dst[0]]), di))
            for entries in by_shape.values():
                entries.sort()
            for k in movable:
                after_out = peak - rows[k][t_src] - (beta[t_src] if len(src[3]) == 1 else 0.0)
                for t, entries in by_shape.items():
                    for start, di in entries:
                        if groups[di][2] + lens[k] <= caps[t]:
                            pair = max(after_out, start + rows[k][t])
                            if pair < peak - 1e-12 and (best is None or pair < best[0]):
                                best = (pair, k, di, -1)
                            break
            if best is None:
                partners = sorted((i for i in range(len(groups)) if i != worst and groups[i][3]),
                                  key=lambda i: groups[i][1])[:2 * candidates]   # the least loaded
                for k in movable:
                    for di in partners:
                        dst = groups[di]
                        t = dst[0]
                        for k2 in dst[3]:
                            if lens[k2] >= lens[k]:
                                continue
                            new_src = peak - rows[k][t_src] + rows[k2][t_src]
                            new_dst = dst[1] - rows[k2][t] + rows[k][t]
                            pair = max(new_src, new_dst)
                            if (pair < peak - 1e-12 and (best is None or pair < best[0])
                                    and src[2] - lens[k] + lens[k2] <= caps[t_src]
                                    and dst[2] - lens[k2] + lens[k] <= caps[t]):
                                best = (pair, k, di, k2)
            if best is None:
                break
            _, k, di, k2 = best
            dst = groups[di]
            self._remove(src, k)
            self._add(dst, k)
            if k2 >= 0:
                self._remove(dst, k2)
                self._add(src, k2)
        return groups

    def _add(self, g, k):
        if not g[3]:
            g[1] = self.beta[g[0]]
        g[1] += self.rows[k][g[0]]
        g[2] += self.len_list[k]
        g[3].append(k)

    def _remove(self, g, k):
        g[3].remove(k)
        g[2] -= self.len_list[k]
        g[1] = 0.0 if not g[3] else g[1] - self.rows[k][g[0]]


def solve_fast(lengths, cm: SeqParCostModel, indices=None, rel_tol: float = 1e-2,
               variants: tuple[tuple[int, bool], ...] = ((0, True), (0, False), (1, False)),
               pour_fraction: float = 1.0, good_enough: float = 0.005,
               exact_fallback_max: int = 8, floor_s: float = 0.0) -> MicroBatchSolution | None:
    """Plan one micro-batch; None when some sequence fits no group. `indices` maps local positions to the step's
    sequence indices (default 0..K-1). A micro-batch of at most `exact_fallback_max` sequences that the greedy
    packs only by enlarging groups (memory fragmentation: the split into the smallest groups that fits is a
    partition problem) is also given to the MILP for 50 ms, and its plan kept if better. A makespan below
    `floor_s` (the micro-batch's ZeRO-3 floor) gains nothing, so the search stops there. `variants`: the opening
    rules searched, (sizes to step up, prefer enlarging an open group), best kept; `rel_tol`: the binary search's
    precision (the local search closes the rest)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    indices = list(range(len(lengths))) if indices is None else [int(i) for i in indices]
    inst = _Instance(lengths, cm, pour_fraction)
    if not np.all(np.isfinite(inst.best_single)):
        return None
    floor_lo = max(inst.lower_bound(), floor_s)
    best, best_target, best_makespan = None, None, float("inf")   # best_target None: a homogeneous layout
    smallest_groups_pack = False          # whether opening the smallest fitting groups packs at all
    for grow, prefer_grow in variants:
        found = _search(inst, floor_lo, grow, prefer_grow, rel_tol,
                        beat=None if best is None else best_makespan, try_lo=floor_s >= inst.lower_bound())
        smallest_groups_pack |= grow == 0 and found is not None
        if found is not None:
            makespan = max(g[1] for g in found[0])
            if makespan < best_makespan:
                best, best_target, best_makespan = found[0], found[1], makespan
        if best_makespan <= (1 + good_enough) * floor_lo:
            break                         # within `good_enough` of the lower bound: other variants cannot gain more
    grow = max(g for g, _ in variants)
    while best is None and grow < len(inst.class_sizes):
        grow += 1                         # memory-tight: open larger groups until everything fits
        found = _search(inst, floor_lo, grow, True, rel_tol)
        if found is not None:
            best, best_target = found
            best_makespan = max(g[1] for g in best)
    for shape in range(len(inst.sizes)):
        groups = inst.homogeneous(shape)
        if groups is not None and max(g[1] for g in groups) < best_makespan:
            best, best_target, best_makespan = groups, None, max(g[1] for g in groups)
    if best is None:
        return None
    spare = cm.world_size - sum(inst.sizes[g[0]] for g in best)
    smallest = inst.by_size[0]
    while spare >= inst.sizes[smallest]:
        best.append([smallest, 0.0, 0, []])
        spare -= inst.sizes[smallest]
    makespan = max(g[1] for g in best)
    if makespan > floor_s:
        best = inst.improve(best)
        makespan = max(g[1] for g in best)
    refitted = inst.refit(best) if makespan > floor_s else None
    if refitted is not None and max(g[1] for g in refitted) < 1.05 * makespan:
        refitted = inst.improve(refitted)
        if max(g[1] for g in refitted) < makespan:
            best = refitted
    groups = [(g[0], [indices[k] for item in g[3] for k in inst.members[item]]) for g in best]
    makespan = max(g[1] for g in best)
    if not smallest_groups_pack and len(lengths) <= exact_fallback_max:
        # nearly full memory with few sequences is a partition problem the greedy can miss (e.g. two groups of 8
        # that fit only in one split); a handful of sequences solves exactly in milliseconds
        from paraplan.seqpar.milp import solve_milp     # milp.py builds on this module
        exact = solve_milp(lengths, cm, indices=indices, time_limit_s=0.05).solution
        if exact is not None and exact.makespan_s < makespan:
            return MicroBatchSolution(exact.groups, exact.makespan_s, "fast", {"exact_fallback": True})
    return MicroBatchSolution(groups, makespan, "fast", {"target_s": best_target})


def _search(inst: _Instance, lo: float, grow: int, prefer_grow: bool, rel_tol: float,
            beat: float | None = None, try_lo: bool = False):
    """Least target (within rel_tol) at which the greedy packs: (groups, target) or None. With `beat`, only a
    packing at least 1% faster than that makespan is of interest (one pack tells whether there is one)."""
    if try_lo and beat is None:
        at_floor = inst.pack(lo, grow, prefer_grow)      # packs at the floor: nothing to search
        if at_floor is not None:
            return at_floor, lo
    if beat is not None:
        hi = beat * 0.99
        best = inst.pack(hi, grow, prefer_grow)
        if best is None:
            return None
        target = hi
    else:
        best = inst.pack(1e18, grow, prefer_grow)   # no time limit: memory only
        if best is None:
            return None                   # does not fit in memory on N GPUs at any makespan
        # the memory-only packing's makespan bounds the search from above (kept if nothing better packs)
        hi = target = max(g[1] for g in best)
    lo = min(lo, hi)
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        packed = inst.pack(mid, grow, prefer_grow)
        if packed is None:
            lo = mid
        else:
            hi, best, target = mid, packed, mid
    return best, target
