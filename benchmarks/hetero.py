"""Heterogeneous planning: the planner's best plan against three baselines on the scenarios of
examples/hetero_scenarios.yaml (A100+V100, H100+A100, RTX 4090+V100, a 512-GPU three-type cluster).

For each scenario: the heterogeneous search with worker processes (`search_s`, default: one per CPU) and again on
one process (`serial_search_s`), the speed-up between them, and the predicted throughput of the recommended plan
over each baseline (`throughput_ratio`):
  homogeneous_subset  the exact homogeneous search (paraplan plan) on the best single node group;
  uniform_split       one Megatron grid over every group, even layers and batch shares (the usual practice);
  metis_like          stages ordered by device type, layers split by peak compute, no ZeRO/recompute, DP/PP/TP.
The planner's best is the faster of its two families: one pipeline over the groups (interleaving and CP searched
too), or 2-3 data-parallel replicas on disjoint groups or pieces of a cut group, with uneven batch shares
(hetero/replica_search.py); `replicas` says whether the replica family wins (`wins`), its throughput over the best
single pipeline (`vs_pipeline`), its number of replicas, plan and search time.
All numbers are the cost model's predictions, not measurements.

    python benchmarks/hetero.py [--quick] [--workers N]

Ends with `RESULT {json}`: {"scenarios": [{name, gpus, search_s, serial_search_s, parallel_speedup,
throughput_ratio: {homogeneous_subset, uniform_split, metis_like}, tokens_per_s, plan, baselines,
replicas: {wins, vs_pipeline, tokens_per_s, count, batch_shares, plan, search_s}}]}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from paraplan.hetero.compare import plan_hetero  # noqa: E402
from paraplan.hetero.search import search_hetero  # noqa: E402
from paraplan.specs import JobSpec  # noqa: E402
from paraplan.specs.loaders import load_cluster, load_model  # noqa: E402


def run(scenario: dict, workers: int) -> dict:
    cluster = load_cluster(str(ROOT / scenario["cluster"]))
    model = load_model(scenario["model"])
    job = JobSpec(global_batch=scenario["global_batch"], seq_len=scenario["seq_len"])
    result = plan_hetero(model, cluster, job, top_k=1, executor="process", workers=workers)
    start = time.perf_counter()
    serial = search_hetero(model, cluster, job, top_k=1, executor="serial")
    serial_s = time.perf_counter() - start
    assert serial.indices == result.search.indices, "serial and parallel searches disagree"
    search_s = result.search.stats.seconds
    best = result.search.best
    row = {"name": scenario["name"], "gpus": cluster.num_gpus, "model": scenario["model"],
           "search_s": round(search_s, 2), "serial_search_s": round(serial_s, 2),
           "parallel_speedup": round(serial_s / search_s, 2), "workers": result.search.stats.workers,
           "throughput_ratio": {k: (round(v, 4) if v else None) for k, v in result.ratios().items()},
           "tokens_per_s": round(result.best_tokens_per_s or 0.0),
           "recommended": result.recommended, "plan": best.plan.summary() if best else None,
           "baselines": {k: {"tokens_per_s": round(b.tokens_per_s) if b.tokens_per_s else None,
                             "plan": b.description} for k, b in result.baselines.items()},
           "simulated": result.search.stats.simulated, "structures": result.search.stats.structures}
    rep = result.replicas.best if result.replicas else None
    pipe = best.tokens_per_s if best else None
    row["replicas"] = {"wins": result.recommended == "replicas",
                       "vs_pipeline": round(rep.tokens_per_s / pipe, 4) if rep and pipe else None,
                       "tokens_per_s": round(rep.tokens_per_s) if rep else None,
                       "count": len(rep.plan.replicas) if rep else None,
                       "batch_shares": list(rep.plan.shares) if rep else None,
                       "plan": rep.plan.summary() if rep else None,
                       "search_s": round(result.replicas.seconds, 2) if result.replicas else None}
    print(f"\n== {row['name']}: {model.name} on {cluster.num_gpus} GPUs "
          f"({', '.join(f'{g.num_gpus} x {g.gpu.name}' for g in cluster.node_groups)})")
    print(f"  pipeline    {row['plan']}")
    print(f"  throughput  {row['tokens_per_s']:,} tokens/s ({row['recommended']})")
    for k, b in row["baselines"].items():
        ratio = row["throughput_ratio"][k]
        print(f"  vs {k:<19} {ratio if ratio else '-':>7}  ({b['tokens_per_s'] or '-'} tokens/s: {b['plan']})")
    r = row["replicas"]
    print(f"  replicas    {r['tokens_per_s'] or '-'} tokens/s, x{r['vs_pipeline'] or '-'} vs one pipeline, "
          f"{'wins' if r['wins'] else 'does not win'}; shares {r['batch_shares']}: {r['plan']}")
    print(f"  search      {search_s:.2f} s on {row['workers']} processes, {serial_s:.2f} s on one "
          f"(x{row['parallel_speedup']}); {row['simulated']} plans simulated of {row['structures']} structures")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the scenarios marked quick")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    scenarios = yaml.safe_load((ROOT / "examples" / "hetero_scenarios.yaml").read_text())["scenarios"]
    rows = [run(s, args.workers) for s in scenarios if not args.quick or s.get("quick")]
    print("RESULT " + json.dumps({"scenarios": rows}))


if __name__ == "__main__":
    main()
