"""The link parts of a cluster file: a level's link or list of links, `group_links:` and `node_links:`. One-line
ParaplanErrors naming the file and the field, like the rest of specs/loaders.py.

    intra_node: {name: nvlink4, bandwidth_gbps: 450}          # one link, as before
    intra_node:                                               # several physical links between the same GPUs
      - {name: pcie4, bandwidth_gbps: 25, exclusive_with: [nic-loopback]}
      - {name: nic-loopback, bandwidth_gbit: 100}
    group_links: [{groups: [0, 1], bandwidth_gbps: 1.5}, {groups: [0, 2], down: true}]
    node_links: [{nodes: [g0n3, g1n0], bandwidth_gbps: 2}, {node: g0n5, bandwidth_gbit: 25}]
"""
from __future__ import annotations

from typing import Any

from paraplan.errors import ParaplanError
from paraplan.specs._input import _bool, _check_keys, _float, _int, _mapping, _str
from paraplan.specs.cluster import LinkSpec
from paraplan.specs.topology import NodeLink, combine_links, node_index

LINK_FIELDS = {"name", "bandwidth_gbps", "bandwidth_gbit", "latency_us", "nvls", "nodes_per_leaf",
               "oversubscription", "exclusive_with"}
DEFAULT_LATENCY_US = {"intra_node": 3.0, "inter_node": 8.0}


def link_from_dict(d: Any, level: str, where: str, default_name: str | None = None) -> LinkSpec:
    """One link: bandwidth_gbps (GB/s per GPU per direction) or bandwidth_gbit (Gb/s), latency_us, nvls, and the
    two-tier fabric keys. `level` is intra_node or inter_node (it sets the default latency), or names the field."""
    d = _mapping(d, level, where)
    _check_keys(d, LINK_FIELDS, f"{where} ({level})")
    if "bandwidth_gbps" in d:
        bw = _float(d["bandwidth_gbps"], f"{level}.bandwidth_gbps", where)
    elif "bandwidth_gbit" in d:
        bw = _float(d["bandwidth_gbit"], f"{level}.bandwidth_gbit", where) / 8
    else:
        raise ParaplanError(f"{where}: field '{level}.bandwidth_gbps' is missing (GB/s per GPU per direction)")
    exclusive = d.get("exclusive_with", [])
    if not isinstance(exclusive, list) or not all(isinstance(x, str) for x in exclusive):
        raise ParaplanError(f"{where}: field '{level}.exclusive_with' must be a list of link names")
    default_latency = DEFAULT_LATENCY_US.get(level.split("[")[0], DEFAULT_LATENCY_US["inter_node"])
    return LinkSpec(name=_str(d.get("name", default_name or level), f"{level}.name", where), bandwidth_gbps=bw,
                    latency_us=_float(d.get("latency_us", default_latency), f"{level}.latency_us", where,
                                      positive=False),
                    nvls=_bool(d.get("nvls", False), f"{level}.nvls", where),
                    nodes_per_leaf=_int(d["nodes_per_leaf"], f"{level}.nodes_per_leaf", where)
                    if "nodes_per_leaf" in d else None,
                    oversubscription=_float(d.get("oversubscription", 1.0), f"{level}.oversubscription", where),
                    exclusive_with=tuple(exclusive))


def level_from_dict(d: Any, level: str, where: str) -> LinkSpec:
    """A level's link: one mapping (kept exactly as written), or a list of physical links combined into the best
    set usable together (topology.combine_links). Names in a list are unique and `exclusive_with` names exist."""
    if not isinstance(d, list):
        return link_from_dict(d, level, where)
    if not d:
        raise ParaplanError(f"{where}: field '{level}' must be a link mapping or a non-empty list of them")
    links = tuple(link_from_dict(item, f"{level}[{k}]", where, default_name=f"{level}{k}") for k, item in enumerate(d))
    names = [link.name for link in links]
    for link in links:
        if names.count(link.name) > 1:
            raise ParaplanError(f"{where}: link name {link.name!r} is used twice in '{level}'; names must differ")
        for other in link.exclusive_with:
            if other not in names or other == link.name:
                raise ParaplanError(f"{where}: {level} link {link.name!r}: exclusive_with names {other!r}, which is "
                                    f"not another link of this level; links: {', '.join(names)}")
    return combine_links(links)


def _down(item: dict) -> bool:
    """`down: true`, or a bandwidth of 0 or 'down' (as in traces): no direct path."""
    if item.pop("down", False):
        return True
    return any(not isinstance(item.get(key), bool) and item.get(key) in (0, "down")
               for key in ("bandwidth_gbps", "bandwidth_gbit"))


def group_links(raw: Any, n: int, where: str) -> tuple:
    """`group_links:` [{groups: [a, b], bandwidth_gbps: ..., latency_us: ...}]: the link between two node groups
    (a cross-zone or slow-rack path), per GPU per direction, instead of the slower of their network links;
    `down: true` (or bandwidth 0) when the pair has no direct path (traffic is relayed through other groups,
    topology.widest_path). Returns ((a, b), LinkSpec or None) pairs, a < b."""
    if not isinstance(raw, list):
        raise ParaplanError(f"{where}: field 'group_links' must be a list of {{groups: [a, b], bandwidth_gbps: ...}}")
    out = []
    for k, item in enumerate(raw):
        lw = f"{where} group_links[{k}]"
        item = dict(_mapping(item, f"group_links[{k}]", where))
        pair = item.pop("groups", None)
        if (not isinstance(pair, list) or len(pair) != 2 or any(isinstance(g, bool) or not isinstance(g, int)
                                                                 or not 0 <= g < n for g in pair) or pair[0] == pair[1]):
            raise ParaplanError(f"{lw}: 'groups' must name two different node groups among 0..{n - 1}, got {pair!r}")
        out.append(((min(pair), max(pair)), None if _down(item) else link_from_dict(item, "inter_node", lw)))
    return tuple(out)


def node_links(raw: Any, node_counts: list[int], where: str) -> tuple[NodeLink, ...]:
    """`node_links:` [{nodes: [gAnB, gCnD], bandwidth_gbps: ...} | {node: gAnB, bandwidth_gbps: ...}]: the path
    between two nodes, or every path touching one node, per GPU per direction (topology.NodeLink)."""
    if not isinstance(raw, list):
        raise ParaplanError(f"{where}: field 'node_links' must be a list of {{nodes: [g0n1, g1n0], bandwidth_gbps: "
                            f"...}} or {{node: g0n1, bandwidth_gbps: ...}}")
    out = []
    for k, item in enumerate(raw):
        lw = f"{where} node_links[{k}]"
        item = dict(_mapping(item, f"node_links[{k}]", where))
        if ("nodes" in item) == ("node" in item):
            raise ParaplanError(f"{lw}: give either 'nodes: [A, B]' (a node pair) or 'node: A' (one slow node)")
        names = item.pop("nodes") if "nodes" in item else [item.pop("node")]
        if not isinstance(names, list) or len(names) not in (1, 2):
            raise ParaplanError(f"{lw}: 'nodes' must be a list of two node names like [g0n3, g1n0], got {names!r}")
        index = tuple(node_index(name, node_counts, lw) for name in names)
        if len(set(index)) != len(index):
            raise ParaplanError(f"{lw}: 'nodes' names the same node twice: {names!r}")
        label = "-".join(str(x) for x in names)
        out.append(NodeLink(tuple(sorted(index)), link_from_dict(item, "inter_node", lw, default_name=label),
                            tuple(str(x) for x in names)))
    return tuple(out)
