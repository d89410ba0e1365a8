"""Fit the calibration constants (per GPU type, per framework) on data/validation/ and write them to
src/paraplan/catalog/calibration.yaml. Reproducible: deterministic least squares from the defaults.

Residual per row: log(predicted / measured), weighted so that each source group (vtrain-single, vtrain-multi,
each published source family) counts equally; soft-L1 loss so a few odd rows do not drag the fit.
No constant is per model or per row: each fitted value is keyed by a GPU type or by a framework.

    python benchmarks/fit_calibration.py [--dry-run] [--max-nfev 60]
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

from paraplan.cost import calibration as calibration_module  # noqa: E402
from paraplan.cost.calibration import calibration_for  # noqa: E402
from paraplan.validate.runs import read_rows  # noqa: E402
from paraplan.validate.score import predict_rows  # noqa: E402

CATALOG = ROOT / "src" / "paraplan" / "catalog" / "calibration.yaml"

# (section, key, parameter, lower, upper): what is fitted, and its physical range.
PARAMETERS = [
    ("gpus", "A100-SXM4-80GB", "gemm_efficiency", 0.4, 0.95),
    ("gpus", "A100-SXM4-80GB", "memory_efficiency", 0.3, 0.95),
    ("gpus", "A100-SXM4-80GB", "inter_node_efficiency", 0.5, 0.97),
    ("gpus", "H100-SXM5-80GB", "gemm_efficiency", 0.4, 0.95),
    ("gpus", "H100-SXM5-80GB", "attention_efficiency", 0.2, 0.9),
    ("gpus", "H100-SXM5-80GB", "fp8_gemm_speedup", 1.0, 2.0),
    ("gpus", "H100-SXM5-80GB", "inter_node_efficiency", 0.5, 0.97),
    ("gpus", "H100-96GB-HBM2e", "gemm_efficiency", 0.3, 0.95),
    ("frameworks", "megatron-deepspeed", "layer_host_s", 0.0, 5e-3),
    ("frameworks", "megatron-deepspeed", "microbatch_overhead_s", 0.0, 0.05),
    ("frameworks", "megatron-deepspeed", "iteration_overhead_s", 0.0, 0.3),
    ("frameworks", "megatron-deepspeed", "kernel_floor_s", 1e-6, 60e-6),
    ("frameworks", "megatron-lm", "layer_host_s", 0.0, 5e-3),
    ("frameworks", "nemo", "layer_host_s", 0.0, 5e-3),
    ("frameworks", "torchtitan", "layer_host_s", 0.0, 5e-3),
    ("frameworks", "torchtitan", "fused_elementwise", 0.5, 4.0),
    ("frameworks", "torchtitan", "attention_kernel_scale", 0.3, 1.5),
]


def load_catalog() -> dict:
    return yaml.safe_load(CATALOG.read_text()) or {}


def current_value(catalog: dict, section: str, key: str, name: str) -> float:
    value = catalog.get(section, {}).get(key, {}).get(name)
    if value is None:
        value = getattr(calibration_module.Calibration(), name)
    return float(value)


def with_values(catalog: dict, values) -> dict:
    out = {s: {k: dict(v) for k, v in catalog.get(s, {}).items()} for s in ("gpus", "frameworks")}
    for (section, key, name, _, _), value in zip(PARAMETERS, values):
        out[section].setdefault(key, {})[name] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="print the fit, do not write the catalog")
    parser.add_argument("--max-nfev", type=int, default=60)
    parser.add_argument("--stride", type=int, default=4, help="use every n-th vTrain single-node row")
    args = parser.parse_args()

    rows = []
    for name in ("vtrain_a100.csv", "published_runs.csv"):
        for i, row in enumerate(read_rows(ROOT / "data" / "validation" / name)):
            if "single" in row["id"] and i % args.stride:
                continue
            rows.append(row)
    catalog = load_catalog()
    x0 = np.array([current_value(catalog, *p[:3]) for p in PARAMETERS])
    lower = np.array([p[3] for p in PARAMETERS])
    upper = np.array([p[4] for p in PARAMETERS])
    x0 = np.where(x0 > lower, x0, lower + 0.05 * (upper - lower))   # start inside the bounds
    scale = 0.1 * upper                                              # one unit of the solver ~ a tenth of the range

    def residuals(z):
        values = np.clip(z * scale, lower, upper)
        trial = with_values(catalog, values)
        results = predict_rows(rows, lambda case: calibration_for(case.cluster.gpu.name, case.job.framework,
                                                                  catalog=trial))
        groups = Counter(r.group for r in results)
        res = []
        for r in results:
            if r.predicted_s is None or not r.measured_s:
                continue
            res.append(math.log(r.predicted_s / r.measured_s) / math.sqrt(groups[r.group]))
        return np.array(res)

    fit = least_squares(residuals, x0 / scale, bounds=(lower / scale, upper / scale), loss="soft_l1",
                        f_scale=0.02, max_nfev=args.max_nfev, diff_step=0.05)
    values = np.clip(fit.x * scale, lower, upper)
    for (section, key, name, _, _), v0, v in zip(PARAMETERS, x0, values):
        print(f"{section}.{key}.{name}: {v0:.4g} -> {v:.4g}")
    print(f"cost {fit.cost:.5f}, evaluations {fit.nfev}")
    if not args.dry_run:
        new = with_values(catalog, values)
        for section in ("gpus", "frameworks"):
            catalog[section] = new[section]
        header = "".join(line + "\n" for line in CATALOG.read_text().splitlines() if line.startswith("#"))
        CATALOG.write_text(header + yaml.safe_dump(catalog, sort_keys=True))
        print(f"wrote {CATALOG.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
