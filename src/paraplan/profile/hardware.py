"""The hardware profile file written by `paraplan profile` and read by `paraplan estimate --hardware FILE`.

Format (YAML; every section but `measurements` is read back):

    format: paraplan-hardware-profile/1
    created: "2026-11-23T15:02:11Z"
    complete: true                 # false: the time budget ran out; rerun the same command to finish the sweep
    device:                        # what was measured, with what (for people; not read by the cost model)
      kind: cpu                    # cpu | cuda
      name: "Intel(R) Xeon(R) ..." # torch's device name
      host: myhost
      dtype: fp32                  # the dtype the compute benchmarks (and --check) ran in: bf16 on GPUs; fp32 on
                                   # CPUs, whose bf16 GEMMs are emulated. Peaks and bandwidths below are stated in
                                   # the cost model's 16-bit accounting (2 bytes per activation element), so the
                                   # cost model's bf16 numbers stand for this dtype.
      threads: 1                   # CPU threads the compute benchmarks used (--check uses the same)
      software: {python: 3.11.9, torch: 2.13.0, cuda: null, nccl: null, backend: gloo}
      world_size: 2                # processes in the collective benchmarks
      nodes: 1
    gpu:                           # a GPU catalog entry (catalog/gpus.yaml fields): measured peaks and bandwidth,
      name: cpu-myhost             # or the datasheet's when the device is a catalog GPU
      peak_tflops: {bf16: 0.085, fp32: 0.085}
      hbm_gb: 16
      hbm_gbps: 2.1                # copy bandwidth per 2-byte element (a CPU training in fp32: half its bytes/s)
      sm_count: 1                  # streaming multiprocessors; on a CPU, the threads torch used
      sources: ["measured by paraplan profile on myhost, 2026-11-23"]
    node:                          # the node the collectives ran on: devices per node and the measured links
      gpus_per_node: 2             # (cluster-file link fields; bandwidth_gbps is the measured bus bandwidth, so
                                   # calibration sets the link efficiency to 1; latency_us is informative)
      intra_node: {name: measured, bandwidth_gbps: 1.9, latency_us: 41}
      inter_node: null             # not measured (one node); the user's cluster keeps its own
    calibration:                   # Calibration overrides (cost/calibration.py), fitted from the measurements
      gemm_efficiency: 0.93
      gemm_k_half: 12.0
      attention_efficiency: 0.41
      ...
    curves:                        # looked up by the cost model where they cover a query (cost/measured.py)
      gemm: [[fp32, 256, 256, 256, 0.061], ...]               # precision, m, n, k, achieved TFLOP/s
      collectives: [[all_reduce, 2, 1, 1048576, 0.0012], ...]  # op, group size, nodes, bytes (nccl-tests S), s
    measurements:                  # raw: every point measured, its samples (seconds) and derived numbers
      - bench: gemm
        key: gemm/fp32/256x256x256
        precision: fp32
        m: 256
        n: 256
        k: 256
        seconds: 0.00042           # timing.typical of the samples: the median on a GPU, the fastest on a CPU
        samples: [0.00042, 0.00043, 0.00042]
        flops: 33550000.0
        tflops: 0.07987

Applying a profile (`apply_hardware`): the cluster's GPU becomes the profile's, the links the profile measured
replace the cluster's, and the calibration is the catalog's for that GPU and framework with the profile's
constants and curves on top. Without a cluster, the profiled node itself is the cluster.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.cost.measured import Table
from paraplan.errors import ParaplanError
from paraplan.specs import ClusterSpec
from paraplan.specs._input import _check_keys, _int, _mapping, _read_mapping
from paraplan.specs.cluster import GPUSpec, LinkSpec, NodeGroup
from paraplan.specs.cluster_links import link_from_dict
from paraplan.specs.loaders import _gpu_from_entry

FORMAT = "paraplan-hardware-profile/1"
SECTIONS = {"format", "created", "complete", "device", "gpu", "node", "calibration", "curves", "measurements"}
LINK_LEVELS = ("intra_node", "inter_node")
CURVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
GEMM_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
# what a profile may set: the hardware constants of Calibration, never a framework's software overheads
HARDWARE_FIELDS = ("clock_scale", "gemm_efficiency", "gemm_k_half", "fp8_gemm_speedup", "attention_efficiency",
                   "attention_seq_half", "attention_backward_ratio", "memory_efficiency", "kernel_floor_s",
                   "intra_node_efficiency", "inter_node_efficiency", "comm_half_size_bytes", "collective_latency_s",
                   "intra_hop_latency_s", "inter_node_latency_s", "nvls_speedup")


@dataclass(frozen=True)
class HardwareProfile:
    path: str
    gpu: GPUSpec
    gpus_per_node: int
    links: dict                   # measured link levels only: "intra_node" / "inter_node" -> LinkSpec
    overrides: dict               # Calibration fields: the fitted constants and the curves (as tuples)
    device: dict
    complete: bool

    def calibration(self, framework: str) -> Calibration:
        """The catalog's constants for this GPU and `framework`, with the profile's on top."""
        return calibration_for(self.gpu.name, framework, self.overrides)


def load_hardware(path: str | Path) -> HardwareProfile:
    """Read and check a hardware profile file; any problem is one ParaplanError naming the file and the field."""
    path = Path(path).expanduser()
    data = _read_mapping(path, "hardware profile")
    where = f"hardware profile '{path}'"
    _check_keys(data, SECTIONS, where)
    if data.get("format") != FORMAT:
        raise ParaplanError(f"{where}: field 'format' must be '{FORMAT}', got {data.get('format')!r}")
    for section in ("gpu", "node", "calibration"):
        if section not in data:
            raise ParaplanError(f"{where}: section '{section}' is missing")
    try:
        gpu = _gpu_from_entry(_mapping(data["gpu"], "gpu", where))
    except (ParaplanError, KeyError, TypeError) as exc:
        raise ParaplanError(f"{where}: section 'gpu': {exc}") from None
    node = _mapping(data["node"], "node", where)
    _check_keys(node, {"gpus_per_node", *LINK_LEVELS}, f"{where} (node)")
    links = {level: link_from_dict(node[level], level, f"{where} (node)")
             for level in LINK_LEVELS if node.get(level) is not None}
    overrides = _calibration_overrides(_mapping(data["calibration"], "calibration", where), where)
    overrides.update(_curves(data.get("curves") or {}, where))
    return HardwareProfile(path=str(path), gpu=gpu,
                           gpus_per_node=_int(node.get("gpus_per_node"), "node.gpus_per_node", where),
                           links=links, overrides=overrides, device=dict(data.get("device") or {}),
                           complete=bool(data.get("complete", True)))


def _calibration_overrides(section: dict, where: str) -> dict:
    _check_keys(section, set(HARDWARE_FIELDS), f"{where} (calibration)")
    out = {}
    for name, value in section.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ParaplanError(f"{where}: field 'calibration.{name}' must be a number >= 0, got {value!r}")
        out[name] = float(value)
    return out


def _curves(section: Any, where: str) -> dict:
    section = _mapping(section, "curves", where)
    _check_keys(section, {"gemm", "collectives"}, f"{where} (curves)")
    gemm, comm = [], []
    for i, row in enumerate(section.get("gemm") or []):
        ok = (isinstance(row, list) and len(row) == 5 and row[0] in GEMM_PRECISIONS
              and all(_positive(v) for v in row[1:]))
        if not ok:
            raise ParaplanError(f"{where}: curves.gemm[{i}] must be [precision, m, n, k, tflops] with precision in "
                                f"{', '.join(GEMM_PRECISIONS)} and positive numbers, got {row!r}")
        gemm.append((row[0], int(row[1]), int(row[2]), int(row[3]), float(row[4])))
    for i, row in enumerate(section.get("collectives") or []):
        ok = (isinstance(row, list) and len(row) == 5 and row[0] in CURVE_OPS
              and all(_positive(v) for v in row[1:]))
        if not ok:
            raise ParaplanError(f"{where}: curves.collectives[{i}] must be [op, group size, nodes, bytes, seconds] "
                                f"with op in {', '.join(CURVE_OPS)} and positive numbers, got {row!r}")
        comm.append((row[0], int(row[1]), int(row[2]), float(row[3]), float(row[4])))
    return {"gemm_measured": Table(gemm), "comm_measured": Table(comm)}


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def apply_hardware(profile: HardwareProfile, cluster: ClusterSpec | None = None,
                   num_gpus: int | None = None) -> ClusterSpec:
    """`cluster` running on the profiled hardware: its GPU is the profile's and the links the profile measured
    replace its own. Without a cluster: `num_gpus` devices on nodes like the profiled one (more than one node
    needs a measured inter-node link)."""
    where = f"hardware profile '{profile.path}'"
    if cluster is None:
        num_gpus = num_gpus or profile.gpus_per_node
        if num_gpus > profile.gpus_per_node and "inter_node" not in profile.links:
            raise ParaplanError(f"{where} measured one node of {profile.gpus_per_node} devices and no inter-node "
                                f"link; {num_gpus} devices need --cluster (its inter-node link is used)")
        intra = profile.links.get("intra_node") or LinkSpec("not-measured", 1.0, 0.0)
        per_node = min(num_gpus, profile.gpus_per_node)
        group = NodeGroup(profile.gpu, -(-num_gpus // per_node), per_node, intra,
                          profile.links.get("inter_node", intra))
        return ClusterSpec(f"{profile.gpu.name}x{num_gpus}", (group,), f"hardware profile {profile.path}")
    if not cluster.is_homogeneous:
        raise ParaplanError(f"{where} describes one node type; cluster '{cluster.name}' mixes several")
    g = cluster.primary
    group = NodeGroup(profile.gpu, g.num_nodes, g.gpus_per_node, profile.links.get("intra_node", g.intra_node),
                      profile.links.get("inter_node", g.inter_node))
    return ClusterSpec(cluster.name, (group,), f"{cluster.source}; hardware profile {profile.path}".lstrip("; "),
                       dict(cluster.extra))


def write_hardware(document: dict, path: str | Path) -> None:
    """Write a profile document (built by fit.profile_document) as YAML, rows of curves on one line each."""
    path = Path(path)
    # one constant per line; mappings of plain values (device, links) and rows of curves on one line each
    text = "".join(yaml.safe_dump({key: value}, sort_keys=False, width=120,
                                  default_flow_style=None if key in ("device", "gpu", "node", "curves",
                                                                     "measurements") else False)
                   for key, value in document.items())
    try:
        path.write_text(f"# paraplan hardware profile: format in paraplan/profile/hardware.py\n{text}")
    except OSError as exc:
        raise ParaplanError(f"cannot write hardware profile '{path}': {exc.strerror or exc}") from None

