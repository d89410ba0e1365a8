"""Accuracy of paraplan's iteration-time predictions against measured runs.

For every file in data/validation/ (the holdout file included, which no constant is fitted on): rows, rows modelled, mean accuracy (1 - mean |pred - meas| / meas), worst row,
split by source group; plus the rank correlation between predicted and measured times inside each group of runs
that share a model and GPU count (does the model order strategies correctly?).
Ends with `RESULT {json}`. `--quick` scores every 8th row of the large vTrain file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from paraplan.validate.runs import read_rows  # noqa: E402
from paraplan.validate.score import predict_rows, summary  # noqa: E402

# the last file is held out: benchmarks/fit_calibration.py never fits on it (GPUs with no fitted constants of their
# own: B200, GB200, GB300)
FILES = ("vtrain_a100.csv", "published_runs.csv", "holdout_mbridge_2511.csv")


def rank_correlation(rows, results) -> float | None:
    """Mean Spearman rho over groups of rows with the same model shape and GPU count (>= 4 rows)."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for row, res in zip(rows, results):
        if res.accuracy is None:
            continue
        key = (row["layers"], row["hidden"], row["seq_len"], row["num_gpus"], row["global_batch"])
        groups.setdefault(key, []).append((res.predicted_s, res.measured_s))
    rhos = [spearmanr([p for p, _ in v], [m for _, m in v]).statistic for v in groups.values() if len(v) >= 4]
    rhos = [r for r in rhos if r == r]
    return sum(rhos) / len(rhos) if rhos else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every 8th vTrain row")
    parser.add_argument("--data", default=str(ROOT / "data" / "validation"))
    args = parser.parse_args()
    result = {"files": {}}
    for name in FILES:
        rows = read_rows(Path(args.data) / name)
        if args.quick and len(rows) > 400:
            rows = rows[::8]
        start = time.perf_counter()
        results = predict_rows(rows)
        seconds = time.perf_counter() - start
        stats = summary(results)
        stats["rank_correlation"] = rank_correlation(rows, results)
        stats["seconds"] = round(seconds, 2)
        # every measured run fitted in its GPUs' memory: a plan predicted not to fit is a memory overestimate
        stats["predicted_to_fit"] = sum(1 for r in results if r.fits)
        result["files"][name] = {k: stats[k] for k in ("rows", "modelled", "mean_accuracy", "worst_accuracy",
                                                         "rank_correlation", "by_group", "seconds", "predicted_to_fit")}
        print(f"\n== {name}: {stats['rows']} rows, {stats['modelled']} modelled, mean accuracy "
              f"{100 * (stats['mean_accuracy'] or 0):.1f}%, worst {100 * (stats['worst_accuracy'] or 0):.1f}%, "
              f"rank correlation {stats['rank_correlation'] if stats['rank_correlation'] is None else round(stats['rank_correlation'], 3)}, "
              f"{seconds:.1f} s; predicted to fit in memory: {stats['predicted_to_fit']} of {stats['modelled']}")
        print(f"   {'group':28s} {'rows':>5s} {'modelled':>8s} {'accuracy':>9s}")
        for group, g in stats["by_group"].items():
            acc = "-" if g["mean_accuracy"] is None else f"{100 * g['mean_accuracy']:.1f}%"
            print(f"   {group:28s} {g['rows']:5d} {g['modelled']:8d} {acc:>9s}")
        worst = sorted((r for r in results if r.accuracy is not None), key=lambda r: r.accuracy)[:5]
        for r in worst:
            print(f"   worst: {r.id:28s} measured {r.measured_s:8.3f} s  predicted {r.predicted_s:8.3f} s "
                  f"({100 * (r.predicted_s / r.measured_s - 1):+.1f}%)")
        errors = [r for r in results if r.error]
        for r in errors[:5]:
            print(f"   not modelled: {r.id}: {r.error}")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
