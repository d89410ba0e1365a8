"""One call for `paraplan seqpar` and the benchmark: plan every batch, run the baselines on the same batches, and
summarise the speed-ups and where the time goes (all-to-all share before and after)."""
from __future__ import annotations

from dataclasses import dataclass, field

from paraplan.seqpar.baselines import Comparison, baseline_layouts, best_static, compare_batch
from paraplan.seqpar.costmodel import build_cost_model
from paraplan.seqpar.planner import check_fits


@dataclass
class SeqParReport:
    comparisons: list[Comparison]
    cost_model_description: dict
    max_len: int
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        batches = []
        for c in self.comparisons:
            p = c.flexsp
            batches.append({
                "predicted_step_s": p.step_s, "comm_share": p.comm_share, "planner_ms": 1e3 * p.planner_s,
                "microbatches": [{"layout": layout, "time_s": mb.time_s, "sequences": len(
                    [k for _, ms in mb.solution.groups for k in ms])}
                    for layout, mb in zip(p.layouts(), p.microbatches)],
                "baselines": {name: (None if b is None else {"step_s": b.step_s, "comm_share": b.comm_share,
                                                             "microbatches": len(b.microbatches)})
                              for name, b in c.baselines.items()},
                "step_plan": p.to_step_plan().to_dict()})
        return {"cost_model": self.cost_model_description, "max_len": self.max_len, "summary": self.summary,
                "batches": batches}


def evaluate(batches: list[list[int]], model, cluster, *, max_len: int | None = None, solver: str = "fast",
             baselines: bool = True, **cost_kwargs) -> SeqParReport:
    """Plan each batch with the chosen solver and compare with static Ulysses SP, static CP and BatchAda.
    `max_len` (default: the longest sequence given) is the context a static layout must be configured for."""
    cm = build_cost_model(model, cluster, **cost_kwargs)
    for b in batches:
        check_fits(b, cm)
    max_len = max_len or max(max(b) for b in batches)
    layouts = baseline_layouts(model, cluster, **cost_kwargs) if baselines else []
    comparisons = [compare_batch(b, cm, layouts, solver=solver) for b in batches]
    total = sum(c.flexsp.step_s for c in comparisons)
    comm = sum(c.flexsp.comm_s for c in comparisons)
    summary: dict = {"flexsp_s": total, "flexsp_comm_share": comm / total if total else 0.0,
                     "batches": len(batches), "solver": solver,
                     "planner_ms_max": max(1e3 * c.flexsp.planner_s for c in comparisons)}
    if layouts:
        for kind, key in (("ulysses", "static_ulysses"), ("cp", "static_cp")):
            best = best_static(comparisons, kind, layouts, max_len)
            if best is None:
                summary[key] = None
                continue
            name, seconds = best
            comm_b = sum(c.baselines[name].comm_s for c in comparisons)
            summary[key] = {"layout": name, "total_s": seconds, "speedup": seconds / total,
                            "comm_share": comm_b / seconds}
        ada = [c.best("ulysses") for c in comparisons]
        if all(a is not None for a in ada):
            seconds = sum(a[1].step_s for a in ada)
            summary["batchada"] = {"layouts": [a[0] for a in ada], "total_s": seconds, "speedup": seconds / total,
                                   "comm_share": sum(a[1].comm_s for a in ada) / seconds}
        else:
            summary["batchada"] = None
    return SeqParReport(comparisons, cm.description, max_len, summary)
