"""Predicted vs measured iteration time for every row of a measured-runs file."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from paraplan.cost.calibration import Calibration
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.validate.runs import case_from_row, read_rows


@dataclass
class RowResult:
    id: str
    group: str                        # source family used to split the score (e.g. vtrain-single, narayanan21)
    measured_s: float | None
    predicted_s: float | None
    memory_gib: float | None = None
    fits: bool | None = None
    error: str | None = None
    assumptions: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float | None:
        if self.predicted_s is None or not self.measured_s:
            return None
        return 1 - abs(self.predicted_s - self.measured_s) / self.measured_s


def row_group(row_id: str) -> str:
    """The source a row comes from, from its id: the row number is dropped (vtrain-single-0042 -> vtrain-single),
    and ids of the form source_case_n keep the source (narayanan21_t1_03 -> narayanan21, dgxc_llama31_8b_bf16_8 ->
    dgxc)."""
    head = row_id.rstrip("0123456789").rstrip("-_") or row_id
    return head.split("_", 1)[0]


def predict_rows(rows: list[dict], calibration_for_case=None) -> list[RowResult]:
    """`calibration_for_case(case) -> Calibration | None` lets the fitting script try constants without the catalog."""
    results = []
    for row in rows:
        rid = row.get("id") or "?"
        try:
            case = case_from_row(row)
            cal: Calibration | None = calibration_for_case(case) if calibration_for_case else None
            plan = estimate(case.model, case.cluster, case.job, case.strategy, calibration=cal,
                            assumptions=case.assumptions)
            results.append(RowResult(rid, row_group(rid), case.measured_iter_time_s, plan.iteration_time_s,
                                     plan.memory.total_gib, plan.memory.fits, None, tuple(plan.assumptions)))
        except ParaplanError as exc:
            results.append(RowResult(rid, row_group(rid), measured_time(row), None, error=str(exc)))
    return results


def measured_time(row: dict) -> float | None:
    try:
        value = float(row.get("measured_iter_time_s") or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def predict_file(path: str | Path) -> list[RowResult]:
    return predict_rows(read_rows(path))


def mean_accuracy(results: list[RowResult]) -> float | None:
    scores = [r.accuracy for r in results if r.accuracy is not None]
    return sum(scores) / len(scores) if scores else None


def summary(results: list[RowResult]) -> dict:
    """Headline figures: rows, modelled, mean accuracy, worst error, by group."""
    groups: dict[str, list[RowResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    modelled = [r for r in results if r.accuracy is not None]
    return {
        "rows": len(results),
        "modelled": len(modelled),
        "mean_accuracy": mean_accuracy(results),
        "worst_accuracy": min((r.accuracy for r in modelled), default=None),
        "by_group": {g: {"rows": len(rs), "modelled": sum(r.accuracy is not None for r in rs),
                         "mean_accuracy": mean_accuracy(rs)} for g, rs in sorted(groups.items())},
    }
