"""The simulated iteration as a Chrome trace-event JSON document that Perfetto (ui.perfetto.dev) and
chrome://tracing open.

Layout (docs/reference/ecosystem.md §5, from Perfetto's JSON importer): one process per pipeline stage (pid = pipeline
rank, named with the global ranks it spans in Megatron's rank order, PP outermost); one thread per stream: the
compute stream (forward / backward slices per micro-batch and chunk, then the optimizer step), one per communication
kind (TP, CP, EP, ZeRO-3 gathers, DP gradient reduction) and PP send/recv lanes. `X` slices on one thread never
overlap (sends that overlap in time get separate lanes), flows (`s`/`f`, v1) join each pipeline send's producer
slice to its consumer, and a counter track per stage draws memory in GiB. Times are microseconds.

Communication inside a forward or backward pass comes from the estimate's breakdown, not from separate events: each
pass carries the critical stage's share of exposed + hidden TP/CP/EP/ZeRO time (per second of compute), drawn at the
start of the pass on that kind's thread; args say how much of it is exposed."""
from __future__ import annotations

import json
from pathlib import Path

from paraplan.errors import ParaplanError

COMPUTE_TID = 0
COMM_TIDS = {"tp": 1, "cp": 2, "ep": 3, "zero": 4, "dp": 5}
COMM_NAMES = {"tp": "TP comm", "cp": "CP comm", "ep": "EP all-to-all", "zero": "ZeRO-3 param gather / grad scatter",
              "dp": "DP grad reduce"}
PP_TID = 10                       # first PP send/recv lane; more lanes take 11, 12, ...
_US = 1e6


def _us(seconds: float) -> float:
    return round(seconds * _US, 3)


def _dur(start_s: float, end_s: float) -> float:
    """Duration in microseconds such that ts + dur equals the rounded end (slices that touch stay non-overlapping)."""
    return round(_us(end_s) - _us(start_s), 3)


def _lanes(intervals: list[tuple[float, float]]) -> list[int]:
    """Greedy lane per interval (sorted by start) so that intervals in one lane never overlap."""
    ends: list[float] = []
    out = []
    for start, end in intervals:
        for i, e in enumerate(ends):
            if e <= start + 1e-12:
                ends[i] = end
                out.append(i)
                break
        else:
            ends.append(end)
            out.append(len(ends) - 1)
    return out


def trace_document(plan, title: str = "") -> dict:
    """The trace as a dict ({"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}})."""
    tl = plan.timeline
    if tl is None:
        raise ParaplanError("the plan has no timeline: estimate it with record_events=True")
    s = plan.strategy
    pp, vpp = s.pp, s.vpp
    per_stage = s.world_size // pp
    pipe = tl.pipeline
    events: list[dict] = []
    meta: list[dict] = []

    # ---- processes, threads ----------------------------------------------------------------------------------------
    for r in range(pp):
        meta.append({"name": "process_name", "ph": "M", "pid": r,
                     "args": {"name": f"PP stage {r} (ranks {r * per_stage}-{(r + 1) * per_stage - 1})"}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": r, "args": {"sort_index": r}})
        meta.append({"name": "thread_name", "ph": "M", "pid": r, "tid": COMPUTE_TID, "args": {"name": "compute"}})

    # ---- compute slices and the communication inside them ------------------------------------------------------
    busy = max(pipe.busy_s) if pipe.busy_s else 0.0
    crit_busy = plan.time.compute_s + plan.time.exposed_comm_total_s - plan.time.exposed_comm_s.get("pp", 0) \
        - plan.time.exposed_comm_s.get("dp", 0) + plan.time.overlap_slowdown_s
    crit_busy = crit_busy if crit_busy > 0 else busy
    shares = {}
    for kind in ("tp", "cp", "ep", "zero"):
        exp_ = plan.time.exposed_comm_s.get(kind, 0.0)
        hid = plan.time.overlapped_comm_s.get(kind, 0.0)
        if exp_ + hid > 0 and crit_busy > 0:
            shares[kind] = (exp_ / crit_busy, hid / crit_busy)
    used_threads = {r: set() for r in range(pp)}
    by_op = {}
    for ev in pipe.events:
        if ev.kind not in ("F", "B"):
            continue
        v = ev.rank + ev.chunk * pp
        name = f"{'forward' if ev.kind == 'F' else 'backward'} mb{ev.microbatch}" + (f" chunk{ev.chunk}" if vpp > 1 else "")
        dur = ev.end_s - ev.start_s
        events.append({"name": name, "cat": "forward" if ev.kind == "F" else "backward", "ph": "X", "pid": ev.rank,
                       "tid": COMPUTE_TID, "ts": _us(ev.start_s), "dur": _dur(ev.start_s, ev.end_s),
                       "args": {"microbatch": ev.microbatch, "chunk": ev.chunk, "virtual_stage": v}})
        by_op[(ev.kind, ev.rank, ev.chunk, ev.microbatch)] = ev
        for kind, (exp_, hid) in shares.items():
            comm = min(dur, (exp_ + hid) * dur)
            if comm <= 0:
                continue
            used_threads[ev.rank].add(kind)
            events.append({"name": f"{kind.upper()} {'fwd' if ev.kind == 'F' else 'bwd'} mb{ev.microbatch}",
                           "cat": kind, "ph": "X", "pid": ev.rank, "tid": COMM_TIDS[kind], "ts": _us(ev.start_s),
                           "dur": _dur(ev.start_s, ev.start_s + comm), "args": {"exposed_s": exp_ * dur, "hidden_s": hid * dur}})

    # ---- pipeline sends: lanes, slices, flows ------------------------------------------------------------------
    sends = [ev for ev in pipe.events if ev.kind in ("SEND_F", "SEND_B")]
    lane_count = {r: 0 for r in range(pp)}
    for r in range(pp):
        mine = [ev for ev in sends if ev.rank == r]
        for ev, lane in zip(mine, _lanes([(ev.start_s, ev.end_s) for ev in mine])):
            lane_count[r] = max(lane_count[r], lane + 1)
            what = "activation" if ev.kind == "SEND_F" else "gradient"
            events.append({"name": f"send {what} mb{ev.microbatch}", "cat": "pp", "ph": "X", "pid": r,
                           "tid": PP_TID + lane, "ts": _us(ev.start_s), "dur": _dur(ev.start_s, ev.end_s),
                           "args": {"microbatch": ev.microbatch, "chunk": ev.chunk, "overlapped": tl.p2p_overlapped}})
    flow_id = 0
    for ev in sends:
        v = ev.rank + ev.chunk * pp
        producer = by_op.get(("F" if ev.kind == "SEND_F" else "B", ev.rank, ev.chunk, ev.microbatch))
        target = v + 1 if ev.kind == "SEND_F" else v - 1
        consumer = by_op.get(("F" if ev.kind == "SEND_F" else "B", target % pp, target // pp, ev.microbatch))
        if producer is None or consumer is None:
            continue
        flow_id += 1
        what = "activation" if ev.kind == "SEND_F" else "gradient"
        mid_p = (producer.start_s + producer.end_s) / 2
        mid_c = (consumer.start_s + consumer.end_s) / 2
        events.append({"name": f"{what} mb{ev.microbatch}", "cat": "pp-flow", "ph": "s", "id": flow_id,
                       "pid": producer.rank, "tid": COMPUTE_TID, "ts": _us(mid_p)})
        events.append({"name": f"{what} mb{ev.microbatch}", "cat": "pp-flow", "ph": "f", "bp": "e", "id": flow_id,
                       "pid": consumer.rank, "tid": COMPUTE_TID, "ts": _us(mid_c)})

    # ---- after the last backward: DP gradient reduction, optimizer ----------------------------------------------
    for r in range(pp):
        end = pipe.last_backward_end_s[r]
        hidden, exposed, opt = tl.dp_overlapped_s[r], tl.dp_exposed_s[r], tl.optimizer_s[r]
        if hidden > 0:
            used_threads[r].add("dp")
            events.append({"name": "DP grad reduce (hidden)", "cat": "dp", "ph": "X", "pid": r,
                           "tid": COMM_TIDS["dp"], "ts": _us(max(0.0, end - hidden)), "dur": _dur(max(0.0, end - hidden), end),
                           "args": {"seconds": hidden}})
        if exposed > 0:
            used_threads[r].add("dp")
            events.append({"name": "DP grad reduce (exposed)", "cat": "dp", "ph": "X", "pid": r,
                           "tid": COMM_TIDS["dp"], "ts": _us(end), "dur": _dur(end, end + exposed), "args": {"seconds": exposed}})
        if opt > 0:
            events.append({"name": "optimizer step", "cat": "optimizer", "ph": "X", "pid": r, "tid": COMPUTE_TID,
                           "ts": _us(end + exposed), "dur": _dur(end + exposed, end + exposed + opt), "args": {"seconds": opt}})

    # ---- memory counter: static parts + activations of the micro-batch chunks in flight ------------------------
    mem = plan.memory
    static = mem.weights_gib + mem.gradients_gib + mem.optimizer_gib + mem.overhead_gib
    peak_inflight = max(max(pipe.peak_inflight_microbatches or [1]), 1)
    per_unit = mem.activations_gib / peak_inflight
    for r in range(pp):
        steps = []
        for ev in pipe.events:
            if ev.rank == r and ev.kind == "F":
                steps.append((ev.end_s, +1))
            elif ev.rank == r and ev.kind == "B":
                steps.append((ev.end_s, -1))
        inflight = 0
        events.append({"name": "memory GiB", "ph": "C", "pid": r, "ts": 0.0,
                       "args": {"static": round(static, 3), "activations": 0.0}})
        for t, delta in sorted(steps):
            inflight += delta
            events.append({"name": "memory GiB", "ph": "C", "pid": r, "ts": _us(t),
                           "args": {"static": round(static, 3), "activations": round(max(inflight, 0) * per_unit, 3)}})

    for r in range(pp):
        for kind in sorted(used_threads[r], key=COMM_TIDS.get):
            meta.append({"name": "thread_name", "ph": "M", "pid": r, "tid": COMM_TIDS[kind],
                         "args": {"name": COMM_NAMES[kind]}})
        for lane in range(lane_count[r]):
            meta.append({"name": "thread_name", "ph": "M", "pid": r, "tid": PP_TID + lane,
                         "args": {"name": "PP send/recv" + (f" ({lane + 1})" if lane else "")}})
    events.sort(key=lambda e: (e["ts"], e["pid"], e.get("tid", 0)))
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "metadata": {"title": title or s.describe(), "strategy": s.describe(),
                         "iteration_time_s": plan.iteration_time_s, "generator": "paraplan"}}


def write_trace(plan, path: str | Path, title: str = "") -> Path:
    """Write the trace JSON; open it at ui.perfetto.dev (Open trace file) or chrome://tracing."""
    path = Path(path)
    try:
        path.write_text(json.dumps(trace_document(plan, title), separators=(",", ":")), encoding="utf-8")
    except OSError as e:
        raise ParaplanError(f"cannot write trace '{path}': {e.strerror or e}") from None
    return path
