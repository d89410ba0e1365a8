"""Re-planning over a bandwidth trace: at each change, the best plan for the new conditions, and whether switching
to it pays off once the switch costs (checkpoint save and restore, restart) are counted.

Policy (hysteresis): at the start of a segment of duration D, with the running plan at t_cur s per iteration (inf
when a group it uses is cut off) and the segment's best plan at t_best, switch when the best plan, after paying
the switch cost C, still does more iterations in the segment by a margin: (D - C) / t_best > (1 + h) D / t_cur.
The segment's duration is read from the trace, i.e. the trace is used as a forecast of the network.

Throughput over the trace is tokens trained / trace duration. The static plan keeps the initial plan throughout
(it trains nothing while a group it uses is cut off); the robust plan is the one plan, among the segments' best
plans, that trains the most tokens over the whole trace without switching.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from paraplan.errors import ParaplanError
from paraplan.hetero.estimate import HeteroContext, estimate_hetero
from paraplan.hetero.plan import HeteroPlan, HeteroStage
from paraplan.hetero.search import search_hetero
from paraplan.hetero.space import SpaceOptions
from paraplan.network.trace import Segment, apply
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec

CHECKPOINT_BYTES_PER_PARAM = 14     # bf16 weights 2 + fp32 master weights 4 + Adam moments 8 (Megatron mixed precision)


@dataclass(frozen=True)
class SwitchCost:
    restart_s: float = 60.0          # stop, relaunch, rebuild communicators and data loaders
    storage_gbps: float = 20.0       # aggregate checkpoint write/read bandwidth, GB/s

    def seconds(self, model: ModelSpec) -> float:
        """Save and restore a full checkpoint (a new plan reshards it on load), plus the restart."""
        params = sum(model.layer_params(i) for i in range(model.layers)) + model.embedding_params()
        return self.restart_s + 2 * params * CHECKPOINT_BYTES_PER_PARAM / (self.storage_gbps * 1e9)


def _remap(plan: HeteroPlan, mapping: dict[int, int]) -> HeteroPlan | None:
    if any(s.group not in mapping for s in plan.stages):
        return None
    return HeteroPlan(tuple(HeteroStage(mapping[s.group], s.tp, s.dp, s.layers, s.zero, s.recompute)
                            for s in plan.stages), plan.microbatch_sequences)


def iteration_time(model, cluster, job, plan: HeteroPlan, segment: Segment) -> float:
    """Seconds per iteration of `plan` (groups numbered as in `cluster`) under a segment; inf if it cannot run."""
    sub, kept = apply(cluster, segment)
    local = _remap(plan, {old: new for new, old in enumerate(kept)})
    if local is None:
        return float("inf")
    return estimate_hetero(model, sub, job, local, HeteroContext(model, sub, job)).iteration_time_s


def best_plan(model, cluster, job, segment: Segment, options: SpaceOptions | None = None) -> HeteroPlan | None:
    sub, kept = apply(cluster, segment)
    r = search_hetero(model, sub, job, options, top_k=1, executor="serial")
    if r.best is None:
        return None
    return _remap(r.best.plan, dict(enumerate(kept)))


@dataclass
class Step:
    start_s: float
    end_s: float
    best_plan: str
    best_tokens_per_s: float
    running_tokens_per_s: float      # the plan running before the decision, under the new conditions
    switched: bool
    switch_cost_s: float
    tokens: float                    # trained in this segment by the re-planning policy

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class ReplanResult:
    steps: list[Step]
    duration_s: float
    tokens_replan: float
    tokens_static: float
    tokens_robust: float
    robust_plan: str
    static_plan: str
    switch_cost_s: float
    extra: dict = field(default_factory=dict)

    @property
    def switches(self) -> int:
        return sum(s.switched for s in self.steps)

    def to_dict(self) -> dict:
        ratio = (lambda a, b: a / b if b else None)
        return {"duration_s": self.duration_s, "switches": self.switches, "switch_cost_s": self.switch_cost_s,
                "throughput_tokens_per_s": {"replan": self.tokens_replan / self.duration_s,
                                            "static": self.tokens_static / self.duration_s,
                                            "robust": self.tokens_robust / self.duration_s},
                "replan_vs_static": ratio(self.tokens_replan, self.tokens_static),
                "robust_vs_static": ratio(self.tokens_robust, self.tokens_static),
                "static_plan": self.static_plan, "robust_plan": self.robust_plan,
                "timeline": [s.to_dict() for s in self.steps]}


def replan(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, segments: list[Segment],
           hysteresis: float = 0.05, cost: SwitchCost | None = None,
           options: SpaceOptions | None = None) -> ReplanResult:
    if hysteresis < 0:
        raise ParaplanError(f"hysteresis must be >= 0, got {hysteresis}")
    cost = cost or SwitchCost()
    switch_s = cost.seconds(model)
    tokens_per_iter = job.tokens_per_step
    bests = [best_plan(model, cluster, job, seg, options) for seg in segments]
    if bests[0] is None:
        raise ParaplanError("no plan fits the cluster at the start of the trace")
    candidates = {b for b in bests if b is not None}
    # time of every candidate plan in every segment (the robust choice and the policy both need them)
    times = {p: [iteration_time(model, cluster, job, p, seg) for seg in segments] for p in candidates}
    running, steps, tokens = bests[0], [], 0.0
    for k, seg in enumerate(segments):
        best = bests[k]
        t_cur = times[running][k]
        t_best = times[best][k] if best is not None else float("inf")
        d = seg.duration_s
        switched = False
        if best is not None and best != running and d > switch_s:
            if (d - switch_s) / t_best > (1 + hysteresis) * d / t_cur:
                switched = True
        if switched:
            seg_tokens = (d - switch_s) / t_best * tokens_per_iter
            running = best
        else:
            seg_tokens = d / t_cur * tokens_per_iter
        tokens += seg_tokens
        steps.append(Step(seg.start_s, seg.end_s, best.summary() if best else "none fits",
                          tokens_per_iter / t_best, tokens_per_iter / t_cur, switched,
                          switch_s if switched else 0.0, seg_tokens))
    duration = segments[-1].end_s - segments[0].start_s

    def total(p):
        return sum(s.duration_s / t * tokens_per_iter for s, t in zip(segments, times[p]))

    static = bests[0]
    robust = max(sorted(candidates, key=lambda p: p.describe()), key=total)
    return ReplanResult(steps, duration, tokens, total(static), total(robust), robust.summary(), static.summary(),
                        switch_s)


