"""Re-planning over a bandwidth trace: at each change, the best plan for the new conditions, and whether switching
to it pays off once the switch costs (checkpoint save and restore, restart) are counted.

Policy (hysteresis): at the start of a segment, with the running plan at t_cur s per iteration under the new
conditions (inf when a group it uses is cut off) and the best plan for them at t_best, switch when the best plan,
after paying the switch cost C, still does more iterations over the expected duration D of the new conditions by
a margin: (D - C) / t_best > (1 + h) D / t_cur; a plan that cannot run at all is always left.

D is not read from the future (forecast="online", the default): it is the mean duration of the conditions seen so
far, with a prior of `prior_s` seconds counted as one more observation (the expected remaining duration of the
current condition if durations are exponential, i.e. memoryless). A switch stops training for C seconds; when the
conditions change again first, the rest of that downtime carries over. forecast="oracle" reads each segment's
real duration from the trace instead (switching only when the segment outlasts C): an upper bound that no online
policy reaches, reported beside it.

Throughput over the trace is tokens trained / trace duration. The static plan keeps the initial plan throughout
(it trains nothing while a group it uses is cut off); the robust plan is the one plan, among the segments' best
plans, that trains the most tokens over the whole trace without switching (chosen knowing the whole trace).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from paraplan.errors import ParaplanError
from paraplan.hetero.estimate import HeteroContext, estimate_hetero
from paraplan.hetero.plan import HeteroPlan
from paraplan.hetero.search import search_hetero
from paraplan.hetero.space import SpaceOptions
from paraplan.network.trace import Segment, apply
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec

CHECKPOINT_BYTES_PER_PARAM = 14     # bf16 weights 2 + fp32 master weights 4 + Adam moments 8 (Megatron mixed precision)
FORECASTS = ("online", "oracle")


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
    return replace(plan, stages=tuple(replace(s, group=mapping[s.group]) for s in plan.stages))


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
    expected_s: float = 0.0          # the duration the decision assumed (online: from past segments only)

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
    forecast: str = "online"
    tokens_oracle: float = 0.0       # the same policy knowing every segment's duration (upper bound)
    oracle_switches: int = 0

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
                "forecast": self.forecast, "oracle_vs_static": ratio(self.tokens_oracle, self.tokens_static),
                "oracle_switches": self.oracle_switches,
                "static_plan": self.static_plan, "robust_plan": self.robust_plan,
                "timeline": [s.to_dict() for s in self.steps]}


def _policy(segments, bests, times, switch_s: float, hysteresis: float, tokens_per_iter: float, forecast: str,
            prior_s: float) -> list[Step]:
    """The re-planning timeline (module docstring)."""
    running, steps, seen, down = bests[0], [], [], 0.0
    for k, seg in enumerate(segments):
        best, d = bests[k], seg.duration_s
        t_cur = times[running][k]
        t_best = times[best][k] if best is not None else math.inf
        expected = d if forecast == "oracle" else (prior_s + sum(seen)) / (1 + len(seen))
        switched = False
        if best is not None and best != running:
            if forecast == "oracle" and d <= switch_s:
                switched = False                  # hindsight: a switch that never finishes is never made
            elif t_cur == math.inf:
                switched = True                   # the running plan cannot run at all
            elif expected > switch_s:
                switched = (expected - switch_s) / t_best > (1 + hysteresis) * expected / t_cur
        if switched:
            running, down = best, switch_s
        idle = min(d, down)
        down -= idle
        t_run = times[running][k]
        seg_tokens = (d - idle) / t_run * tokens_per_iter if t_run < math.inf else 0.0
        steps.append(Step(seg.start_s, seg.end_s, best.summary() if best else "none fits",
                          tokens_per_iter / t_best, tokens_per_iter / t_cur, switched,
                          switch_s if switched else 0.0, seg_tokens, expected))
        seen.append(d)
    return steps


def replan(model: ModelSpec, cluster: ClusterSpec, job: JobSpec, segments: list[Segment],
           hysteresis: float = 0.05, cost: SwitchCost | None = None,
           options: SpaceOptions | None = None, forecast: str = "online", prior_s: float = 3600.0) -> ReplanResult:
    """Re-plan over `segments` (module docstring). `forecast`: "online" (decisions from the past only, `prior_s`
    the prior mean duration of a condition) or "oracle" (segment durations read from the trace); the result
    carries the oracle's tokens either way."""
    if hysteresis < 0:
        raise ParaplanError(f"hysteresis must be >= 0, got {hysteresis}")
    if forecast not in FORECASTS:
        raise ParaplanError(f"forecast must be one of {', '.join(FORECASTS)}, got {forecast!r}")
    if not prior_s > 0:
        raise ParaplanError(f"the prior duration must be > 0 seconds, got {prior_s}")
    cost = cost or SwitchCost()
    switch_s = cost.seconds(model)
    tokens_per_iter = job.tokens_per_step
    bests = [best_plan(model, cluster, job, seg, options) for seg in segments]
    if bests[0] is None:
        raise ParaplanError("no plan fits the cluster at the start of the trace")
    candidates = {b for b in bests if b is not None}
    # time of every candidate plan in every segment (the robust choice and the policy both need them)
    times = {p: [iteration_time(model, cluster, job, p, seg) for seg in segments] for p in candidates}
    runs = {f: _policy(segments, bests, times, switch_s, hysteresis, tokens_per_iter, f, prior_s) for f in FORECASTS}
    steps = runs[forecast]
    duration = segments[-1].end_s - segments[0].start_s

    def total(p):
        return sum(s.duration_s / t * tokens_per_iter for s, t in zip(segments, times[p]))

    static = bests[0]
    robust = max(sorted(candidates, key=lambda p: p.describe()), key=total)
    return ReplanResult(steps, duration, sum(s.tokens for s in steps), total(static), total(robust), robust.summary(),
                        static.summary(), switch_s, forecast=forecast,
                        tokens_oracle=sum(s.tokens for s in runs["oracle"]),
                        oracle_switches=sum(s.switched for s in runs["oracle"]))
