"""Re-planning over bandwidth traces (`paraplan replan`) against keeping the initial plan, switch costs included.

For each scenario of examples/dynamic_scenarios.yaml: the trace's segments, the best plan of each, the switches
the hysteresis policy makes (checkpoint save + restore of 14 B/param at 20 GB/s, plus a 60 s restart), and the
tokens trained over the whole trace by re-planning, by the static initial plan and by the single most robust plan.
Re-planning is online (each decision from the durations seen so far, prior 1 h); the same policy reading every
segment's duration from the trace (oracle, an upper bound) is reported beside it.
All numbers are the cost model's predictions, not measurements.

    python benchmarks/dynamic.py [--quick]

Ends with `RESULT {json}`: {"replan_vs_static", "robust_vs_static", "switches", "oracle_vs_static",
"oracle_switches" (the first scenario), and "scenarios": [{name, gpus, replan_vs_static, robust_vs_static, switches,
oracle_vs_static, oracle_switches, switch_cost_s, seconds, ...}]}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from paraplan.network.replan import replan  # noqa: E402
from paraplan.network.trace import read_trace  # noqa: E402
from paraplan.specs import JobSpec  # noqa: E402
from paraplan.specs.loaders import load_cluster, load_model  # noqa: E402


def run(s: dict) -> dict:
    cluster = load_cluster(str(ROOT / s["cluster"]))
    segments = read_trace(str(ROOT / s["trace"]), cluster)
    start = time.perf_counter()
    result = replan(load_model(s["model"]), cluster, JobSpec(global_batch=s["global_batch"], seq_len=s["seq_len"]),
                    segments)
    seconds = time.perf_counter() - start
    d = result.to_dict()
    print(f"\n== {s['name']}: {s['model']} on {cluster.num_gpus} GPUs, {len(segments)} segments over "
          f"{result.duration_s:g} s")
    for st in result.steps:
        print(f"  {st.start_s:>7g}-{st.end_s:<7g} best {st.best_tokens_per_s:>10,.0f} tok/s, running "
              f"{st.running_tokens_per_s:>10,.0f}  {'SWITCH' if st.switched else '      '}  {st.best_plan}")
    tp = d["throughput_tokens_per_s"]
    print(f"  re-planning {tp['replan']:,.0f} tok/s ({result.switches} switches of {result.switch_cost_s:.0f} s), "
          f"static {tp['static']:,.0f}, robust {tp['robust']:,.0f} ({result.robust_plan})")
    print(f"  re-planning (online) / static {d['replan_vs_static']:.4f}, robust / static "
          f"{d['robust_vs_static']:.4f}, oracle / static {d['oracle_vs_static']:.4f} ({result.oracle_switches} "
          f"switches); {seconds:.1f} s to plan every segment")
    return {"name": s["name"], "gpus": cluster.num_gpus, "model": s["model"], "segments": len(segments),
            "replan_vs_static": round(d["replan_vs_static"], 4), "robust_vs_static": round(d["robust_vs_static"], 4),
            "switches": result.switches, "oracle_vs_static": round(d["oracle_vs_static"], 4),
            "oracle_switches": result.oracle_switches, "switch_cost_s": round(result.switch_cost_s, 1),
            "throughput_tokens_per_s": {k: round(v) for k, v in tp.items()}, "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the scenarios marked quick")
    args = ap.parse_args()
    scenarios = yaml.safe_load((ROOT / "examples" / "dynamic_scenarios.yaml").read_text())["scenarios"]
    rows = [run(s) for s in scenarios if not args.quick or s.get("quick")]
    head = rows[0]
    print("RESULT " + json.dumps({"replan_vs_static": head["replan_vs_static"],
                                  "robust_vs_static": head["robust_vs_static"], "switches": head["switches"],
                                  "oracle_vs_static": head["oracle_vs_static"],
                                  "oracle_switches": head["oracle_switches"], "scenarios": rows}))


if __name__ == "__main__":
    main()
