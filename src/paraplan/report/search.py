"""A search's report: the ranked plans (the best re-simulated with its timeline) and the search funnel."""
from __future__ import annotations

from paraplan.estimate import estimate
from paraplan.report.html import render_report


def search_report(result, title: str = "", calibration=None) -> str:
    """HTML for a search.SearchResult: timeline and breakdown of the best plan, memory and comparison of the top
    plans, and how many candidates each pruning rule removed. `calibration` must be the one the search used."""
    plans = list(result.plans)
    if plans and plans[0].timeline is None:
        best = plans[0]
        plans[0] = estimate(result.model, result.cluster, result.job, best.strategy, calibration=calibration,
                            assumptions=best.assumptions, record_events=True)
    c, job = result.cluster, result.job
    context = {"model": result.model.name, "cluster": f"{c.name}, {c.num_gpus} x {c.gpu.name}",
               "batch": f"{job.global_batch} x {job.seq_len} tokens", "precision": job.precision,
               "framework": job.framework}
    return render_report(plans, result.stats.to_dict(), title or f"paraplan: {result.model.name} on {c.num_gpus} GPUs",
                         context)
