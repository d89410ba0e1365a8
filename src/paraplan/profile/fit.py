"""Measurements -> a hardware profile document: a GPU entry, calibration constants and curves.

Peaks: a device that is a catalog GPU keeps its datasheet peaks and bandwidth, and the measurements set the
efficiencies against them; any other device (a CPU, an unlisted GPU) gets its best measured GEMM throughput as
peak and its copy bandwidth as memory bandwidth. Numbers are stated in the cost model's 16-bit accounting (2 bytes
per element): a device that trains in fp32 moves twice the bytes, so its bandwidth is halved here.

Fits (deterministic: grid searches and non-negative least squares, in relative error):
  GEMM        eff(m, n, k) = gemm_efficiency * tile_efficiency * k / (k + gemm_k_half)     (compute.gemm_time)
  attention   eff(s) = attention_efficiency * s / (s + attention_seq_half); backward / forward time ratio
  memory      memory_efficiency = median element-wise bandwidth / peak; kernel_floor_s = a one-element kernel
  collectives T = collective_latency_s + steps * intra_hop_latency_s + busfactor * (S + comm_half_size_bytes) / B
              over the intra-node groups (comm.collective_time), B the intra-node link bandwidth
"""
from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone

import numpy as np
from scipy.optimize import nnls

from paraplan.cost.comm import BUS_FACTOR
from paraplan.cost.compute import tile_efficiency
from paraplan.errors import ParaplanError
from paraplan.profile.hardware import FORMAT
from paraplan.specs.loaders import load_gpu

BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
_K_HALF_GRID = (0.0,) + tuple(2.0 ** e for e in range(0, 12))
_SEQ_HALF_GRID = (0.0,) + tuple(2.0 ** (e / 2) for e in range(8, 31))


def catalog_gpu_for(device_name: str) -> str | None:
    """The catalog GPU torch's device name denotes ("NVIDIA H100 80GB HBM3" -> H100-SXM5-80GB), if listed.
    Only a full name or family + memory size match: an H100 PCIe must not borrow the SXM part's peaks."""
    name = device_name.removeprefix("NVIDIA ").strip()
    tokens = name.replace("-", " ").split()
    candidates = [name]
    memory = [t for t in tokens if t.upper().endswith("GB")]
    if tokens and memory:
        candidates.append(f"{tokens[0]}-{memory[0]}")
    for candidate in candidates:
        try:
            return load_gpu(candidate).name
        except ParaplanError:
            continue
    return None


def _by_bench(records: list[dict], bench: str) -> list[dict]:
    return [r for r in records if r.get("bench") == bench]


def gpu_entry(records: list[dict], device: dict, dtype: str) -> dict:
    """The catalog entry (gpus.yaml fields) of the profiled device."""
    date = datetime.now(timezone.utc).date().isoformat()
    catalog_name = catalog_gpu_for(device["name"]) if device["kind"] == "cuda" else None
    if catalog_name:
        gpu = load_gpu(catalog_name)
        return {"name": gpu.name, "vendor": gpu.vendor, "peak_tflops": dict(gpu.peak_tflops),
                "hbm_gb": round(gpu.hbm_gib * 2**30 / 1e9, 1), "hbm_gbps": gpu.hbm_gbps, "sm_count": gpu.sm_count,
                "sources": [*gpu.sources, f"efficiencies measured by paraplan profile on {device['host']}, {date}"]}
    peaks = {}
    for r in _by_bench(records, "gemm"):
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r["tflops"])
    if dtype not in peaks:
        raise ParaplanError(f"no GEMM was measured in {dtype}")
    peaks.setdefault("bf16", peaks[dtype])        # the cost model's 16-bit numbers stand for the training dtype
    copies = _by_bench(records, "memory")
    if not copies:
        raise ParaplanError("no memory bandwidth was measured")
    gbps = max(r["gbps"] for r in copies) * 2 / BYTES_PER_ELEMENT[dtype]
    prefix = "cpu" if device["kind"] == "cpu" else "gpu"
    return {"name": f"{prefix}-{device['host']}", "vendor": "measured",
            "peak_tflops": {p: _round(v) for p, v in peaks.items()},
            "hbm_gb": round(device.get("memory_gb") or 1.0, 1), "hbm_gbps": _round(gbps),
            "sm_count": int(device["sm_count"]),
            "sources": [f"measured by paraplan profile on {device['host']} ({device['name']}), {date}; "
                        f"peaks and bandwidth in {dtype}, stated per 2-byte element"]}


def fit_gemm(records: list[dict], peak_tflops: float, sm_count: int, dtype: str, floor_s: float) -> dict:
    rows = [r for r in _by_bench(records, "gemm") if r["precision"] == dtype and r["seconds"] > 3 * floor_s]
    if not rows:
        return {}
    candidates = []
    for k_half in _K_HALF_GRID:
        shape = [tile_efficiency(r["m"], r["n"], 1, sm_count) * r["k"] / (r["k"] + k_half) for r in rows]
        candidates.append((k_half, [math.log(r["tflops"] / peak_tflops / s) for r, s in zip(rows, shape)]))
    k_half, level = _best_curve(candidates)
    return {"gemm_efficiency": _round(level), "gemm_k_half": k_half}


def _best_curve(candidates: list[tuple[float, list[float]]]) -> tuple[float, float]:
    """(half point, level) of the candidate curve that fits `logs` (log of efficiency / shape term) best. The
    level, the efficiency at large sizes, may not pass 1: points that look faster than peak are still on the rising
    part of the curve, and extrapolating past them must not promise more than peak."""
    fits = []
    for half, logs in candidates:
        level = statistics.fmean(logs)
        fits.append((sum((x - level) ** 2 for x in logs), half, level))
    feasible = [f for f in fits if f[2] <= 0.0] or [min(fits, key=lambda f: f[2])]
    _, half, level = min(feasible, key=lambda f: f[0])
    return half, math.exp(min(level, 0.0))


def fit_fp8_speedup(records: list[dict]) -> dict:
    by_shape: dict[tuple, dict] = {}
    for r in _by_bench(records, "gemm"):
        by_shape.setdefault((r["m"], r["n"], r["k"]), {})[r["precision"]] = r["tflops"]
    ratios = [v["fp8"] / v["bf16"] for shape, v in by_shape.items() if "fp8" in v and "bf16" in v
              and min(shape) >= 2048]
    return {"fp8_gemm_speedup": _round(statistics.median(ratios))} if ratios else {}


def fit_attention(records: list[dict], peak_tflops: float, floor_s: float) -> dict:
    rows = [r for r in _by_bench(records, "attention") if r["seconds"] > 3 * floor_s]
    if not rows:
        return {}
    seq_half, level = _best_curve([(h, [math.log(r["tflops"] / peak_tflops * (r["seq_len"] + h) / r["seq_len"])
                                        for r in rows]) for h in _SEQ_HALF_GRID])
    ratio = statistics.median(r["backward_seconds"] / r["seconds"] for r in rows)
    return {"attention_efficiency": _round(level), "attention_seq_half": _round(seq_half),
            "attention_backward_ratio": _round(ratio)}


def fit_memory(records: list[dict], hbm_gbps: float, dtype: str) -> dict:
    out = {}
    tiny = [r["seconds"] for r in _by_bench(records, "elementwise") if r["elements"] == 1]
    if tiny:
        out["kernel_floor_s"] = _round(statistics.median(tiny))
    rates = [r["elements_moved"] * 2 / r["seconds"] / 1e9 for r in _by_bench(records, "elementwise")
             if r["elements"] > 1]
    if rates:
        out["memory_efficiency"] = _round(statistics.median(rates) / hbm_gbps)
    return out


def _steps(op: str, n: int) -> int:
    return 0 if op == "send_recv" else (2 * (n - 1) if op == "all_reduce" else n - 1)


def _bus_factor(op: str, n: int) -> float:
    return 1.0 if op == "send_recv" else BUS_FACTOR[op](n)


def fit_collectives(records: list[dict]) -> tuple[dict, dict]:
    """(links measured: level -> link fields, calibration constants)."""
    intra = [r for r in _by_bench(records, "collective") if r["nodes"] == 1]
    links, constants = {}, {}
    if len(intra) >= 2:
        # T = L0 + steps*Lhop + f*S/B + f*Sh/B: linear in (L0, Lhop, 1/B, Sh/B); rows scaled by 1/T (relative)
        a = np.array([[1.0, _steps(r["op"], r["size"]), _bus_factor(r["op"], r["size"]) * r["bytes"],
                       _bus_factor(r["op"], r["size"])] for r in intra])
        t = np.array([r["seconds"] for r in intra])
        x, _ = nnls(a / t[:, None], np.ones_like(t))
        latency, hop, inv_bw, half_over_bw = (float(v) for v in x)
        if inv_bw > 0:
            bandwidth = 1.0 / inv_bw
            links["intra_node"] = {"name": "measured", "bandwidth_gbps": _round(bandwidth / 1e9),
                                   "latency_us": _round(latency * 1e6)}
            constants = {"intra_node_efficiency": 1.0, "comm_half_size_bytes": _round(half_over_bw * bandwidth),
                         "collective_latency_s": _round(latency), "intra_hop_latency_s": _round(hop)}
    # across nodes: one rank per node (g = 1), so the bus bandwidth is one NIC's (comm.collective_time)
    cross = [r for r in _by_bench(records, "collective") if r["nodes"] > 1 and r["size"] == r["nodes"]
             and r["op"] != "send_recv"]
    if cross:
        largest = max(r["bytes"] for r in cross)
        rates = [_bus_factor(r["op"], r["size"]) * r["bytes"] / r["seconds"] for r in cross if r["bytes"] == largest]
        links["inter_node"] = {"name": "measured", "bandwidth_gbps": _round(statistics.median(rates) / 1e9),
                               "latency_us": 0.0}
        constants["inter_node_efficiency"] = 1.0
    return links, constants


def profile_document(records: list[dict], device: dict, complete: bool, world_size: int, ranks_per_node: int,
                     backend: str, software: dict) -> dict:
    """The whole hardware profile file (format: hardware.py)."""
    dtype = device["dtype"]
    gpu = gpu_entry(records, device, dtype)
    peak = gpu["peak_tflops"].get("bf16") or gpu["peak_tflops"][dtype]
    calibration: dict = {}
    calibration.update(fit_memory(records, gpu["hbm_gbps"], dtype))
    floor_s = calibration.get("kernel_floor_s", 0.0)
    calibration.update(fit_gemm(records, peak, gpu["sm_count"], dtype, floor_s))
    calibration.update(fit_fp8_speedup(records))
    calibration.update(fit_attention(records, peak, floor_s))
    links, comm_constants = fit_collectives(records)
    calibration.update(comm_constants)
    order = {p: i for i, p in enumerate([dtype, "bf16", "fp16", "tf32", "fp32", "fp8"])}
    gemm_rows = sorted(_by_bench(records, "gemm"), key=lambda r: (order[r["precision"]], r["m"], r["n"], r["k"]))
    collective_rows = sorted(_by_bench(records, "collective"),
                             key=lambda r: (r["op"], r["size"], r["nodes"], r["bytes"]))
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "complete": complete,
        "device": {"kind": device["kind"], "name": device["name"], "host": device["host"], "dtype": dtype,
                   "threads": device.get("threads"),
                   "software": {**software, "backend": backend}, "world_size": world_size,
                   "nodes": max(1, world_size // max(1, ranks_per_node))},
        "gpu": gpu,
        "node": {"gpus_per_node": ranks_per_node, "intra_node": links.get("intra_node"),
                 "inter_node": links.get("inter_node")},
        "calibration": calibration,
        "curves": {
            "gemm": [[r["precision"], r["m"], r["n"], r["k"], _round(r["tflops"])] for r in gemm_rows],
            "collectives": [[r["op"], r["size"], r["nodes"], r["bytes"], _round(r["seconds"])]
                            for r in collective_rows],
        },
        "measurements": [_raw(r) for r in records],
    }


def _raw(record: dict) -> dict:
    """A record as kept in the file: rounded numbers, samples included."""
    return {k: ([_round(v) for v in value] if isinstance(value, list) else
                _round(value) if isinstance(value, float) else value) for k, value in record.items()}


def _round(value: float) -> float:
    """Four significant digits: measurements are not more precise, and the file stays readable."""
    return float(f"{value:.4g}")
