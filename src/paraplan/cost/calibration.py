"""Calibration constants: per GPU (hardware efficiencies) and per framework (software overheads, defaults).

The numbers live in `catalog/calibration.yaml`, fitted on the measured runs by `benchmarks/fit_calibration.py`.
Nothing here is per model or per run: a constant describes a GPU type or a training framework.
"""
from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass, fields, replace
from importlib import resources

import yaml

from paraplan.cost.measured import Table
from paraplan.specs.loaders import load_gpu


@dataclass(frozen=True)
class Calibration:
    # --- hardware (per GPU type) ---
    clock_scale: float = 1.0               # sustained clock vs the datasheet's (power-capped parts run slower)
    gemm_efficiency: float = 0.80          # fraction of dense peak a large, well-shaped GEMM reaches (MAMF-like)
    gemm_k_half: float = 96.0              # K at which the GEMM main loop reaches half its efficiency (prologue cost)
    fp8_gemm_speedup: float = 1.6          # fp8 over bf16 on large GEMMs (not the 2x of the datasheet: casts, scaling)
    attention_efficiency: float = 0.60     # flash-attention forward at long sequences, fraction of peak
    attention_seq_half: float = 512.0      # sequence length at which attention reaches half of that
    attention_backward_ratio: float = 2.5  # backward FLOPs over forward FLOPs for flash attention (5 matmuls vs 2)
    attention_head_dim_half: float = 0.0   # head dim at which the attention kernel reaches half its efficiency: narrow
                                           # heads do less tensor-core work per softmax element (compute.
                                           # attention_head_dim_factor); 0 = not modelled
    memory_efficiency: float = 0.80        # fraction of HBM bandwidth reached by element-wise kernels
    kernel_floor_s: float = 4e-6           # minimum GPU time of any kernel (launch latency + tail)
    # --- communication (per GPU type / fabric) ---
    intra_node_efficiency: float = 0.78    # large-message bus bandwidth over NVLink, fraction of link spec (vTrain LUT:
                                           # A100 8-GPU all-reduce 229-235 GB/s of 300; H100 ring 370 of 450 = 0.82)
    inter_node_efficiency: float = 0.85    # large-message bus bandwidth over the NICs, fraction of wire speed
    comm_half_size_bytes: float = 11e6     # message size at which a collective reaches half its peak bandwidth: vTrain's
                                           # A100 LUT (20 GB/s @1 MB, 126 @16 MB, 202 @64 MB vs 235 peak) gives 10-14 MB
    collective_latency_s: float = 15e-6    # fixed cost of one collective within a node
    intra_hop_latency_s: float = 0.0       # one NVLink hop of a ring step beyond what comm_half_size_bytes covers
    inter_node_latency_s: float = 8e-6     # one network hop of a collective step (NCCL NET latency: LL128 4 us,
                                           # Simple 14 us, tuning.cc)
    nvls_speedup: float = 1.25             # NVLink SHARP all-reduce over ring on NVSwitch systems (473 vs 370 GB/s)
    overlap_slowdown: float = 0.15         # compute slowdown while a collective runs beside it (Calculon: 15% NVLink)
    # --- software (per framework) ---
    fused_elementwise: float = 1.0         # 1 = every element-wise op is its own kernel; <1 = fraction left by fusion
    attention_kernel_scale: float = 1.0    # the framework's attention kernel vs the GPU's best (SDPA/FA2 vs cuDNN/FA3)
    layer_host_s: float = 0.0              # CPU time to launch one layer's forward (eager frameworks); the GPU waits
                                           # when its own work is shorter.
    backward_host_ratio: float = 2.0       # backward launches about twice the forward's kernels (dgrad + wgrad)
    microbatch_overhead_s: float = 0.0     # per micro-batch per pipeline stage (scheduling, p2p bookkeeping)
    iteration_overhead_s: float = 0.0      # per optimizer step (logging, loss reduce, grad-norm, clipping)
    # --- measured curves (a `paraplan profile` hardware file; empty = the analytic model alone) ---
    gemm_measured: tuple = ()              # ((precision, m, n, k, achieved TFLOP/s), ...): cost/measured.py
    gemm_reference_gpu: str = ""           # the GPU gemm_measured was taken on, when not this one (a built-in table:
                                           # its rates scale by this GPU's peak x clock_scale over the reference's)
    comm_measured: tuple = ()              # ((op, group size, nodes, bytes, seconds), ...): cost/measured.py

    def with_(self, **changes) -> "Calibration":
        return replace(self, **changes)


_FIELDS = {f.name for f in fields(Calibration)}


@functools.cache
def _catalog() -> dict:
    text = resources.files("paraplan").joinpath("catalog", "calibration.yaml").read_text()
    return yaml.safe_load(text) or {}


# XLA's measured matmul table (catalog/measured/README.md): architecture -> the part it is taken to be measured on
# (the table names only the architecture; sm_90's 780 TFLOP/s at 4096^3 matches H100 SXM's MAMF of 794.5)
XLA_TABLE_REFERENCE = {"sm_90": "H100-SXM5-80GB", "sm_100": "B200-SXM-180GB", "gfx942": "MI300X", "gfx950": "MI355X"}


_XLA_DTYPES = {"bf16xbf16->bf16": "bf16", "f8e4m3fnxf8e4m3fn->bf16": "fp8"}


@functools.cache
def builtin_gemm_table(arch: str) -> Table:
    """XLA's measured matmul table for `arch` as cost/measured.py rows (precision, m, n, k, TFLOP/s): its bf16 rows,
    and its e4m3 fp8 rows where they are credible (none above the part's fp8 peak, and fp8 at least as fast as bf16
    at the largest shape; sm_90's exceed the H100's peak and gfx942's run at a sixth of bf16, so fp8 there keeps the
    bf16 shape profile times the calibrated fp8 speed-up). A batch of b products of m x k by k x n is read as one
    m*b x k by k x n product (the same tiles to schedule, the batch counted as tiles as in
    compute.tile_efficiency), which carries the table from m = 4,096 to the 16,384 rows of a training GEMM; shapes
    measured both ways keep the geometric mean of their rates."""
    if arch not in XLA_TABLE_REFERENCE:
        raise ValueError(f"calibration.yaml names gemm_table {arch!r}; known: {sorted(XLA_TABLE_REFERENCE)}")
    text = resources.files("paraplan").joinpath("catalog", "measured", "xla_matmul.csv").read_text()
    rates: dict[str, dict[tuple[int, int, int], list[float]]] = {"bf16": {}, "fp8": {}}
    for row in csv.DictReader(io.StringIO(text)):
        if row["arch"] == arch and row["dtype"] in _XLA_DTYPES:
            shape = (int(row["b"]) * int(row["m"]), int(row["n"]), int(row["k"]))
            rates[_XLA_DTYPES[row["dtype"]]].setdefault(shape, []).append(float(row["tflops"]))
    largest = max(rates["bf16"])
    fp8_peak = load_gpu(XLA_TABLE_REFERENCE[arch]).peak("fp8")
    credible = (rates["fp8"] and max(max(r) for r in rates["fp8"].values()) <= fp8_peak
                and min(rates["fp8"][largest]) >= max(rates["bf16"][largest]))
    return Table((precision, *shape, r[0] if len(r) == 1 else math.exp(sum(map(math.log, r)) / len(r)))
                 for precision in ("bf16", "fp8") if precision == "bf16" or credible
                 for shape, r in sorted(rates[precision].items()))


def calibration_for(gpu_name: str, framework: str, overrides: dict | None = None,
                    catalog: dict | None = None) -> Calibration:
    """Defaults <- `gpus.<gpu>` <- `frameworks.<framework>` <- `overrides` (e.g. a user's profile).
    `catalog` replaces calibration.yaml (the fitting script tries candidate constants this way)."""
    catalog = _catalog() if catalog is None else catalog
    gpus = catalog.get("gpus", {})
    values: dict = dict(gpus.get("default", {}))
    entry = dict(gpus.get(gpu_name, {}))
    if "inherit" in entry:          # a GPU measured too rarely to fit alone borrows its sibling's constants
        values.update(gpus.get(entry.pop("inherit"), {}))
    scale = entry.pop("scale", {})  # ... times a measured hardware ratio (e.g. MAMF GEMM ceilings, B200 vs H100)
    defaults = Calibration()
    values.update({k: values.get(k, getattr(defaults, k, 1.0)) * factor for k, factor in scale.items()})
    values.update(entry)
    values.update(catalog.get("frameworks", {}).get("default", {}))
    values.update(catalog.get("frameworks", {}).get(framework, {}))
    table = values.pop("gemm_table", None)
    values.update(overrides or {})
    if table and not values.get("gemm_measured"):       # a user's own profile replaces the built-in table
        values.update(gemm_measured=builtin_gemm_table(table), gemm_reference_gpu=XLA_TABLE_REFERENCE[table])
    unknown = set(values) - _FIELDS
    if unknown:
        raise ValueError(f"calibration.yaml has unknown keys {sorted(unknown)}")
    return Calibration(**values)
