"""Cluster topology beyond one link per level: several physical links between the same GPUs, per-node and
per-node-pair overrides, and the graph that must join every node. Pure functions over specs: the loader
validates files with them, the cost model (cost/comm.py) prices collectives with them.

Nodes are numbered group by group in the cluster file's order (node j of group i is `gInJ`; `nJ` in a one-group
cluster), and a job's ranks fill them from node 0 in rank order (the placement cost/comm.py already assumes).
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, replace

from paraplan.errors import ParaplanError
from paraplan.specs.cluster import ClusterSpec, LinkSpec

MAX_RING_SEARCH_NODES = 8        # rings are searched exactly over at most this many override-touched nodes


# ---- several links per level -----------------------------------------------------------------------------------
def usable_together(links: tuple[LinkSpec, ...]) -> bool:
    """No link of the set names another in `exclusive_with` (in either direction)."""
    names = {link.name for link in links}
    return not any(other in names for link in links for other in link.exclusive_with)


def link_sets(links: tuple[LinkSpec, ...]) -> list[tuple[LinkSpec, ...]]:
    """Every non-empty set of the links that can carry traffic at the same time."""
    return [combo for r in range(1, len(links) + 1) for combo in itertools.combinations(links, r)
            if usable_together(combo)]


def set_bandwidth(links: tuple[LinkSpec, ...]) -> float:
    return sum(link.bandwidth_gbps for link in links)


def combine_links(links: tuple[LinkSpec, ...]) -> LinkSpec:
    """One level's usable link: the set of links with the largest summed bandwidth among those usable together
    (a collective stripes its channels over them). Its name joins theirs with '+', its latency is the slowest of
    them, the fabric keys (leaf/spine) are the fastest one's; `parts` keeps every declared link. One link is
    returned as it is."""
    if len(links) == 1:
        return links[0]
    best = max(link_sets(links), key=set_bandwidth)
    fastest = max(best, key=lambda link: link.bandwidth_gbps)
    return LinkSpec("+".join(link.name for link in best), set_bandwidth(best), max(link.latency_us for link in best),
                    any(link.nvls for link in best), fastest.nodes_per_leaf, fastest.oversubscription, tuple(links))


def with_bandwidth(link: LinkSpec, gbps: float) -> LinkSpec:
    """The level at a new usable bandwidth (a trace's change): its physical links are no longer known apart."""
    return replace(link, bandwidth_gbps=gbps, parts=())


# ---- node names and overrides ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeLink:
    """A `node_links:` entry: one node's slow network (every path touching it), or the path between two nodes
    (a cross-zone pair), per GPU per direction, in place of the NICs' bandwidth."""
    nodes: tuple[int, ...]            # global node indices: one (a node) or two (a pair)
    link: LinkSpec
    names: tuple[str, ...] = ()       # as the file wrote them


def first_nodes(cluster: ClusterSpec) -> list[int]:
    """Global index of each group's node 0."""
    return list(itertools.accumulate((g.num_nodes for g in cluster.node_groups), initial=0))[:-1]


def group_of_node(cluster: ClusterSpec, node: int) -> int:
    """The node group holding global node `node`."""
    return max(i for i, start in enumerate(first_nodes(cluster)) if start <= node)


def node_index(name: str, node_counts: list[int], where: str) -> int:
    """The global index of `gInJ` (or `nJ` in a one-group cluster); ParaplanError for a node that does not exist."""
    m = re.fullmatch(r"(?:g(\d+))?n(\d+)", str(name).strip())
    if m is None or (m.group(1) is None and len(node_counts) > 1):
        raise ParaplanError(f"{where}: node {name!r} must be written gInJ (node J of node group I)"
                            + (" or nJ" if len(node_counts) == 1 else ""))
    group, node = int(m.group(1) or 0), int(m.group(2))
    if group >= len(node_counts) or node >= node_counts[group]:
        known = ", ".join(f"g{i}n0..g{i}n{c - 1}" for i, c in enumerate(node_counts))
        raise ParaplanError(f"{where}: node {name!r} does not exist; nodes: {known}")
    return sum(node_counts[:group]) + node


def node_links(cluster: ClusterSpec) -> tuple[NodeLink, ...]:
    return cluster.extra.get("node_links", ())


# ---- rings over nodes with overrides ---------------------------------------------------------------------------
def _ring_avoids(pairs: set[tuple[int, int]], num_nodes: int) -> bool:
    """Whether a ring through `num_nodes` nodes can be ordered so that no two neighbours form one of `pairs`.
    Nodes no pair touches fit anywhere, so only the touched ones T are ordered: a cyclic order of T needs one
    untouched node inside each of its neighbouring pairs that is forbidden, hence it works when those are at most
    the untouched nodes. Two or three nodes: every pair is a ring neighbour, so no pair can be avoided."""
    if not pairs:
        return True
    if num_nodes <= 3:
        return False
    touched = sorted({n for pair in pairs for n in pair})
    free = num_nodes - len(touched)
    if len(touched) > MAX_RING_SEARCH_NODES:
        return False                            # not searched: priced as if the ring crosses the slow pairs
    head, rest = touched[0], touched[1:]
    for order in itertools.permutations(rest):
        ring = (head, *order)
        blocked = sum((min(a, b), max(a, b)) in pairs for a, b in zip(ring, ring[1:] + ring[:1]))
        if blocked <= free:
            return True
    return False


def ring_bottleneck(nodes: frozenset[int], overrides: tuple[NodeLink, ...],
                    avoidable: bool = True) -> tuple[float, float] | None:
    """(GB/s per GPU, latency us) of the slowest override a collective over `nodes` must cross, None when it
    crosses none. Every ring passes each of its nodes, so a slow node always counts; a slow pair counts only when
    no ring order avoids it (four nodes or more can, _ring_avoids). The ring keeps the largest bandwidth b whose
    slower pairs can all be avoided. `avoidable=False` (all-to-all: every pair talks) counts every override."""
    if len(nodes) < 2:
        return None
    inside = [o for o in overrides if set(o.nodes) <= nodes]
    if not inside:
        return None
    slow_nodes = [o.link for o in inside if len(o.nodes) == 1]
    pairs = {tuple(sorted(o.nodes)): o.link for o in inside if len(o.nodes) == 2}
    crossed = list(slow_nodes)
    if pairs and not avoidable:
        crossed += pairs.values()
    elif pairs:
        # try the fastest outcome first: avoid every slow pair (inf), else every pair slower than the next speed
        for keep in [float("inf")] + sorted({link.bandwidth_gbps for link in pairs.values()}, reverse=True):
            if _ring_avoids({p for p, link in pairs.items() if link.bandwidth_gbps < keep}, len(nodes)):
                crossed += [link for link in pairs.values() if link.bandwidth_gbps >= keep]
                break
    if not crossed:
        return None
    return min(link.bandwidth_gbps for link in crossed), max(link.latency_us for link in crossed)


@functools.lru_cache(maxsize=4096)
def slowest_group_link(size: int, stride: int, gpus_per_node: int, world: int, overrides: tuple[NodeLink, ...],
                       avoidable: bool = True) -> tuple[float, float] | None:
    """The worst ring_bottleneck over every group of `size` ranks `stride` apart in a job of `world` ranks packed
    from node 0 in rank order: a synchronous step waits for its slowest group."""
    touched = {n for o in overrides for n in o.nodes}
    worst = None
    seen = set()
    for leader in range(world):
        if (leader // stride) % size:
            continue
        nodes = frozenset((leader + i * stride) // gpus_per_node for i in range(size))
        if nodes in seen or not nodes & touched:
            continue
        seen.add(nodes)
        hop = ring_bottleneck(nodes, overrides, avoidable)
        if hop is not None and (worst is None or hop < worst):
            worst = hop
    return worst


def sends_bottleneck(pairs: frozenset[tuple[int, int]], overrides: tuple[NodeLink, ...]) -> tuple[float, float] | None:
    """The slowest override on any of the (sender node, receiver node) `pairs` that send at once: a slow node at
    either end, or that very pair. Sends within one node cross no network and no override."""
    hit = [o.link for o in overrides for a, b in pairs if a != b
           and (o.nodes in ((a,), (b,)) or o.nodes == (min(a, b), max(a, b)))]
    if not hit:
        return None
    return min(link.bandwidth_gbps for link in hit), max(link.latency_us for link in hit)


# ---- connectivity ----------------------------------------------------------------------------------------------
def group_graph(cluster: ClusterSpec) -> dict[tuple[int, int], LinkSpec | None]:
    """The link between every pair of node groups: a `group_links` entry (None = down), else the slower of their
    network links. Nodes inside a group are joined by its inter_node link, so groups are the graph's vertices."""
    declared = {pair: link for pair, link in cluster.extra.get("group_links", ())}
    n = len(cluster.node_groups)
    out = {}
    for a, b in itertools.combinations(range(n), 2):
        if (a, b) in declared:
            out[(a, b)] = declared[(a, b)]
        else:
            ga, gb = cluster.node_groups[a], cluster.node_groups[b]
            slow = min((ga.inter_node, gb.inter_node), key=lambda link: link.bandwidth_gbps)
            out[(a, b)] = LinkSpec(slow.name, slow.bandwidth_gbps, max(ga.inter_node.latency_us,
                                                                         gb.inter_node.latency_us))
    return out


def widest_path(cluster: ClusterSpec, a: int, b: int) -> LinkSpec | None:
    """The path between groups a and b with the most bandwidth (relayed through other groups where a pair is
    down): its slowest hop's bandwidth, the hops' latencies summed. None when no path exists."""
    graph = group_graph(cluster)
    best: dict[int, tuple[float, float, tuple[str, ...]]] = {a: (float("inf"), 0.0, ())}
    frontier = [a]
    while frontier:                         # few groups: relax until nothing improves
        nxt = []
        for u in frontier:
            bw_u, lat_u, names_u = best[u]
            for (x, y), link in graph.items():
                if link is None or u not in (x, y):
                    continue
                v = y if u == x else x
                cand = (min(bw_u, link.bandwidth_gbps), lat_u + link.latency_us, names_u + (link.name,))
                if v not in best or (cand[0], -cand[1]) > (best[v][0], -best[v][1]):
                    best[v] = cand
                    nxt.append(v)
        frontier = nxt
    if b not in best:
        return None
    bw, lat, names = best[b]
    return LinkSpec("/".join(names), bw, lat)


def check_connected(cluster: ClusterSpec, where: str) -> None:
    """ParaplanError naming the first node group no path reaches from group 0."""
    n = len(cluster.node_groups)
    reached, todo = {0}, [0]
    graph = group_graph(cluster)
    while todo:
        u = todo.pop()
        for (x, y), link in graph.items():
            if link is not None and u in (x, y):
                v = y if u == x else x
                if v not in reached:
                    reached.add(v)
                    todo.append(v)
    lost = [i for i in range(n) if i not in reached]
    if lost:
        raise ParaplanError(f"{where}: node group {lost[0]} is disconnected: group_links mark every path from it "
                            f"to group 0 down; give one of them a bandwidth")
