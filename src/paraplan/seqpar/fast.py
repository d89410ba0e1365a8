"""Fast planner for one micro-batch: which groups (shapes) to form and which sequences each one runs, minimising the
largest group time (the MILP's objective) in milliseconds instead of seconds.

It is a bin packing with variable bin types. For a target makespan C, `pack` decides greedily whether the
micro-batch fits on N GPUs: sequences longest first; each goes to the open group with the least time left after
taking it (best fit, memory checked), else opens the smallest group that runs it within C (a smaller group spends
fewer GPU-seconds per token: less all-to-all, no cross-node traffic) or enlarges an open group when that costs no
more GPUs (keeps memory together). Sequences that fit on the smallest group are poured into the group with the most
time left (a heap), and the shortest are first bundled into chunks of a few hundred tokens (time and memory add
up). A binary search finds the least C that packs, for three opening rules (if none packs, new groups open
larger still); the homogeneous layouts (N/d groups of one shape, filled LPT) are candidates too, unless a bound
says they cannot win. Spare GPUs become empty one-GPU groups; the groups are refilled earliest-finish-first and a
local search moves or swaps sequences off the slowest group. A micro-batch of at most 8 sequences that packs only
by enlarging groups (memory fragmentation) is also solved exactly by `solve_small`, a DP over its subsets. Checked
against the MILP in tests/test_seqpar_fast.py and benchmarks/flexsp.py (within 2% on 120 micro-batches).
"""
from __future__ import annotations

import functools
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

    def __init__(self, lengths: np.ndarray, cm: SeqParCostModel, pour_fraction: float = 0.25,
                 seq_costs: np.ndarray | None = None):
        self.cm = cm
        if seq_costs is None:
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
        length_list = lengths.tolist()
        chunk_tokens = min(self.small_len / 4, float(sum(length_list)) / (2 * self.n))
        members: list[list[int]] = []
        current, tokens = [], 0
        for k in np.argsort(lengths, kind="stable").tolist():
            s = length_list[k]
            if s > chunk_tokens:
                members.append([k])
                continue
            if current and tokens + s > chunk_tokens:
                members.append(current)
                current, tokens = [], 0
            current.append(k)
            tokens += s
        if current:
            members.append(current)
        self.members = members
        if members:
            flat = [k for m in members for k in m]
            starts = np.cumsum([0] + [len(m) for m in members[:-1]])
            self.costs = np.add.reduceat(seq_costs[flat], starts, axis=0)
        else:
            self.costs = seq_costs
        self.rows = self.costs.tolist()
        self.len_list = [sum(length_list[k] for k in m) for m in members]
        self.len_arr = np.array(self.len_list, dtype=np.int64)
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
        # groups set aside for want of memory, by room left: sequences come longest first, so one goes back to
        # the heap once a sequence it can hold comes (until then nothing changes it)
        parked: list[tuple[float, tuple[float, int]]] = []
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
                while parked and -parked[0][0] >= s:
                    heapq.heappush(heap, heapq.heappop(parked)[1])
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
                        heapq.heappush(parked, (g[2] - caps[g[0]], heapq.heappop(heap)))   # maybe for a later one
                    else:
                        break                        # the roomiest group cannot take it: open a new one
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

    def homogeneous_bounds(self) -> list[float]:
        """Per shape, a lower bound on the makespan of `homogeneous(shape)`: its costliest item alone, and the
        total spread evenly over its N / d groups (inf where some item does not fit the shape)."""
        count = self.n // np.asarray(self.sizes)
        bound = np.maximum(self.costs.max(axis=0) + np.asarray(self.beta), self.costs.sum(axis=0) / count)
        return (bound * (1 - 1e-9)).tolist()

    def refit(self, groups: list[list]):
        """The same groups, refilled longest first, each sequence to the group where it would finish earliest
        (memory permitting; the first such group on a tie): LPT for unrelated machines. None if some sequence finds
        no room. A sequence costs the same on every group of a shape, so per shape only the group that is free
        first (with room) is a candidate: a heap per shape of (time so far, group)."""
        rows, caps, lens, beta = self.rows, self.caps, self.len_list, self.beta
        fresh = [[g[0], 0.0, 0, []] for g in groups]
        heaps: dict[int, list[tuple[float, int]]] = {}
        for gi, g in enumerate(fresh):
            heaps.setdefault(g[0], []).append((beta[g[0]], gi))     # an empty group starts with its fixed part
        for heap in heaps.values():
            heapq.heapify(heap)
        shortest = lens[self.order[-1]] if self.order else 0
        for k in self.order:
            s, row = lens[k], rows[k]
            best, best_finish, best_heap = -1, float("inf"), None
            aside = []                           # (heap, entry): groups without room for this sequence
            for t, heap in heaps.items():
                cap = caps[t]
                while heap and fresh[heap[0][1]][2] + s > cap:
                    entry = heapq.heappop(heap)
                    if fresh[entry[1]][2] + shortest <= cap:
                        aside.append((heap, entry))   # room for a shorter one later (else full for good)
                if heap:
                    start, gi = heap[0]
                    finish = start + row[t]
                    if finish < best_finish or (finish == best_finish and gi < best):
                        best, best_finish, best_heap = gi, finish, heap
            if best < 0 or best_finish == float("inf"):
                return None
            g = fresh[best]
            g[1], g[2] = best_finish, g[2] + s
            g[3].append(k)
            heapq.heapreplace(best_heap, (best_finish, best))        # it was that heap's top
            for heap, entry in aside:
                heapq.heappush(heap, entry)
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
                best = self._best_swap(groups, worst, movable, 2 * candidates)
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

    def _best_swap(self, groups: list[list], worst: int, movable: list[int], partners: int):
        """The swap of a `movable` item of the slowest group with a shorter one of the `partners` least loaded
        groups that lowers the pair's larger time most: (new peak of the pair, k, dest, k2), or None. Ties go to
        the first movable item, then the first partner, then its first member."""
        chosen = [i for _, i in heapq.nsmallest(            # the least loaded (the first of equals)
            partners, [(g[1], i) for i, g in enumerate(groups) if i != worst and g[3]])]
        if not chosen or not movable:
            return None
        if len(movable) * sum(len(groups[di][3]) for di in chosen) <= 256:
            return self._best_swap_loop(groups, worst, movable, chosen)
        return self._best_swap_vectorised(groups, worst, movable, chosen)

    def _best_swap_vectorised(self, groups: list[list], worst: int, movable: list[int], chosen: list[int]):
        """`_best_swap` over the members of the `chosen` groups, all pairs at once."""
        src = groups[worst]
        peak, t_src = src[1], src[0]
        flat, owner = [], []
        for pos, di in enumerate(chosen):
            flat.extend(groups[di][3])
            owner.extend([pos] * len(groups[di][3]))
        costs, lens, caps = self.costs, self.len_arr, self.caps
        owner_arr = np.array(owner)
        d_shape = np.array([groups[di][0] for di in chosen])[owner_arr]
        d_load = np.array([groups[di][1] for di in chosen])[owner_arr]
        d_mem = np.array([groups[di][2] for di in chosen])[owner_arr]
        d_cap = np.array(caps)[d_shape]
        k2 = np.array(flat)
        mv = np.array(movable)
        len2, len1 = lens[k2], lens[mv]
        # the same arithmetic, in the same order, as one pair at a time would do
        new_src = (peak - costs[mv, t_src])[:, None] + costs[k2, t_src][None, :]
        new_dst = (d_load - costs[k2, d_shape])[None, :] + costs[mv[:, None], d_shape[None, :]]
        pair = np.maximum(new_src, new_dst)
        ok = ((len2[None, :] < len1[:, None]) & (pair < peak - 1e-12)
              & ((src[2] - len1)[:, None] + len2[None, :] <= caps[t_src])
              & ((d_mem - len2)[None, :] + len1[:, None] <= d_cap[None, :]))
        if not ok.any():
            return None
        masked = np.where(ok, pair, np.inf)
        col = masked.argmin(axis=1)
        row_best = masked[np.arange(len(movable)), col]
        i = int(row_best.argmin())
        j = int(col[i])
        return float(row_best[i]), movable[i], chosen[owner[j]], flat[j]

    def _best_swap_loop(self, groups: list[list], worst: int, movable: list[int], chosen: list[int]):
        """`_best_swap` one pair at a time (faster than numpy on a few candidates; the same result)."""
        rows, caps, lens = self.rows, self.caps, self.len_list
        src = groups[worst]
        peak, t_src = src[1], src[0]
        cap_src = caps[t_src]
        best, bound = None, peak - 1e-12
        for k in movable:
            row_k, len_k = rows[k], lens[k]
            out = peak - row_k[t_src]
            room_src = cap_src - src[2] + len_k
            for di in chosen:
                dst = groups[di]
                t = dst[0]
                load, into = dst[1], row_k[t]
                room_dst = caps[t] - dst[2] - len_k
                for k2 in dst[3]:
                    len2 = lens[k2]
                    if len2 >= len_k:
                        continue
                    row2 = rows[k2]
                    new_src = out + row2[t_src]
                    new_dst = load - row2[t] + into
                    pair = new_src if new_src > new_dst else new_dst
                    if pair < bound and len2 <= room_src and room_dst + len2 >= 0:
                        best, bound = (pair, k, di, k2), pair
        return best

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
               exact_max: int = 8, floor_s: float = 0.0,
               seq_costs: np.ndarray | None = None) -> MicroBatchSolution | None:
    """Plan one micro-batch; None when some sequence fits no group. `indices` maps local positions to the step's
    sequence indices (default 0..K-1). A micro-batch of at most `exact_max` sequences that the greedy packs only
    by enlarging groups (memory fragmentation: the split into the smallest groups that fits is a partition
    problem) is also solved exactly by `solve_small` (a DP over its subsets, about a millisecond), and that plan
    kept if better. A makespan below
    `floor_s` (the micro-batch's ZeRO-3 floor) gains nothing, so the search stops there. `variants`: the opening
    rules searched, (sizes to step up, prefer enlarging an open group), best kept; `rel_tol`: the binary search's
    precision (the local search closes the rest). `seq_costs`: cm.cost_matrix(lengths), when the caller has it."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    indices = list(range(len(lengths))) if indices is None else [int(i) for i in indices]
    inst = _Instance(lengths, cm, pour_fraction, seq_costs)
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
    bounds = inst.homogeneous_bounds()
    for shape in range(len(inst.sizes)):
        if bounds[shape] >= best_makespan:
            continue                      # cannot beat the best plan: skip the layout
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
    if not smallest_groups_pack and len(lengths) <= exact_max:
        # nearly full memory with few sequences is a partition problem the greedy can miss (e.g. two groups of 8
        # that fit only in one split); a handful of sequences solves exactly in a millisecond
        exact = solve_small(lengths, cm, indices, seq_costs)
        if exact is not None and exact.makespan_s < makespan:
            exact.notes["exact_fallback"] = True
            return exact
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


@functools.lru_cache(maxsize=16)
def _subset_layers(n: int):
    """For the DP over the subsets of n items: per popcount, the (mask, block, rest) triples where the block holds
    the mask's lowest item (each split of a mask into its first group and the rest, once), grouped by mask, and
    where each mask's triples start."""
    layers = []
    for count in range(1, n + 1):
        masks, blocks, rests, starts = [], [], [], []
        for mask in range(1, 1 << n):
            if bin(mask).count("1") != count:
                continue
            low = mask & -mask
            starts.append(len(blocks))
            masks.append(mask)
            sub = mask
            while sub:                     # every submask, largest first
                if sub & low:
                    blocks.append(sub)
                    rests.append(mask ^ sub)
                sub = (sub - 1) & mask
        layers.append((np.array(masks), np.array(blocks), np.array(rests), np.array(starts)))
    members = ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(float)   # subset x item
    return layers, members


def solve_small(lengths, cm: SeqParCostModel, indices=None,
                seq_costs: np.ndarray | None = None) -> MicroBatchSolution | None:
    """The optimal plan of a micro-batch of a few sequences (the MILP's model: groups of any shapes, sizes summing
    to at most N, least makespan), by a DP over the 2^K subsets of its sequences: for a makespan C, the fewest
    GPUs that cover a set of sequences with groups finishing within C (each group the smallest shape that runs its
    block within C and holds it in memory); the least C, among the block times, at which that fits on N GPUs is
    found by bisection. Deterministic, about a millisecond for 8 sequences. None when some sequence fits no group."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    costs = cm.cost_matrix(lengths) if seq_costs is None else np.asarray(seq_costs)
    layers, members = _subset_layers(n)
    sizes = cm.sizes.astype(float)
    tokens = members @ lengths.astype(float)                                   # per subset
    finite = np.where(np.isfinite(costs), costs, 0.0)
    times = members @ finite + np.asarray(cm.fixed_s)[None, :]                 # subset x shape
    times = np.where(tokens[:, None] <= cm.capacities[None, :], times, np.inf)
    times[0] = np.inf
    full = (1 << n) - 1

    def fewest_gpus(limit: float) -> tuple[np.ndarray, np.ndarray]:
        need = np.where(times <= limit, sizes[None, :], np.inf).min(axis=1)     # smallest group per block
        gpus = np.full(1 << n, np.inf)
        gpus[0] = 0.0
        for masks, blocks, rests, starts in layers:
            gpus[masks] = np.minimum.reduceat(need[blocks] + gpus[rests], starts)
        return gpus, need

    candidates = np.unique(times[np.isfinite(times)])
    singles = times[1 << np.arange(n)].min(axis=1)
    if not np.all(np.isfinite(singles)):
        return None
    lo = int(np.searchsorted(candidates, singles.max()))     # no makespan below the slowest single sequence
    hi = len(candidates) - 1
    if fewest_gpus(candidates[hi])[0][full] > cm.world_size:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fewest_gpus(candidates[mid])[0][full] <= cm.world_size:
            hi = mid
        else:
            lo = mid + 1
    limit = candidates[lo]
    gpus, need = fewest_gpus(limit)
    groups, mask = [], full
    sizes_list = cm.sizes.tolist()
    while mask:
        masks, blocks, rests, starts = layers[bin(mask).count("1") - 1]
        at = int(np.searchsorted(masks, mask))
        stop = starts[at + 1] if at + 1 < len(starts) else len(blocks)
        for j in range(starts[at], stop):
            if need[blocks[j]] + gpus[rests[j]] == gpus[mask]:
                block = int(blocks[j])
                fits = [t for t in range(len(sizes_list)) if times[block, t] <= limit
                        and sizes_list[t] == need[block]]
                shape = min(fits, key=lambda t: (times[block, t], t))
                groups.append((shape, [k for k in range(n) if block >> k & 1]))
                mask = int(rests[j])
                break
    spare = cm.world_size - sum(sizes_list[t] for t, _ in groups)
    smallest = min(range(len(sizes_list)), key=lambda t: sizes_list[t])
    groups += [(smallest, []) for _ in range(spare // sizes_list[smallest])]
    rows = costs.tolist()
    makespan = max(cm.fixed_s[t] + sum(rows[k][t] for k in ms) for t, ms in groups if ms)
    return MicroBatchSolution([(t, [indices[k] for k in ms]) for t, ms in groups], float(makespan), "fast",
                              {"exact": True})
