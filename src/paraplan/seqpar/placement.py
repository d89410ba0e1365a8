"""Placement of a micro-batch's groups on contiguous rank ranges.

Groups larger than a node take whole nodes (their sizes are multiples of a node, costmodel.group_sizes); the rest
go inside one node each, largest first (first fit decreasing). With sizes that divide the node size in a chain
(powers of two: 1, 2, 4, 8) this never fails and gives FlexSP's buddy alignment (a group of 2^j starts at a
multiple of 2^j, FlexSP §5 footnote 4), so a group the cost model prices as intra-node really is.
"""
from __future__ import annotations

from paraplan.errors import ParaplanError


def place_groups(sizes: list[int], world_size: int, gpus_per_node: int) -> list[tuple[int, ...]]:
    """Ranks of each group, in the order of `sizes`. Ranks the groups leave free are not returned."""
    if sum(sizes) > world_size:
        raise ParaplanError(f"groups of {sum(sizes)} GPUs do not fit on {world_size}")
    gpn = min(gpus_per_node, world_size)
    nodes = world_size // gpn
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    ranks: list[tuple[int, ...] | None] = [None] * len(sizes)
    next_node = 0
    free = [gpn] * nodes                 # free GPUs at the end of each node (groups fill a node from its start)
    for i in order:
        d = sizes[i]
        if d > gpn:
            if d % gpn:
                raise ParaplanError(f"a group of {d} GPUs spans part of a node; sizes above {gpn} must be "
                                    f"multiples of {gpn}")
            span = d // gpn
            if next_node + span > nodes:
                raise ParaplanError(f"no {span} free whole nodes for a group of {d} GPUs")
            start = next_node * gpn
            ranks[i] = tuple(range(start, start + d))
            for n in range(next_node, next_node + span):
                free[n] = 0
            next_node += span
            continue
        for n in range(next_node, nodes):
            if free[n] >= d:
                start = n * gpn + (gpn - free[n])
                ranks[i] = tuple(range(start, start + d))
                free[n] -= d
                break
        else:
            raise ParaplanError(f"cannot place a group of {d} GPUs inside one node: groups of sizes "
                                f"{sorted(sizes, reverse=True)} do not pack into nodes of {gpn}")
    return [r for r in ranks]  # type: ignore[misc]
