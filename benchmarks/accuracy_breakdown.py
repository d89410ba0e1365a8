"""Where the iteration-time error lies: signed bias and mean |error| of the predictions, split by one feature of the
run at a time (TP, pipeline, interleaving, CP, MoE, precision, framework, GPU, ZeRO, recompute, nodes, micro-batches
per pipeline, whether the source printed a time or a throughput), for every file in data/validation/.

A feature whose rows share a large bias points at a missing mechanism; one with a large |error| and little bias at
noise or at something the format does not say. Also printed per file: the accuracy ceiling the format itself sets,
the best mean accuracy any predictor could reach when rows with identical columns (everything but id, source, model
name, notes and the measured figures) report different times.
Ends with `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from paraplan.errors import ParaplanError  # noqa: E402
from paraplan.validate.runs import case_from_row, read_rows  # noqa: E402
from paraplan.validate.score import predict_rows  # noqa: E402

FILES = ("vtrain_a100.csv", "published_runs.csv", "holdout_mbridge_2511.csv")
# columns that do not describe the run: two rows equal on all the others are the same configuration
NOT_CONFIGURATION = {"id", "source", "model", "notes", "measured_iter_time_s", "time_derived",
                     "measured_tflops_per_gpu", "measured_mfu", "measured_tokens_per_s_per_gpu"}


def features(row: dict) -> dict[str, str]:
    """The features one row is split by, read through the same specs the estimate uses."""
    case = case_from_row(row)
    s, job, cluster = case.strategy, case.job, case.cluster
    microbatches = job.global_batch // (s.dp * s.micro_batch)
    return {
        "tp": str(s.tp), "pp": "1" if s.pp == 1 else ">1", "vpp": "1" if s.vpp == 1 else ">1",
        "cp": "1" if s.cp == 1 else ">1", "moe": "yes" if case.model.moe else "no", "precision": job.precision,
        "framework": job.framework, "gpu": cluster.gpu.name, "zero": str(s.zero), "recompute": s.recompute,
        "nodes": "1" if cluster.num_gpus <= cluster.primary.gpus_per_node else ">1",
        "microbatches/pp": "<=2" if microbatches <= 2 * s.pp else ">2",
        "time_derived": (row.get("time_derived") or "?").strip().lower() or "?",
    }


def ceiling(rows: list[dict]) -> float:
    """Best mean accuracy a predictor that sees only the columns can reach: one prediction per configuration,
    the one of its measured times that maximises the group's summed accuracy."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        key = tuple(sorted((k, (v or "").strip().lower()) for k, v in row.items() if k not in NOT_CONFIGURATION))
        try:
            groups[key].append(float(row["measured_iter_time_s"]))
        except (TypeError, ValueError):
            continue
    best = sum(max(sum(1 - abs(p - m) / m for m in times) for p in times) for times in groups.values())
    return best / max(1, sum(len(t) for t in groups.values()))


def breakdown(rows: list[dict]) -> dict:
    results = predict_rows(rows)
    split: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, res in zip(rows, results):
        if res.accuracy is None:
            continue
        try:
            feats = features(row)
        except ParaplanError:
            continue
        error = res.predicted_s / res.measured_s - 1
        for name, value in feats.items():
            split[name][value].append(error)
    table = {name: {value: {"rows": len(errs), "bias": statistics.fmean(errs),
                            "mean_abs_error": statistics.fmean(abs(e) for e in errs)}
                    for value, errs in sorted(values.items())}
             for name, values in split.items()}
    return {"ceiling": ceiling(rows), "by_feature": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "validation"))
    args = parser.parse_args()
    result = {}
    for name in FILES:
        out = breakdown(read_rows(Path(args.data) / name))
        result[name] = out
        print(f"\n== {name}: accuracy ceiling set by identical-column rows {100 * out['ceiling']:.1f}%")
        print(f"   {'feature':16s} {'value':22s} {'rows':>5s} {'bias':>7s} {'|error|':>8s}")
        for feature, values in out["by_feature"].items():
            for value, v in values.items():
                print(f"   {feature:16s} {value:22s} {v['rows']:5d} {100 * v['bias']:+6.1f}% "
                      f"{100 * v['mean_abs_error']:7.1f}%")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
