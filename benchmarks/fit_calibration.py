"""Fit the calibration constants (per GPU type, per framework) on data/validation/ and write them to
src/paraplan/catalog/calibration.yaml. Reproducible: deterministic least squares from the current values.

The constants fall into blocks that touch disjoint rows, fitted one after the other:
  - A100 + Megatron-DeepSpeed on vTrain's 1,549 runs (hardware efficiencies, host launch time, overheads);
  - H100-class GPUs + NeMo / Megatron-LM / torchtitan on the published H100/H200 runs.
The published A100 runs (Megatron-LM 2021-22, MegaScale) are not fitted on: they check the A100 constants
out of sample.
Residual per row: log(predicted / measured), weighted so that each source group counts equally; soft-L1 loss so
a few odd rows do not drag the fit. No constant is per model or per row.

    python benchmarks/fit_calibration.py [--dry-run] [--block NAME] [--max-nfev N]
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from paraplan.cost.calibration import Calibration, calibration_for  # noqa: E402
from paraplan.validate.runs import read_rows  # noqa: E402
from paraplan.validate.score import predict_rows  # noqa: E402

CATALOG = ROOT / "src" / "paraplan" / "catalog" / "calibration.yaml"
H100_CLASS = ("H100-SXM5-80GB", "H100-96GB-HBM2e", "H200-SXM-141GB")

# name -> (row filter, [(section, key, parameter, lower, upper)])
BLOCKS = {
    "a100-megatron-deepspeed": (
        lambda row: row["framework"] == "megatron-deepspeed" and row["gpu"].startswith("A100"),
        [("gpus", "A100-SXM4-80GB", "gemm_efficiency", 0.4, 0.95),
         ("gpus", "A100-SXM4-80GB", "gemm_k_half", 8.0, 512.0),
         ("gpus", "A100-SXM4-80GB", "memory_efficiency", 0.3, 0.95),
         ("gpus", "A100-SXM4-80GB", "intra_node_efficiency", 0.3, 0.95),
         ("gpus", "A100-SXM4-80GB", "inter_node_efficiency", 0.3, 0.97),
         ("gpus", "A100-SXM4-80GB", "collective_latency_s", 2e-6, 300e-6),
         ("gpus", "A100-SXM4-80GB", "intra_hop_latency_s", 1e-7, 50e-6),
         ("frameworks", "megatron-deepspeed", "layer_host_s", 1e-5, 5e-3),
         ("frameworks", "megatron-deepspeed", "backward_host_ratio", 1.0, 4.0),
         ("frameworks", "megatron-deepspeed", "kernel_floor_s", 1e-6, 60e-6),
         ("frameworks", "megatron-deepspeed", "microbatch_overhead_s", 1e-5, 0.05),
         ("frameworks", "megatron-deepspeed", "iteration_overhead_s", 1e-4, 0.3)]),
    "h100-class": (
        lambda row: row["gpu"] in H100_CLASS,
        # no gemm_efficiency: H100's GEMM rates come from its measured table (gemm_table in calibration.yaml)
        [("gpus", "H100-SXM5-80GB", "attention_efficiency", 0.2, 0.9),
         ("gpus", "H100-SXM5-80GB", "fp8_gemm_speedup", 1.0, 2.0),
         ("gpus", "H100-SXM5-80GB", "inter_node_efficiency", 0.3, 0.97),
         ("frameworks", "nemo", "layer_host_s", 1e-5, 5e-3),
         ("frameworks", "megatron-lm", "layer_host_s", 1e-5, 5e-3),
         ("frameworks", "torchtitan", "layer_host_s", 1e-5, 5e-3),
         ("frameworks", "torchtitan", "fused_elementwise", 0.5, 4.0),
         ("frameworks", "torchtitan", "attention_kernel_scale", 0.3, 1.5)]),
}


def current_value(catalog: dict, section: str, key: str, name: str) -> float:
    value = catalog.get(section, {}).get(key, {}).get(name)
    return float(getattr(Calibration(), name) if value is None else value)


def with_values(catalog: dict, parameters, values) -> dict:
    out = {s: {k: dict(v) for k, v in catalog.get(s, {}).items()} for s in ("gpus", "frameworks")}
    for (section, key, name, _, _), value in zip(parameters, values):
        out[section].setdefault(key, {})[name] = float(value)
    return out


def fit_block(name: str, catalog: dict, rows: list[dict], max_nfev: int) -> dict:
    keep, parameters = BLOCKS[name]
    rows = [r for r in rows if keep(r)]
    x0 = np.array([current_value(catalog, *p[:3]) for p in parameters])
    lower = np.array([p[3] for p in parameters])
    upper = np.array([p[4] for p in parameters])
    x0 = np.clip(x0, lower, upper)
    scale = 0.1 * upper                       # one solver unit ~ a tenth of the allowed range

    def residuals(z):
        trial = with_values(catalog, parameters, np.clip(z * scale, lower, upper))
        results = predict_rows(rows, lambda case: calibration_for(case.cluster.gpu.name, case.job.framework,
                                                                  catalog=trial))
        groups = Counter(r.group for r in results)
        return np.array([math.log(r.predicted_s / r.measured_s) / math.sqrt(groups[r.group])
                         for r in results if r.predicted_s and r.measured_s])

    fit = least_squares(residuals, x0 / scale, bounds=(lower / scale, upper / scale), loss="soft_l1",
                        f_scale=0.01, max_nfev=max_nfev, diff_step=0.02, x_scale=1.0)
    values = np.clip(fit.x * scale, lower, upper)
    print(f"[{name}] {len(rows)} rows, cost {fit.cost:.5f}, {fit.nfev} evaluations ({fit.message})")
    for (section, key, pname, _, _), v0, v in zip(parameters, x0, values):
        print(f"  {section}.{key}.{pname}: {v0:.4g} -> {v:.4g}")
    return with_values(catalog, parameters, values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="print the fit, do not write the catalog")
    parser.add_argument("--block", choices=sorted(BLOCKS), action="append", help="fit only these blocks")
    parser.add_argument("--max-nfev", type=int, default=40)
    args = parser.parse_args()
    rows = [row for name in ("vtrain_a100.csv", "published_runs.csv")
            for row in read_rows(ROOT / "data" / "validation" / name)]
    catalog = yaml.safe_load(CATALOG.read_text()) or {}
    for name in args.block or BLOCKS:
        fitted = fit_block(name, catalog, rows, args.max_nfev)
        catalog["gpus"], catalog["frameworks"] = fitted["gpus"], fitted["frameworks"]
    if not args.dry_run:
        header = "".join(line + "\n" for line in CATALOG.read_text().splitlines() if line.startswith("#"))
        CATALOG.write_text(header + yaml.safe_dump(catalog, sort_keys=True, width=120))
        print(f"wrote {CATALOG.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
