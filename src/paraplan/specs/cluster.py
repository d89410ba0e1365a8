"""ClusterSpec: GPUs (from the catalog), how they are grouped in nodes, and the links at each level."""
from __future__ import annotations

from functools import cached_property
from dataclasses import dataclass, field, replace

from paraplan.errors import ParaplanError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


@dataclass(frozen=True)
class GPUSpec:
    """One catalog entry. Peak numbers are dense (no 2:4 sparsity) tensor-core TFLOP/s, from the vendor datasheet."""
    name: str
    peak_tflops: dict[str, float] = field(hash=False)  # precision -> dense TFLOP/s
    hbm_gib: float                    # usable capacity as marketed (GB), converted to GiB by the loader
    hbm_gbps: float                   # HBM bandwidth, GB/s
    sm_count: int = 108
    vendor: str = "nvidia"
    sources: tuple[str, ...] = ()

    def peak(self, precision: str) -> float:
        """Peak TFLOP/s for `precision`; fp8 falls back to bf16 on GPUs without fp8 tensor cores."""
        if precision in self.peak_tflops:
            return self.peak_tflops[precision]
        if precision == "bf16" and "fp16" in self.peak_tflops:
            return self.peak_tflops["fp16"]
        if precision == "fp8":
            return self.peak("bf16")
        raise ParaplanError(f"GPU {self.name} has no peak for precision {precision!r}; known: {sorted(self.peak_tflops)}")


@dataclass(frozen=True)
class LinkSpec:
    """A link level as seen by one GPU: bandwidth per GPU per direction (GB/s), latency per collective hop (us)."""
    name: str
    bandwidth_gbps: float             # GB/s per GPU, one direction (NVLink A100: 300; IB NDR400: 50)
    latency_us: float
    nvls: bool = False                # NVLink SHARP in-switch reduction available (H100/H200/B200 NVSwitch)
    # two-tier fabric (inter-node links): nodes under one leaf switch, and the leaf's downlink:uplink ratio
    nodes_per_leaf: int | None = None
    oversubscription: float = 1.0
    # several physical links at this level (specs.topology.combine_links): this LinkSpec is then their best
    # usable combination and `parts` every declared link; a link cannot carry traffic while one it names in
    # `exclusive_with` does (e.g. PCIe peer-to-peer and a NIC behind the same PCIe switch)
    parts: tuple["LinkSpec", ...] = ()
    exclusive_with: tuple[str, ...] = ()

    def __post_init__(self):
        if self.bandwidth_gbps <= 0:
            raise ParaplanError(f"link {self.name!r}: bandwidth_gbps must be > 0, got {self.bandwidth_gbps}")
        if self.nodes_per_leaf is not None and self.nodes_per_leaf < 1:
            raise ParaplanError(f"link {self.name!r}: nodes_per_leaf must be >= 1, got {self.nodes_per_leaf}")
        if self.oversubscription < 1:
            raise ParaplanError(f"link {self.name!r}: oversubscription (downlink:uplink) must be >= 1, got "
                                f"{self.oversubscription}")

    def spine_factor(self, op: str, nodes: int) -> float:
        """Share of the NIC bandwidth a collective over `nodes` nodes keeps on this fabric. A ring runs one channel
        per NIC and crosses each leaf boundary once per channel, so the k nodes of a leaf in the group send g
        channels up through k*g/oversubscription uplinks: the rate drops only when oversubscription > k. An
        all-to-all sends (nodes - k)/nodes of each node's traffic up through 1/oversubscription of its NIC bandwidth."""
        if self.nodes_per_leaf is None or nodes <= self.nodes_per_leaf or self.oversubscription == 1:
            return 1.0
        k = self.nodes_per_leaf
        if op == "all_to_all":
            return 1.0 / max(1.0, self.oversubscription * (nodes - k) / nodes)
        return min(1.0, k / self.oversubscription)

    def p2p_share(self, stage_nodes: int, nodes: int) -> float:
        """Share of the NIC bandwidth a pipeline send keeps when every GPU of a stage of `stage_nodes` nodes sends
        at once to its peer `stage_nodes` nodes further on, in a job of `nodes` nodes. Under one leaf of L nodes
        (g GPUs each) the senders whose peer sits under another leaf are the last min(s, L) nodes, so
        min(s, L) * g NICs share the leaf's L * g / oversubscription uplinks: each keeps
        min(1, L / (oversubscription * min(s, L))), i.e. 1/oversubscription once a stage fills a leaf."""
        if self.nodes_per_leaf is None or nodes <= self.nodes_per_leaf or self.oversubscription == 1:
            return 1.0
        leaf = self.nodes_per_leaf
        return min(1.0, leaf / (self.oversubscription * min(max(1, stage_nodes), leaf)))


@dataclass(frozen=True)
class NodeGroup:
    gpu: GPUSpec
    num_nodes: int
    gpus_per_node: int
    intra_node: LinkSpec
    inter_node: LinkSpec

    def __post_init__(self):
        if self.num_nodes <= 0 or self.gpus_per_node <= 0:
            raise ParaplanError(f"node group of {self.gpu.name}: num_nodes and gpus_per_node must be > 0")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    node_groups: tuple[NodeGroup, ...]
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if not self.node_groups:
            raise ParaplanError(f"cluster {self.name!r} has no node groups")

    @property
    def num_gpus(self) -> int:
        return sum(g.num_gpus for g in self.node_groups)

    @cached_property            # asked on every collective the cost model prices
    def is_homogeneous(self) -> bool:
        first = self.node_groups[0]
        return all(g.gpu == first.gpu and g.gpus_per_node == first.gpus_per_node
                   and g.intra_node == first.intra_node and g.inter_node == first.inter_node for g in self.node_groups)

    @property
    def primary(self) -> NodeGroup:
        """The node group used by the homogeneous cost model."""
        if not self.is_homogeneous:
            raise ParaplanError(f"cluster {self.name!r} mixes node types; the homogeneous estimator needs one type")
        return self.node_groups[0]

    @property
    def gpu(self) -> GPUSpec:
        return self.primary.gpu

    @property
    def gpus_per_node(self) -> int:
        return self.primary.gpus_per_node

    def resized(self, num_gpus: int) -> "ClusterSpec":
        """The same node type with enough nodes for `num_gpus` (a job may use part of a node)."""
        g = self.primary
        nodes = max(1, -(-num_gpus // g.gpus_per_node))
        per_node = min(g.gpus_per_node, num_gpus)
        return ClusterSpec(self.name, (replace(g, num_nodes=nodes, gpus_per_node=per_node),), self.source,
                           dict(self.extra))
