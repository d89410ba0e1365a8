"""How `paraplan plan` does on the published runs: does it rank the measured-fastest strategy first, and does its
search find a plan at least as fast (in prediction) as each published configuration?

1. Sweeps: rows of data/validation/published_runs.csv that share model, GPU, GPU count, global batch, sequence
   length, framework and precision but differ in strategy. For each sweep, the measured-fastest row is "ranked
   first" when its predicted time is the smallest of the sweep.
2. Search: for every distinct setup, the exact search (framework rules, the row's own model and cluster) against
   each published row of that setup whose configuration is in the search space and fits: the predicted speed-up of
   the search's best plan over the published configuration.

    python benchmarks/published_sweeps.py [--runs FILE.csv]

Ends with `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from paraplan.errors import ParaplanError  # noqa: E402
from paraplan.estimate import estimate  # noqa: E402
from paraplan.search import search  # noqa: E402
from paraplan.search.space import build_space  # noqa: E402
from paraplan.validate.runs import case_from_row, read_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _setup(case) -> tuple:
    m = case.model
    return (m.name, m.layers, m.hidden, case.cluster.gpu.name, case.cluster.num_gpus, case.job.global_batch,
            case.job.seq_len, case.job.framework, case.job.precision)


def _in_space(case, space) -> bool:
    c, s = space.candidates, case.strategy
    hit = ((c.tp == s.tp) & (c.pp == s.pp) & (c.dp == s.dp) & (c.cp == s.cp) & (c.ep == s.ep) & (c.vpp == s.vpp)
           & (c.micro_batch == s.micro_batch) & (c.zero == s.zero) & (c.recompute == s.recompute)
           & (c.sequence_parallel == (s.sequence_parallel and s.tp > 1)))
    return bool(hit.any())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "data/validation/published_runs.csv"))
    args = ap.parse_args()
    groups: dict[tuple, list] = defaultdict(list)
    for row in read_rows(args.runs):
        try:
            case = case_from_row(row)
            plan = estimate(case.model, case.cluster, case.job, case.strategy, assumptions=case.assumptions)
        except ParaplanError:
            continue
        if case.measured_iter_time_s:
            groups[_setup(case)].append((case, plan))

    sweeps = [g for g in groups.values() if len({c.strategy for c, _ in g}) > 1]
    first = 0
    print(f"== sweeps: {len(sweeps)} setups measured under several strategies")
    for g in sweeps:
        fastest_measured = min(g, key=lambda cp: cp[0].measured_iter_time_s)
        fastest_predicted = min(g, key=lambda cp: cp[1].iteration_time_s)
        ok = fastest_measured[0].id == fastest_predicted[0].id
        first += int(ok)
        print(f"   {'ok ' if ok else 'MISS'} {g[0][0].model.name} on {g[0][0].cluster.num_gpus} x "
              f"{g[0][0].cluster.gpu.name}: {len(g)} strategies; measured fastest {fastest_measured[0].id}, "
              f"predicted fastest {fastest_predicted[0].id}")

    print(f"== search against every published configuration in the space ({len(groups)} setups)")
    compared, speedups, not_in_space, t0 = [], 0, 0, time.perf_counter()
    for g in groups.values():
        case0 = g[0][0]
        try:
            result = search(case0.model, case0.cluster, case0.job, top_k=1, executor="serial")
        except ParaplanError as exc:
            print(f"   skip {case0.id}: {exc}")
            continue
        space = build_space(case0.model, case0.cluster, case0.job)
        for case, plan in g:
            if not plan.memory.fits or not _in_space(case, space):
                not_in_space += 1
                continue
            best = result.plans[0]
            gain = plan.iteration_time_s / best.iteration_time_s
            compared.append({"id": case.id, "published_predicted_s": float(plan.iteration_time_s),
                             "search_best_s": float(best.iteration_time_s), "speedup": float(gain),
                             "search_best": best.strategy.describe()})
            speedups += int(gain >= 1 - 1e-9)
            print(f"   {case.id:40s} published {plan.iteration_time_s:8.3f} s  search {best.iteration_time_s:8.3f} s "
                  f" x{gain:5.2f}  ({best.strategy.describe()})")
    summary = {"sweeps": len(sweeps), "measured_fastest_ranked_first": first,
               "published_configs_compared": len(compared), "search_at_least_as_fast": speedups,
               "not_in_space_or_unfit": not_in_space,
               "median_speedup": sorted(c["speedup"] for c in compared)[len(compared) // 2] if compared else None,
               "search_seconds": round(time.perf_counter() - t0, 1), "compared": compared}
    print(f"== measured-fastest ranked first in {first} of {len(sweeps)} sweeps; search at least as fast as "
          f"{speedups} of {len(compared)} published configurations in its space (median predicted speed-up "
          f"x{summary['median_speedup']:.2f}); {not_in_space} outside the space or over memory in prediction")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
