"""Event-level pipeline simulator (paraplan.sim.engine). Expected numbers are hand-derived in the comments."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paraplan.sim import engine
from paraplan.sim.engine import PipelineCosts, closed_form_1f1b, simulate_order, simulate_pipeline
from paraplan.sim.schedules import ScheduleOp, schedule_order

TF, TB = 1.0, 2.0


def uniform(pp, vpp=1, tf=TF, tb=TB, p2p=0.0, overlapped=True):
    return PipelineCosts.uniform(pp, vpp, tf, tb, p2p, overlapped)


def reference_makespan(order, pp, vpp, costs):
    """Independent, slow reference: repeatedly run any rank whose next op's input is ready."""
    V = pp * vpp
    end = {}
    free = [0.0] * pp
    ptr = [0] * pp
    progress = True
    while progress:
        progress = False
        for r in range(pp):
            while ptr[r] < len(order[r]):
                kind, mb, c = order[r][ptr[r]]
                v = c * pp + r
                if kind == "F":
                    dep = ("F", v - 1, mb) if v > 0 else None
                    dur = costs.forward_s[r][c]
                else:
                    dep = ("F", v, mb) if v == V - 1 else ("B", v + 1, mb)
                    dur = costs.backward_s[r][c]
                ready = 0.0
                if dep is not None:
                    if dep not in end:
                        break
                    ready = end[dep] + (costs.p2p_s if dep[1] % pp != r else 0.0)
                start = max(free[r], ready)
                end[(kind, v, mb)] = start + dur
                sends = pp > 1 and ((kind == "F" and v < V - 1) or (kind == "B" and v > 0))
                free[r] = start + dur + (costs.p2p_s if sends and not costs.p2p_overlapped else 0.0)
                ptr[r] += 1
                progress = True
    assert all(ptr[r] == len(order[r]) for r in range(pp)), "reference deadlocked"
    return max(end.values())


# ---------------------------------------------------------------------------------------------------- 1F1B / GPipe

@pytest.mark.parametrize("p,m", [(1, 1), (1, 5), (2, 2), (3, 4), (4, 8), (4, 16), (8, 8), (5, 3)])
def test_uniform_1f1b_makespan_and_bubble(p, m):
    # classic: makespan = (m + p - 1)(tf + tb); every rank computes m(tf + tb), so bubble = (p - 1)(tf + tb)
    # e.g. p=4, m=8, tf=1, tb=2: 11 * 3 = 33, bubble 9 on every rank (fraction 9/33 = (p-1)/(m+p-1))
    res = simulate_pipeline("1f1b", p, 1, m, uniform(p))
    assert res.makespan_s == pytest.approx((m + p - 1) * (TF + TB))
    assert res.busy_s == pytest.approx([m * (TF + TB)] * p)
    assert res.bubble_s == pytest.approx([(p - 1) * (TF + TB)] * p)


def test_hand_timeline_p2_m2():
    # rank 0 order F0 F1 B0 B1, rank 1 order F0 B0 F1 B1 (tf=1, tb=2, no p2p):
    # r0 F0 [0,1]  F1 [1,2]                      r1 F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7]
    # r0 B0 waits for r1 B0 -> [4,6]; B1 waits for r1 B1 -> [7,9]; makespan 9 = (2+2-1)*3
    res = simulate_pipeline("1f1b", 2, 1, 2, uniform(2))
    got = {(e.rank, e.kind, e.microbatch): (e.start_s, e.end_s) for e in res.events if e.stream == "compute"}
    assert got == {
        (0, "F", 0): (0, 1), (0, "F", 1): (1, 2), (0, "B", 0): (4, 6), (0, "B", 1): (7, 9),
        (1, "F", 0): (1, 2), (1, "B", 0): (2, 4), (1, "F", 1): (4, 5), (1, "B", 1): (5, 7),
    }
    assert res.makespan_s == 9
    assert res.first_backward_start_s == [4, 2]
    assert res.last_backward_end_s == [9, 7]
    assert list(res.backward_windows[0]) == [(4, 6), (7, 9)]
    assert res.backward_windows[1] == [(2, 4), (5, 7)]
    # sends: r0 F0, F1 (to r1) and r1 B0, B1 (to r0); zero-length with p2p_s = 0
    sends = sorted((e.rank, e.kind, e.microbatch) for e in res.events if e.stream == "p2p")
    assert sends == [(0, "SEND_F", 0), (0, "SEND_F", 1), (1, "SEND_B", 0), (1, "SEND_B", 1)]


@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 4), (4, 9), (3, 7)])
def test_gpipe_makespan_equals_1f1b_and_peaks(p, m):
    # uniform costs: GPipe's critical path is also p-1 fill forwards + m forwards/backwards on one rank + p-1 drain
    g = simulate_pipeline("gpipe", p, 1, m, uniform(p))
    o = simulate_pipeline("1f1b", p, 1, m, uniform(p))
    assert g.makespan_s == pytest.approx(o.makespan_s) == pytest.approx((m + p - 1) * (TF + TB))
    # GPipe holds all m micro-batches; 1F1B rank 0 holds min(p, m) (warm-up p-1, +1 steady forward), last rank 1
    assert g.peak_inflight_microbatches == [m] * p
    assert o.peak_inflight_microbatches[0] == min(p, m)
    assert o.peak_inflight_microbatches[-1] == 1


def test_1f1b_fewer_microbatches_than_stages():
    # p=4, m=2, tf=1, tb=2: critical path = F0 down 4 ranks (4), last rank B0 F1 B1 (2+1+2), B1 up 3 ranks (6)
    # = 15 = (m + p - 1)(tf + tb)
    res = simulate_pipeline("1f1b", 4, 1, 2, uniform(4))
    assert res.makespan_s == pytest.approx(15.0)
    assert res.peak_inflight_microbatches == [2, 2, 2, 1]


# ---------------------------------------------------------------------------------------------------- interleaved

@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (2, 2, 4), (4, 2, 8), (4, 3, 4), (4, 4, 12), (3, 2, 9), (8, 2, 16)])
def test_interleaved_bubble_narayanan(p, v, m):
    # chunk costs tf/v, tb/v: each rank computes m(tf+tb); bubble = (p-1)(tf+tb)/v (Narayanan et al. 2021)
    # e.g. p=4, v=2, m=8: bubble = 3*3/2 = 4.5, makespan = 8*3 + 4.5 = 28.5
    res = simulate_pipeline("interleaved", p, v, m, uniform(p, v, TF / v, TB / v))
    assert res.busy_s == pytest.approx([m * (TF + TB)] * p)
    assert res.bubble_s == pytest.approx([(p - 1) * (TF + TB) / v] * p)
    assert res.makespan_s == pytest.approx(m * (TF + TB) + (p - 1) * (TF + TB) / v)


@pytest.mark.parametrize("p,v,m", [(4, 2, 8), (4, 3, 4), (2, 2, 2), (8, 4, 8)])
def test_interleaved_peak_inflight_matches_megatron_warmup(p, v, m):
    # rank r holds its warm-up forwards + the first steady forward: min((p-r-1)*2 + (v-1)*p + 1, m*v) chunk units
    # p=4, v=2, m=8: rank 0 -> 6 + 4 + 1 = 11; rank 3 -> 0 + 4 + 1 = 5
    res = simulate_pipeline("interleaved", p, v, m, uniform(p, v, TF / v, TB / v))
    assert res.peak_inflight_microbatches == [min((p - r - 1) * 2 + (v - 1) * p + 1, m * v) for r in range(p)]
    # Megatron's theoretical_memory_usage factor: rank 0 holds (1 + (p-1)/(p*v)) x the layers of 1F1B's rank 0
    if (p - 1) * 2 + (v - 1) * p + 1 <= m * v:   # not capped by the total
        assert res.peak_inflight_microbatches[0] / (p * v) == pytest.approx(1 + (p - 1) / (p * v))


def test_interleaved_with_remainder_group():
    # pp=2, vpp=2, m=5 with microbatch_group_size=3 (Megatron's docstring example) runs; without it -> ValueError
    res = simulate_pipeline("interleaved", 2, 2, 5, uniform(2, 2, 0.5, 1.0), microbatch_group_size=3)
    assert res.busy_s == pytest.approx([15.0, 15.0])
    with pytest.raises(ValueError):
        simulate_pipeline("interleaved", 2, 2, 5, uniform(2, 2, 0.5, 1.0))
    with pytest.raises(ValueError, match="num_microbatches >= pp"):
        simulate_pipeline("interleaved", 4, 2, 2, uniform(4, 2))


# ---------------------------------------------------------------------------------------------------- p2p

def test_p2p_m2_adds_two_hops_per_boundary():
    # p=3, m=2, d=0.5, tf=1, tb=2. Critical path: F0 r0 [0,1] -> r1 [1.5,2.5] -> r2 [3,4], r2 B0 [4,6],
    # r2 F1 (arrived 2+... long before) [6,7], B1 [7,9]; B1 -> r1 [9.5,11.5] -> r0 [12,14].
    # = (m+p-1)(tf+tb) + 2(p-1)d = 12 + 2 = 14
    res = simulate_pipeline("1f1b", 3, 1, 2, uniform(3, p2p=0.5))
    assert res.makespan_s == pytest.approx(14.0)
    assert closed_form_1f1b(3, 2, TF, TB, 0.5) == pytest.approx(14.0)


@pytest.mark.parametrize("overlapped", [True, False])
def test_p2p_exposed_in_steady_state_p2_m3(overlapped):
    # p=2, m=3, tf=1, tb=2, d=0.5. r0: F0 F1 B0 F2 B1 B2 ; r1: F0 B0 F1 B1 F2 B2
    # overlapped:  r0 F0 [0,1] F1 [1,2]; r1 F0 [1.5,2.5] B0 [2.5,4.5] F1 [4.5,5.5]; r0 B0 [5,7] F2 [7,8];
    #              r1 B1 [5.5,7.5] F2 (arrives 8.5) [8.5,9.5] B2 [9.5,11.5]; r0 B1 [8,10] B2 (arrives 12) [12,14]
    # blocking:    r0 F0 [0,1] (+0.5 send) F1 [1.5,2.5] (+0.5); r1 F0 [1.5,2.5] B0 [2.5,4.5] (+0.5) F1 [5,6]
    #              B1 [6,8] (+0.5); r0 B0 [5,7] F2 [7,8] (+0.5) B1 [8.5,10.5]; r1 F2 [8.5,9.5] B2 [9.5,11.5]
    #              (+0.5); r0 B2 [12,14]
    # both 14 = 4*3 + 4*0.5: the steady-state round trip r0 F1 -> r1 F1 -> r1 B1 -> r0 B1 is exposed, so the
    # p2p cost is 4d here, not 2(p-1)d = 2d.
    res = simulate_pipeline("1f1b", 2, 1, 3, uniform(2, p2p=0.5, overlapped=overlapped))
    assert res.makespan_s == pytest.approx(14.0)
    assert res.busy_s == pytest.approx([9.0, 9.0])
    if overlapped:
        assert closed_form_1f1b(2, 3, TF, TB, 0.5) == pytest.approx(14.0)
    send = [e for e in res.events if e.kind == "SEND_F" and e.rank == 0 and e.microbatch == 0][0]
    assert (send.start_s, send.end_s, send.stream) == (1.0, 1.5, "p2p" if overlapped else "compute")


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 9), m=st.integers(1, 30), tf=st.floats(0, 3), tb=st.floats(0, 3), d=st.floats(0, 2))
def test_closed_form_1f1b_matches_engine(p, m, tf, tb, d):
    res = simulate_pipeline("1f1b", p, 1, m, uniform(p, 1, tf, tb, d), record_events=False)
    assert res.makespan_s == pytest.approx(closed_form_1f1b(p, m, tf, tb, d), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------------- uneven stages

def test_uneven_last_stage_bottleneck():
    # tf = [1, 1, 2], tb = [2, 2, 4], m = 4: the last rank (6 s per micro-batch) never waits once started:
    # start = fill tf0 + tf1 = 2, busy 4 * 6 = 24, drain tb1 + tb0 = 4 -> 30 = m*(tf_s+tb_s) + sum_{r!=s}(tf_r+tb_r)
    costs = PipelineCosts([[1.0], [1.0], [2.0]], [[2.0], [2.0], [4.0]], 0.0)
    res = simulate_pipeline("1f1b", 3, 1, 4, costs)
    assert res.makespan_s == pytest.approx(30.0)
    assert res.bubble_s == pytest.approx([30 - 12, 30 - 12, 30 - 24])


def test_uneven_middle_stage_bottleneck():
    # tf = [1, 2, 1], tb = [2, 4, 2], m = 4. Lower bound m*(tf1+tb1) + (tf0+tb0) + (tf2+tb2) = 24 + 6 = 30.
    # The slow middle rank (warm-up 1) must wait: r1 F0 [1,3] F1 [3,5]; r2 F0 [3,4] B0 [4,6]; r1 B0 [6,10]
    # (idle 5-6); r1 F2 [10,12]; r2 F1 [5,6] B1 [6,8]; r1 B1 [12,16] F3 [16,18]; r2 F2 [12,13] B2 [13,15];
    # r1 B2 [18,22]; r2 F3 [18,19] B3 [19,21]; r1 B3 [22,26]; r0 B3 after it [26,28]: 28?  No: r0's order is
    # F0 F1 F2 B0 F3 B1 B2 B3 and r0 B0 [10,12], F3 [12,13] (r1 gets F3 at 13, runs it at 16), B1 [16,18],
    # B2 [22,24], B3 [26,28] -> makespan 28 ... which is below the "bound"?  The bound above is wrong for the
    # middle stage: fill/drain around stage s is tf0 + tb0 only on one side (the last stage's work overlaps
    # the slow stage), so the valid bound is m*(tf1+tb1) + tf0 + tb0 = 24 + 3 = 27 < 28 (1 s of r1 idle: 5-6).
    costs = PipelineCosts([[1.0], [2.0], [1.0]], [[2.0], [4.0], [2.0]], 0.0)
    res = simulate_pipeline("1f1b", 3, 1, 4, costs)
    assert res.makespan_s == pytest.approx(28.0)
    assert res.makespan_s >= 4 * 6.0 + 1.0 + 2.0
    assert res.bubble_s[1] == pytest.approx(28.0 - 24.0)


# ---------------------------------------------------------------------------------------------------- properties

_SCHEDULES = st.sampled_from(["gpipe", "1f1b", "interleaved"])


@st.composite
def _cases(draw):
    schedule = draw(_SCHEDULES)
    p = draw(st.integers(1, 5))
    if schedule == "interleaved":
        v = draw(st.integers(2, 3))
        m = p * draw(st.integers(1, 4))
    else:
        v = 1
        m = draw(st.integers(1, 10))
    cost = st.floats(0.0, 4.0, allow_nan=False)
    fwd = [[draw(cost) for _ in range(v)] for _ in range(p)]
    bwd = [[draw(cost) for _ in range(v)] for _ in range(p)]
    d = draw(st.floats(0.0, 2.0))
    overlapped = draw(st.booleans())
    return schedule, p, v, m, PipelineCosts(fwd, bwd, d, overlapped)


@settings(max_examples=120, deadline=None)
@given(case=_cases(), data=st.data())
def test_properties(case, data):
    schedule, p, v, m, costs = case
    res = simulate_pipeline(schedule, p, v, m, costs)
    order = schedule_order(schedule, p, v, m)
    tol = 1e-9 * (1 + res.makespan_s)
    # an independent slow reference agrees
    assert res.makespan_s == pytest.approx(reference_makespan(order, p, v, costs), rel=1e-12, abs=1e-12)
    # makespan >= every rank's compute
    assert res.makespan_s >= max(res.busy_s) - tol
    # makespan >= one micro-batch's critical path: all forwards then all backwards through the V virtual stages
    # plus 2(V-1) p2p hops when pp > 1
    one = sum(map(sum, costs.forward_s)) + sum(map(sum, costs.backward_s))
    hops = 2 * (p * v - 1) if p > 1 else 0
    assert res.makespan_s >= one + hops * costs.p2p_s - tol
    # per-rank bookkeeping
    for r in range(p):
        w = res.backward_windows[r]
        assert len(w) == m * v
        assert res.first_backward_start_s[r] == w[0][0] and res.last_backward_end_s[r] == w[-1][1]
        assert all(a[1] <= b[0] + tol for a, b in zip(w, w[1:]))
        assert res.bubble_s[r] == pytest.approx(res.makespan_s - res.busy_s[r])
        # compute events on a rank follow the order and never overlap
        ev = [e for e in res.events if e.rank == r and e.kind in ("F", "B")]
        assert [(e.kind, e.microbatch, e.chunk) for e in ev] == [tuple(op) for op in order[r]]
        assert all(a.end_s <= b.start_s + tol for a, b in zip(ev, ev[1:]))
    assert sum(e.kind.startswith("SEND") for e in res.events) == (2 * m * (p * v - 1) if p > 1 else 0)
    # the cached (level) path gives the same result as a fresh compile
    engine._program_for.cache_clear()
    again = simulate_pipeline(schedule, p, v, m, costs, record_events=False)
    assert again.makespan_s == res.makespan_s and again.busy_s == res.busy_s
    # monotone non-decreasing in any cost
    which = data.draw(st.sampled_from(["forward_s", "backward_s", "p2p_s"]))
    bump = data.draw(st.floats(0.0, 3.0))
    if which == "p2p_s":
        bigger = PipelineCosts(costs.forward_s, costs.backward_s, costs.p2p_s + bump, costs.p2p_overlapped)
    else:
        r, c = data.draw(st.integers(0, p - 1)), data.draw(st.integers(0, v - 1))
        table = [row[:] for row in getattr(costs, which)]
        table[r][c] += bump
        kw = {"forward_s": costs.forward_s, "backward_s": costs.backward_s, which: table}
        bigger = PipelineCosts(kw["forward_s"], kw["backward_s"], costs.p2p_s, costs.p2p_overlapped)
    assert simulate_pipeline(schedule, p, v, m, bigger, record_events=False).makespan_s >= res.makespan_s - tol
    # blocking p2p never beats overlapped p2p
    if costs.p2p_overlapped:
        blocking = PipelineCosts(costs.forward_s, costs.backward_s, costs.p2p_s, False)
        assert simulate_pipeline(schedule, p, v, m, blocking, record_events=False).makespan_s >= res.makespan_s - tol


# ---------------------------------------------------------------------------------------------------- errors

def test_deadlocking_order_raises_runtime_error():
    # rank 0 wants B0 before F0, but B0 needs rank 1's B0, which needs rank 1's F0, which needs rank 0's F0
    order = [[ScheduleOp("B", 0, 0), ScheduleOp("F", 0, 0)], [ScheduleOp("F", 0, 0), ScheduleOp("B", 0, 0)]]
    with pytest.raises(RuntimeError, match="deadlock"):
        simulate_order(order, 2, 1, uniform(2))


def test_simulate_order_matches_builtin():
    order = schedule_order("1f1b", 3, 1, 5)
    a = simulate_order(order, 3, 1, uniform(3, p2p=0.25))
    b = simulate_pipeline("1f1b", 3, 1, 5, uniform(3, p2p=0.25))
    assert a.makespan_s == b.makespan_s and a.backward_windows == b.backward_windows


@pytest.mark.parametrize("call", [
    lambda: simulate_order([[("F", 0, 0)], [("F", 0, 0), ("B", 0, 0)]], 2, 1, uniform(2)),  # rank 0 lacks B0
    lambda: simulate_pipeline("1f1b", 2, 2, 4, uniform(2, 2)),                               # vpp with 1f1b
    lambda: simulate_pipeline("1f1b", 2, 1, 4, uniform(3)),                                  # wrong cost shape
    lambda: simulate_pipeline("1f1b", 2, 1, 4, PipelineCosts([[1.0], [-1.0]], [[1.0], [1.0]], 0.0)),
    lambda: simulate_pipeline("1f1b", 2, 1, 4, uniform(2, p2p=-1.0)),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
