"""Search time and pruning of `paraplan plan` against exhaustive evaluation, on one core.

For each case the pruned search runs in this process (serial executor: one core); `search_s` is wall time,
`search_cpu_s` the CPU time of this process (the same on an idle machine; on a shared one, the cost of the search
itself). The exhaustive baseline simulates
every valid candidate with the same estimator; where that would take too long (`--sample`), it is timed on a
random sample of the valid candidates and extrapolated to all of them (printed as "sampled"), and `same_optimum`
then means that no sampled candidate that fits beats the search's optimum.

    python benchmarks/search_speed.py [--quick] [--sample N]

Ends with `RESULT {json}`: {"cases": [{name, gpus, search_s, candidates, valid, simulated, pruned_fraction,
exhaustive_s, exhaustive_mode, speedup_vs_exhaustive, same_optimum, best}]}.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from paraplan.cost.calibration import calibration_for  # noqa: E402
from paraplan.estimate import MAX_MICROBATCHES, estimate  # noqa: E402
from paraplan.search import search  # noqa: E402
from paraplan.search.space import build_space  # noqa: E402
from paraplan.specs import JobSpec  # noqa: E402
from paraplan.specs.loaders import load_cluster, load_model  # noqa: E402

# name, model, cluster, global batch, sequence length, exhaustive in full when the valid space is at most this
CASES = [
    ("llama3-8b-8", "llama3-8b", "dgx-h100:8", 128, 8192),
    ("llama3-8b-64", "llama3-8b", "dgx-h100:64", 512, 8192),
    ("llama3-70b-256", "llama3-70b", "dgx-h100:256", 1024, 8192),
    ("gpt3-175b-1024", "gpt3-175b", "dgx-a100:1024", 1536, 2048),
    ("llama3-405b-16k", "llama3-405b", "dgx-h100:16384", 2048, 8192),
]
QUICK = ("llama3-8b-8", "llama3-405b-16k")


def run_case(name, model_name, cluster_name, gb, seq, full_limit, sample, seed=0) -> dict:
    model, cluster = load_model(model_name), load_cluster(cluster_name)
    job = JobSpec(global_batch=gb, seq_len=seq)
    t0, c0 = time.perf_counter(), time.process_time()
    result = search(model, cluster, job, top_k=1, executor="serial")
    search_s, search_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    best = result.plans[0] if result.plans else None
    st = result.stats
    if st.valid <= full_limit:
        t0 = time.perf_counter()
        full = search(model, cluster, job, top_k=1, executor="serial", exhaustive=True)
        exhaustive_s = time.perf_counter() - t0
        mode = "full"
        same = (full.plans[0].strategy == best.strategy) if (best and full.plans) else (not best and not full.plans)
    else:
        cal = calibration_for(cluster.gpu.name, job.framework)
        t0 = time.perf_counter()
        space = build_space(model, cluster, job, None, MAX_MICROBATCHES)
        build_s = time.perf_counter() - t0
        ids = random.Random(seed).sample(range(len(space.candidates)), min(sample, len(space.candidates)))
        cache: dict = {}                      # the exhaustive search shares layer costs too
        t0 = time.perf_counter()
        beaten = False
        for i in ids:
            plan = estimate(model, cluster, job, space.candidates.strategy(i, job.framework, job.precision),
                            calibration=cal, layer_cache=cache)
            if best and plan.memory.fits and plan.iteration_time_s < best.iteration_time_s * (1 - 1e-12):
                beaten = True
        per_candidate = (time.perf_counter() - t0) / len(ids)
        exhaustive_s = build_s + per_candidate * st.valid
        mode = f"sampled {len(ids)} of {st.valid}"
        same = not beaten
    case = {"name": name, "gpus": cluster.num_gpus, "search_s": round(search_s, 3),
            "search_cpu_s": round(search_cpu_s, 3), "candidates": st.space_size,
            "valid": st.valid, "simulated": st.simulated, "pruned_fraction": st.pruned_fraction,
            "pruned_before_simulation": st.pruned, "exhaustive_s": round(exhaustive_s, 2), "exhaustive_mode": mode,
            "speedup_vs_exhaustive": round(exhaustive_s / search_s, 1), "same_optimum": bool(same),
            "best": best.strategy.describe() if best else None,
            "best_iteration_s": round(best.iteration_time_s, 4) if best else None}
    print(f"{name:16s} {cluster.num_gpus:6d} GPUs  search {search_s:6.2f} s (cpu {search_cpu_s:5.2f} s)  space {st.space_size:8,d}  valid "
          f"{st.valid:7,d}  simulated {st.simulated:5d}  pruned {100 * st.pruned_fraction:6.3f}%  exhaustive "
          f"{exhaustive_s:9.1f} s ({mode})  x{exhaustive_s / search_s:8.1f}  same optimum {same}  best "
          f"{case['best']} {case['best_iteration_s']} s", flush=True)
    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    ap.add_argument("--sample", type=int, default=300, help="candidates timed for a sampled exhaustive baseline")
    ap.add_argument("--full-limit", type=int, default=7000,
                    help="run the exhaustive search in full when the valid space is at most this")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.quick or c[0] in QUICK]
    out = [run_case(*c, full_limit=args.full_limit, sample=args.sample) for c in cases]
    print("RESULT " + json.dumps({"cases": out}))


if __name__ == "__main__":
    main()
