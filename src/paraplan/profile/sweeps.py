"""What `paraplan profile` measures, per sweep preset: plain data, one point per measurement.

Every point has a key (its line in the partial results file), so an interrupted sweep resumes where it stopped.
Presets: `tiny` (tests, CI: seconds on a busy CPU), `cpu` (a CPU host: about a minute), `gpu` (a CUDA GPU: GEMM
shapes of 1-70B transformer layers, flash attention up to 32k tokens, messages up to 1 GiB; a few minutes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

from paraplan.errors import ParaplanError

COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
ELEMENTWISE_OPS = ("add", "mul", "silu", "gelu", "swiglu", "rms_norm", "layer_norm", "softmax")


@dataclass(frozen=True)
class CheckShape:
    """One transformer layer for `--check` (Llama-style: RMSNorm, rotary, GQA flash attention, SwiGLU MLP)."""
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    seq_len: int
    batch: int = 1

    @property
    def label(self) -> str:
        return f"h{self.hidden} a{self.heads}/{self.kv_heads} f{self.ffn} s{self.seq_len} b{self.batch}"


@dataclass(frozen=True)
class Sweep:
    name: str
    gemm_m: tuple[int, ...]                 # rows (tokens)
    gemm_nk: tuple[tuple[int, int], ...]    # (n, k) weight shapes
    attention_seq_lens: tuple[int, ...]
    attention_heads: int
    attention_head_dim: int
    attention_batch: int
    memory_bytes: tuple[int, ...]           # copy sizes for the bandwidth peak
    elementwise_elements: tuple[int, ...]
    elementwise_hidden: int                 # last dimension of the norm / softmax inputs
    collective_bytes: tuple[int, ...]       # nccl-tests S
    repeats: int                            # timed samples per point (timing.typical is kept)
    check_shapes: tuple[CheckShape, ...] = field(default=())
    min_sample_s: float = 2e-3              # a sample repeats the kernel until it lasts this long

    def gemm_points(self, precisions: tuple[str, ...]) -> list[dict]:
        return [{"bench": "gemm", "key": f"gemm/{p}/{m}x{n}x{k}", "precision": p, "m": m, "n": n, "k": k}
                for p in precisions for m in self.gemm_m for n, k in self.gemm_nk]

    def attention_points(self, dtype: str) -> list[dict]:
        b, h, d = self.attention_batch, self.attention_heads, self.attention_head_dim
        return [{"bench": "attention", "key": f"attention/{dtype}/b{b}h{h}d{d}s{s}", "precision": dtype,
                 "batch": b, "heads": h, "head_dim": d, "seq_len": s} for s in self.attention_seq_lens]

    def memory_points(self) -> list[dict]:
        return [{"bench": "memory", "key": f"memory/copy/{n}", "bytes": n} for n in self.memory_bytes]

    def elementwise_points(self, dtype: str) -> list[dict]:
        points = [{"bench": "elementwise", "key": f"elementwise/{dtype}/{op}/{n}", "op": op, "precision": dtype,
                   "elements": n, "hidden": self.elementwise_hidden}
                  for op, n in product(ELEMENTWISE_OPS, self.elementwise_elements)]
        # the cost of launching the smallest kernel: what every kernel costs at least
        return points + [{"bench": "elementwise", "key": f"elementwise/{dtype}/add/1", "op": "add",
                          "precision": dtype, "elements": 1, "hidden": 1}]

    def collective_points(self, groups: list[tuple[int, int, int]]) -> list[dict]:
        """`groups`: (size, stride, nodes) of the groups to measure; see comm_bench.groups_for."""
        points = []
        for size, stride, nodes in groups:
            for op in COLLECTIVE_OPS:
                if op == "send_recv" and size != 2:
                    continue
                for nbytes in self.collective_bytes:
                    points.append({"bench": "collective", "key": f"collective/{op}/n{size}s{stride}/{nbytes}",
                                   "op": op, "size": size, "stride": stride, "nodes": nodes, "bytes": nbytes})
        return points


KiB, MiB = 1024, 1024 * 1024
SWEEPS = {
    "tiny": Sweep("tiny", gemm_m=(64, 256), gemm_nk=((64, 64), (256, 256), (256, 64), (64, 256)),
                  attention_seq_lens=(64, 128, 256), attention_heads=2, attention_head_dim=32, attention_batch=1,
                  memory_bytes=(4 * MiB,), elementwise_elements=(1 << 16,), elementwise_hidden=128,
                  collective_bytes=(4 * KiB, 64 * KiB, 1 * MiB), repeats=3,
                  check_shapes=(CheckShape(128, 4, 2, 344, 128),), min_sample_s=1e-3),
    # a CPU: shapes that stay under ~50 ms a call, so that a sample fits between other processes' time slices
    "cpu": Sweep("cpu", gemm_m=(64, 256, 512, 1024), gemm_nk=((256, 256), (768, 256), (1024, 1024), (2048, 512),
                                                              (512, 2048), (2304, 768), (768, 2048), (4096, 768)),
                 attention_seq_lens=(128, 256, 512, 1024), attention_heads=8, attention_head_dim=64,
                 attention_batch=1, memory_bytes=(16 * MiB, 64 * MiB), elementwise_elements=(1 << 16, 1 << 20),
                 elementwise_hidden=512, collective_bytes=(4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB), repeats=5,
                 check_shapes=(CheckShape(256, 4, 4, 688, 256), CheckShape(512, 8, 4, 1376, 512),
                               CheckShape(768, 12, 4, 2048, 512))),
    "gpu": Sweep("gpu", gemm_m=(512, 2048, 8192, 16384),
                 gemm_nk=((1024, 1024), (4096, 4096), (6144, 4096), (4096, 4096 * 2), (28672, 4096), (4096, 14336),
                          (10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672), (16384, 16384)),
                 attention_seq_lens=(512, 1024, 2048, 4096, 8192, 16384, 32768), attention_heads=32,
                 attention_head_dim=128, attention_batch=1, memory_bytes=(256 * MiB, 1024 * MiB),
                 elementwise_elements=(1 << 22, 1 << 26), elementwise_hidden=4096,
                 collective_bytes=tuple(1 << e for e in range(12, 31, 2)), repeats=10,
                 check_shapes=(CheckShape(2048, 16, 8, 5632, 2048), CheckShape(4096, 32, 8, 14336, 4096),
                               CheckShape(4096, 32, 8, 14336, 8192), CheckShape(8192, 64, 8, 28672, 4096)),
                 min_sample_s=5e-3),
}


def sweep_for(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ParaplanError(f"unknown sweep '{name}'; known: {', '.join(SWEEPS)}")
    return SWEEPS[name]
