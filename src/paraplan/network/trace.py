"""Bandwidth traces: a CSV of changes to the cluster's links over time, applied to a ClusterSpec.

Format (header required; '#' lines are comments):

    time_s,link,bandwidth_gbps
    0,inter_node,25            # every group's network link, GB/s per GPU per direction
    600,g1.inter_node,6.25     # node group 1's network only
    1200,g0.inter_node,down    # failed: group 0 can no longer reach other nodes
    1800,g0.inter_node,restore # back to the cluster file's value
    3600,end,                  # end of the trace (default: one more segment as long as the last)

`link` is `inter_node` or `intra_node` (every group), `gN.inter_node` / `gN.intra_node` (node group N of the
cluster file), `gA-gB`, the link between groups A and B (the cluster file's `group_links` entry, else the
slower of their networks), or a node override like the cluster file's `node_links`: `gAnB` (every path of node
B of group A) or `gAnB-gCnD` (the path between two nodes). Links between groups or nodes cannot be `down`: take
a group down instead. A level with several physical links changes as one (its parts are no longer told apart). A bandwidth is GB/s per GPU per direction (`bandwidth_gbit` as the header's third column gives
Gb/s), `down` (or 0) for a failed link, `restore` for the cluster file's value. Rows at the same time apply
together.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

from paraplan.errors import ParaplanError
from paraplan.hetero.estimate import link_between
from paraplan.specs import ClusterSpec
from paraplan.specs.cluster import LinkSpec
from paraplan.specs.topology import NodeLink, first_nodes, group_of_node, node_index, node_links, with_bandwidth

LEVELS = ("inter_node", "intra_node")


@dataclass(frozen=True)
class LinkChange:
    time_s: float
    groups: tuple[int, ...]
    level: str
    bandwidth_gbps: float | None      # None: restore; 0: down


@dataclass(frozen=True)
class Segment:
    """Conditions that hold from start_s to end_s: per group and level, the bandwidth (None = as in the file,
    0 = down)."""
    start_s: float
    end_s: float
    bandwidth: tuple                  # ((group, level, gbps or 0), ...) overrides

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def link_names(cluster: ClusterSpec) -> list[str]:
    n = len(cluster.node_groups)
    return (list(LEVELS) + [f"g{i}.{lv}" for i in range(n) for lv in LEVELS]
            + [f"g{a}-g{b}" for a in range(n) for b in range(a + 1, n)]
            + [f"nodes g{i}n0..g{i}n{g.num_nodes - 1} (gInJ, gInJ-gKnL)" for i, g in enumerate(cluster.node_groups)])


def _node_target(text: str, cluster: ClusterSpec, where: str) -> tuple[tuple[int, ...], str] | None:
    """A node (`g0n5`) or node pair (`g0n3-g1n0`) as global node indices, None when the text names no node."""
    names = text.split("-")
    if not all(re.fullmatch(r"g\d+n\d+", name) for name in names) or len(names) > 2:
        return None
    counts = [g.num_nodes for g in cluster.node_groups]
    nodes = tuple(sorted(node_index(name, counts, where) for name in names))
    if len(set(nodes)) != len(nodes):
        raise ParaplanError(f"{where}: link {text!r} names the same node twice")
    return nodes, "node_link"


def _target(text: str, cluster: ClusterSpec, where: str) -> tuple[tuple[int, ...], str]:
    text = text.strip()
    n = len(cluster.node_groups)
    if text in LEVELS:
        return tuple(range(n)), text
    node = _node_target(text, cluster, where)
    if node is not None:
        return node
    first, dash, second = text.partition("-")
    if dash and all(x.startswith("g") and x[1:].isdigit() and int(x[1:]) < n for x in (first, second)) \
            and first != second:
        a, b = sorted((int(first[1:]), int(second[1:])))
        return (a, b), "between"
    group, _, level = text.partition(".")
    if group.startswith("g") and group[1:].isdigit() and level in LEVELS and int(group[1:]) < n:
        return (int(group[1:]),), level
    raise ParaplanError(f"{where}: link {text!r} does not exist in cluster {cluster.name!r}; known: "
                        f"{', '.join(link_names(cluster))}")


def read_trace(source: str | Path, cluster: ClusterSpec) -> list[Segment]:
    """The segments of a trace file (or CSV text) for `cluster`; ParaplanError naming the line for bad input."""
    path = Path(source) if "\n" not in str(source) else None       # CSV text has lines, a path has none
    if path is not None:
        if not path.is_file():
            raise ParaplanError(f"trace file '{source}' does not exist")
        text, name = path.read_text(), f"trace '{source}'"
    else:
        text, name = str(source), "trace"
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    rows = list(csv.reader(io.StringIO("\n".join(ln for ln in lines if ln.strip()))))
    if not rows:
        raise ParaplanError(f"{name} is empty; expected a header time_s,link,bandwidth_gbps")
    header = [h.strip() for h in rows[0]]
    if len(header) < 3 or header[0] != "time_s" or header[1] != "link" or header[2] not in ("bandwidth_gbps",
                                                                                            "bandwidth_gbit"):
        raise ParaplanError(f"{name}: header must be time_s,link,bandwidth_gbps (or bandwidth_gbit), got "
                            f"{','.join(header)}")
    scale = 1 / 8 if header[2] == "bandwidth_gbit" else 1.0
    changes, end, last_t = [], None, None
    for k, row in enumerate(rows[1:], start=2):
        where = f"{name} row {k}"
        if len(row) < 2:
            raise ParaplanError(f"{where}: expected time_s,link,bandwidth, got {','.join(row)!r}")
        try:
            t = float(row[0])
        except ValueError:
            raise ParaplanError(f"{where}: time_s must be a number of seconds, got {row[0]!r}") from None
        if t < 0 or (last_t is not None and t < last_t):
            raise ParaplanError(f"{where}: times must be >= 0 and in increasing order, got {t:g} after {last_t}")
        last_t = t
        if row[1].strip() == "end":
            end = t
            break
        groups, level = _target(row[1], cluster, where)
        raw = row[2].strip().lower() if len(row) > 2 else ""
        if raw in ("down", "failed", "fail"):
            bw = 0.0
        elif raw == "restore":
            bw = None
        else:
            try:
                bw = float(raw) * scale
            except ValueError:
                raise ParaplanError(f"{where}: bandwidth must be a number, down or restore, got {raw!r}") from None
            if bw < 0:
                raise ParaplanError(f"{where}: bandwidth must be >= 0 (0 = down), got {raw}")
        if level in ("between", "node_link") and bw == 0:
            raise ParaplanError(f"{where}: the link between two groups or nodes cannot be down; take a group "
                                f"down (gN.inter_node,down) or give a bandwidth")
        changes.append(LinkChange(t, groups, level, bw))
    if not changes:
        raise ParaplanError(f"{name} has no link changes")
    times = sorted({c.time_s for c in changes} | {0.0})
    if end is None:
        end = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 3600.0)
    if end <= times[-1]:
        raise ParaplanError(f"{name}: the end ({end:g} s) must come after the last change ({times[-1]:g} s)")
    state: dict = {}
    segments = []
    for i, t in enumerate(times):
        for c in changes:
            if c.time_s == t:
                for g in ((c.groups,) if c.level in ("between", "node_link") else c.groups):
                    if c.bandwidth_gbps is None:
                        state.pop((g, c.level), None)
                    else:
                        state[(g, c.level)] = c.bandwidth_gbps
        stop = times[i + 1] if i + 1 < len(times) else end
        segments.append(Segment(t, stop, tuple(sorted(((g, lv, bw) for (g, lv), bw in state.items()), key=str))))
    return segments


def apply(cluster: ClusterSpec, segment: Segment) -> tuple[ClusterSpec, tuple[int, ...]]:
    """The cluster under a segment's conditions, without the groups cut off by a failed network link, and the
    original index of each group kept."""
    groups, kept = [], []
    overrides = {(g, lv): bw for g, lv, bw in segment.bandwidth}
    for i, g in enumerate(cluster.node_groups):
        if overrides.get((i, "inter_node")) == 0 or overrides.get((i, "intra_node")) == 0:
            continue
        changed = {lv: with_bandwidth(getattr(g, lv), overrides[(i, lv)]) for lv in LEVELS if (i, lv) in overrides}
        groups.append(replace(g, **changed))
        kept.append(i)
    if not groups:
        raise ParaplanError(f"at {segment.start_s:g} s every node group is cut off by failed links")
    links = []                               # links between kept groups that the file or the trace sets
    in_file = dict(cluster.extra.get("group_links", ()))
    for a, b in ((a, b) for a in kept for b in kept if a < b):
        if ((a, b), "between") in overrides:
            link = replace(link_between(cluster, a, b), bandwidth_gbps=overrides[((a, b), "between")])
        elif (a, b) in in_file:
            link = in_file[(a, b)]           # None (down) stays down: routes are found again without cut groups
        else:
            continue
        links.append(((kept.index(a), kept.index(b)), link))
    extra = {"group_links": tuple(links), "node_links": _node_links(cluster, overrides, kept)}
    return ClusterSpec(cluster.name, tuple(groups), cluster.source, extra), tuple(kept)


def _node_links(cluster: ClusterSpec, overrides: dict, kept: list[int]) -> tuple[NodeLink, ...]:
    """The file's node overrides with the trace's on top, renumbered for the groups kept (others dropped)."""
    by_nodes = {o.nodes: o for o in node_links(cluster)}
    for (nodes, level), bw in overrides.items():
        if level == "node_link":
            old = by_nodes.get(nodes)
            link = old.link if old else LinkSpec("-".join(map(str, nodes)), bw, _slowest_latency(cluster, nodes))
            by_nodes[nodes] = NodeLink(nodes, replace(link, bandwidth_gbps=bw), old.names if old else ())
    starts = first_nodes(cluster)
    new_starts = first_nodes(ClusterSpec(cluster.name, tuple(cluster.node_groups[i] for i in kept)))

    def renumber(node: int) -> int | None:
        group = group_of_node(cluster, node)
        return new_starts[kept.index(group)] + node - starts[group] if group in kept else None

    out = []
    for o in by_nodes.values():
        nodes = tuple(renumber(n) for n in o.nodes)
        if None not in nodes:
            out.append(NodeLink(nodes, o.link, o.names))
    return tuple(out)


def _slowest_latency(cluster: ClusterSpec, nodes: tuple[int, ...]) -> float:
    """Latency of a node override a trace adds: the network links' of the nodes' groups."""
    return max(cluster.node_groups[group_of_node(cluster, n)].inter_node.latency_us for n in nodes)
