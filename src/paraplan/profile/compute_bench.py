"""Compute microbenchmarks on one device: GEMMs, attention (SDPA), memory copy bandwidth, element-wise kernels.

Each `run_*` takes a point of sweeps.py and returns its record: the point, the typical `seconds` (timing.py), the
`samples` and the quantities the fit needs (FLOPs, elements moved). FLOPs follow the cost model's conventions
(compute.layer_ops): 2mnk per GEMM; causal attention counts half the score matrix, 2*b*h*s*s*2d*0.5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from paraplan.profile.timing import time_fn, typical

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_precisions(device: torch.device) -> tuple[str, ...]:
    """GEMM precisions worth measuring, the training dtype first. A CPU trains in fp32: its bf16/fp16 GEMMs are
    emulated at a few percent of the fp32 rate. fp8 needs an sm_89+ GPU (torch._scaled_mm)."""
    if device.type != "cuda":
        return ("fp32",)
    precisions = ("bf16", "fp16", "tf32", "fp32")
    if torch.cuda.get_device_capability(device) >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        precisions += ("fp8",)
    return precisions


def training_dtype(device: torch.device) -> str:
    return device_precisions(device)[0]


def _set_tf32(precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def run_gemm(point: dict, device: torch.device, repeats: int, min_sample_s: float) -> dict:
    m, n, k, precision = point["m"], point["n"], point["k"], point["precision"]
    if precision == "fp8":
        # row-major A times column-major B, per-tensor scales: the layout cuBLASLt's fp8 kernels take
        a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=device)

        def fn():
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:
        _set_tf32(precision)
        dtype = DTYPES[precision]
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)

        def fn():
            return torch.mm(a, b, out=out)
    samples = time_fn(fn, device, repeats, min_sample_s)
    seconds = typical(samples, device)
    flops = 2.0 * m * n * k
    return {**point, "seconds": seconds, "samples": samples, "flops": flops, "tflops": flops / seconds / 1e12}


def run_attention(point: dict, device: torch.device, repeats: int, min_sample_s: float) -> dict:
    """Causal SDPA forward, and forward + backward; the backward's time is the difference."""
    b, h, s, d = point["batch"], point["heads"], point["seq_len"], point["head_dim"]
    dtype = DTYPES[point["precision"]]
    q, k, v = (torch.randn(b, h, s, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, s, d, device=device, dtype=dtype)

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward_backward():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    fwd = time_fn(forward, device, repeats, min_sample_s)
    both = time_fn(forward_backward, device, repeats, min_sample_s)
    seconds = typical(fwd, device)
    backward_s = max(typical(both, device) - seconds, 1e-9)
    flops = 2.0 * b * h * s * s * 2 * d * 0.5
    return {**point, "seconds": seconds, "samples": fwd, "backward_seconds": backward_s,
            "forward_backward_samples": both, "flops": flops, "tflops": flops / seconds / 1e12}


def run_memory(point: dict, device: torch.device, repeats: int, min_sample_s: float) -> dict:
    """Copy bandwidth: read and write `bytes` each (the peak an element-wise kernel can reach)."""
    src = torch.randn(point["bytes"] // 4, device=device)
    dst = torch.empty_like(src)
    samples = time_fn(lambda: dst.copy_(src), device, repeats, min_sample_s)
    seconds = typical(samples, device)
    moved = 2.0 * src.numel() * 4
    return {**point, "seconds": seconds, "samples": samples, "bytes_moved": moved, "gbps": moved / seconds / 1e9}


def _elementwise_fn(op: str, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
    """(kernel, elements read + written as the cost model counts them: each input and output once)."""
    n = x.numel()
    hidden = x.shape[-1]
    table = {
        "add": (lambda: x + y, 3 * n),
        "mul": (lambda: x * y, 3 * n),
        "silu": (lambda: F.silu(x), 2 * n),
        "gelu": (lambda: F.gelu(x), 2 * n),
        "swiglu": (lambda: F.silu(x) * y, 3 * n),
        "rms_norm": (lambda: F.rms_norm(x, (hidden,), weight), 2 * n),
        "layer_norm": (lambda: F.layer_norm(x, (hidden,), weight), 2 * n),
        "softmax": (lambda: torch.softmax(x, dim=-1), 2 * n),
    }
    return table[op]


def run_elementwise(point: dict, device: torch.device, repeats: int, min_sample_s: float) -> dict:
    hidden = min(point["hidden"], point["elements"])
    rows = max(1, point["elements"] // hidden)
    dtype = DTYPES[point["precision"]]
    x = torch.randn(rows, hidden, device=device, dtype=dtype)
    y = torch.randn(rows, hidden, device=device, dtype=dtype)
    weight = torch.ones(hidden, device=device, dtype=dtype)
    with torch.no_grad():
        fn, elements_moved = _elementwise_fn(point["op"], x, y, weight)
        samples = time_fn(fn, device, repeats, min_sample_s)
    seconds = typical(samples, device)
    return {**point, "seconds": seconds, "samples": samples, "elements_moved": elements_moved}


RUNNERS = {"gemm": run_gemm, "attention": run_attention, "memory": run_memory, "elementwise": run_elementwise}


def run_point(point: dict, device: torch.device, repeats: int, min_sample_s: float) -> dict:
    return RUNNERS[point["bench"]](point, device, repeats, min_sample_s)


def describe_device(device: torch.device) -> dict:
    """Name, cores/SMs and memory of the device, from torch."""
    import os
    import platform
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": props.name, "sm_count": props.multi_processor_count,
                "memory_gb": props.total_memory / 1e9}
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if hasattr(os, "sysconf") else 0.0
    return {"kind": "cpu", "name": _cpu_name() or platform.processor() or platform.machine(),
            "sm_count": torch.get_num_threads(), "memory_gb": memory_gb}


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
