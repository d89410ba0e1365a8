"""`paraplan profile --check`: a real transformer layer's forward and backward on the device vs paraplan's
prediction for that layer from the hardware profile.

The layer is Llama-style, as compute.layer_ops describes it with tp = 1, written as torchtitan writes it:
RMSNorm, one fused QKV projection, rotary embeddings on Q and K (complex multiply), causal SDPA (grouped-query
when kv_heads < heads), output projection, residual; RMSNorm, fused gate/up projection, SiLU x up, down
projection, residual. Its input requires grad, as inside a stack. The prediction is compute.layer_compute for
framework "other" (no framework overheads) with the profile's GPU entry and calibration; the layer runs in the
profile's dtype.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from paraplan.cost.compute import layer_compute
from paraplan.errors import ParaplanError
from paraplan.profile.compute_bench import DTYPES
from paraplan.profile.hardware import HardwareProfile
from paraplan.profile.sweeps import CheckShape
from paraplan.profile.timing import typical
from paraplan.specs import JobSpec, Strategy
from paraplan.specs.loaders import model_from_dict


@dataclass(frozen=True)
class CheckResult:
    shape: CheckShape
    predicted_forward_s: float
    predicted_backward_s: float
    measured_forward_s: float
    measured_backward_s: float

    @property
    def predicted_s(self) -> float:
        return self.predicted_forward_s + self.predicted_backward_s

    @property
    def measured_s(self) -> float:
        return self.measured_forward_s + self.measured_backward_s

    @property
    def error(self) -> float:
        """Predicted over measured forward + backward time, minus 1."""
        return self.predicted_s / self.measured_s - 1

    def to_dict(self) -> dict:
        return {"shape": self.shape.label, "predicted_forward_s": self.predicted_forward_s,
                "predicted_backward_s": self.predicted_backward_s, "measured_forward_s": self.measured_forward_s,
                "measured_backward_s": self.measured_backward_s, "error": self.error}


class LlamaLayer(nn.Module):
    def __init__(self, shape: CheckShape):
        super().__init__()
        self.heads, self.kv_heads = shape.heads, shape.kv_heads
        self.head_dim = shape.hidden // shape.heads
        self.ffn = shape.ffn
        self.input_norm = nn.RMSNorm(shape.hidden)
        self.qkv = nn.Linear(shape.hidden, (shape.heads + 2 * shape.kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(shape.heads * self.head_dim, shape.hidden, bias=False)
        self.post_attn_norm = nn.RMSNorm(shape.hidden)
        self.gate_up = nn.Linear(shape.hidden, 2 * shape.ffn, bias=False)
        self.down = nn.Linear(shape.ffn, shape.hidden, bias=False)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv(self.input_norm(x)).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], -1)
        q = _rotary(q.view(b, s, self.heads, d), rotation).transpose(1, 2)
        k = _rotary(k.view(b, s, self.kv_heads, d), rotation).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads < self.heads)
        x = x + self.out(o.transpose(1, 2).reshape(b, s, self.heads * d))
        gate, up = self.gate_up(self.post_attn_norm(x)).split(self.ffn, -1)
        return x + self.down(F.silu(gate) * up)


def _rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as torchtitan's Llama applies it: pairs of channels times unit complex numbers (one kernel,
    where rotate_half takes five). x: (batch, seq, heads, head_dim); rotation: (seq, head_dim / 2) complex."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation[:, None, :]).flatten(3).type_as(x)


def _rotation(seq_len: int, head_dim: int, device) -> torch.Tensor:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def predict_layer(profile: HardwareProfile, shape: CheckShape) -> tuple[float, float]:
    """paraplan's (forward, backward) seconds for the layer on the profiled device."""
    model = model_from_dict({"name": "check-layer", "layers": 1, "hidden": shape.hidden, "heads": shape.heads,
                             "kv_heads": shape.kv_heads, "ffn": shape.ffn, "vocab": 32000, "gated_mlp": True,
                             "norm": "rmsnorm"})
    job = JobSpec(global_batch=shape.batch, seq_len=shape.seq_len, precision="bf16", framework="other")
    lc = layer_compute(model, job, Strategy(micro_batch=shape.batch), profile.gpu, profile.calibration("other"))
    return lc.forward_s, lc.backward_s


def measure_layer(shape: CheckShape, device: torch.device, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Measured (forward, backward) seconds, each timed on its own in every iteration (forward with autograd
    recording, as in training); timing.typical of the samples."""
    torch.manual_seed(0)
    layer = LlamaLayer(shape).to(device=device, dtype=dtype)
    x = torch.randn(shape.batch, shape.seq_len, shape.hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    rotation = _rotation(shape.seq_len, shape.hidden // shape.heads, device)
    forward_s, backward_s = [], []
    for i in range(repeats + 1):                    # the first iteration warms up
        marks = [_mark(device)]
        out = layer(x, rotation)
        marks.append(_mark(device))
        out.backward(grad)
        marks.append(_mark(device))
        if i:
            forward_s.append(_seconds(marks[0], marks[1], device))
            backward_s.append(_seconds(marks[1], marks[2], device))
    return typical(forward_s, device), typical(backward_s, device)


def _mark(device: torch.device):
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _seconds(start, end, device: torch.device) -> float:
    if device.type == "cuda":
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return end - start


def check_layers(profile: HardwareProfile, shapes: tuple[CheckShape, ...], repeats: int = 10) -> list[CheckResult]:
    """Predicted vs measured layer times on the device the profile was measured on (its dtype and threads)."""
    kind = profile.device.get("kind", "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParaplanError(f"hardware profile '{profile.path}' was measured on a CUDA GPU; torch sees none here")
    device = torch.device(kind)
    if kind == "cpu" and profile.device.get("threads"):
        torch.set_num_threads(int(profile.device["threads"]))
    dtype = DTYPES.get(profile.device.get("dtype", "bf16"), torch.bfloat16)
    results = []
    for shape in shapes:
        predicted = predict_layer(profile, shape)
        measured = measure_layer(shape, device, dtype, repeats)
        results.append(CheckResult(shape, *predicted, *measured))
    return results
