"""The Perfetto / Chrome trace of a simulated iteration: structure Perfetto's JSON importer needs (docs/reference/
ecosystem.md §5): integer pid/tid, named processes and threads, X slices with dur that never overlap on one thread,
s/f flow pairs sharing (id, cat, name) and bound inside slices, counter events, microsecond times sorted by ts."""
import json
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.sim.trace import COMPUTE_TID, trace_document, write_trace
from paraplan.specs import JobSpec, Strategy
from paraplan.specs.loaders import load_cluster, load_model

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _plan(strategy, model="llama3-8b", gb=32, seq=4096, framework="megatron-lm"):
    s = Strategy.parse(strategy)
    return estimate(load_model(model), load_cluster("dgx-h100", s.world_size),
                    JobSpec(global_batch=gb, seq_len=seq, framework=framework), s, record_events=True)


PLANS = {
    "interleaved": "tp=2,pp=4,dp=2,vpp=2,mbs=1,zero=1,sp=true,recompute=selective",
    "1f1b": "tp=2,pp=4,dp=1,mbs=1,zero=0",
    "no-pp": "tp=4,pp=1,dp=2,mbs=1,zero=1,sp=true",
    "cp": "tp=2,cp=2,pp=2,dp=2,mbs=1,zero=1,sp=true",
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def doc(request):
    plan = _plan(PLANS[request.param])
    return plan, trace_document(plan)


def test_document_shape(doc):
    plan, d = doc
    json.loads(json.dumps(d))                      # plain JSON
    assert d["displayTimeUnit"] == "ms" and isinstance(d["traceEvents"], list)
    for e in d["traceEvents"]:
        assert e["ph"] in ("M", "X", "s", "f", "C"), e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if e["ph"] != "M":
            assert e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0 and e["name"]
    timed = [e["ts"] for e in d["traceEvents"] if e["ph"] != "M"]
    assert timed == sorted(timed)


def test_a_process_per_stage_and_a_thread_per_stream(doc):
    plan, d = doc
    names = {e["pid"]: e["args"]["name"] for e in d["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names) == list(range(plan.strategy.pp))
    assert all(n.startswith(f"PP stage {p} (ranks ") for p, n in names.items())
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in d["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    used = {(e["pid"], e["tid"]) for e in d["traceEvents"] if e["ph"] == "X"}
    assert used <= set(threads), used - set(threads)
    assert all(threads[(p, COMPUTE_TID)] == "compute" for p in names)
    s = plan.strategy
    kinds = set(threads.values())
    if s.tp > 1:
        assert "TP comm" in kinds
    if s.cp > 1:
        assert "CP comm" in kinds
    if s.pp > 1:
        assert "PP send/recv" in kinds
    if s.dp > 1:
        assert "DP grad reduce" in kinds


def test_slices_per_microbatch_and_no_overlap_on_a_thread(doc):
    plan, d = doc
    s = plan.strategy
    xs = [e for e in d["traceEvents"] if e["ph"] == "X"]
    fwd = [e for e in xs if e["cat"] == "forward"]
    bwd = [e for e in xs if e["cat"] == "backward"]
    m = s.num_microbatches(32)
    assert len(fwd) == len(bwd) == m * s.pp * s.vpp
    by_thread = defaultdict(list)
    for e in xs:
        by_thread[(e["pid"], e["tid"])].append(e)
    for key, slices in by_thread.items():
        slices.sort(key=lambda e: e["ts"])
        for a, b in zip(slices, slices[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, (key, a, b)    # nest-free: one slice at a time
    end = max(e["ts"] + e["dur"] for e in xs)
    assert end == pytest.approx((plan.iteration_time_s - plan.timeline.iteration_overhead_s) * 1e6, rel=1e-6)


def test_flows_join_each_pipeline_send(doc):
    plan, d = doc
    starts = {e["id"]: e for e in d["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in d["traceEvents"] if e["ph"] == "f"}
    sends = [e for e in d["traceEvents"] if e["ph"] == "X" and e["cat"] == "pp"]
    assert set(starts) == set(ends) and len(starts) == len(sends)
    compute = [e for e in d["traceEvents"] if e["ph"] == "X" and e["tid"] == COMPUTE_TID]
    for fid, s_ev in starts.items():
        f_ev = ends[fid]
        assert (s_ev["cat"], s_ev["name"]) == (f_ev["cat"], f_ev["name"]) and f_ev["bp"] == "e"
        assert f_ev["ts"] > s_ev["ts"] and s_ev["pid"] != f_ev["pid"]
        for ev in (s_ev, f_ev):   # each end lies inside a compute slice of its stage
            assert any(c["pid"] == ev["pid"] and c["ts"] <= ev["ts"] <= c["ts"] + c["dur"] for c in compute)


def test_memory_counter_track(doc):
    plan, d = doc
    counters = [e for e in d["traceEvents"] if e["ph"] == "C"]
    assert {e["pid"] for e in counters} == set(range(plan.strategy.pp))
    peak = max(e["args"]["static"] + e["args"]["activations"] for e in counters)
    m = plan.memory
    assert peak == pytest.approx(m.weights_gib + m.gradients_gib + m.optimizer_gib + m.overhead_gib + m.activations_gib,
                                 rel=0.01)
    assert all(e["args"]["activations"] >= 0 for e in counters)


def test_plan_without_timeline_is_an_error():
    s = Strategy.parse("tp=2,dp=4,mbs=1")
    plan = estimate(load_model("llama3-8b"), load_cluster("dgx-h100", 8), JobSpec(global_batch=32, seq_len=4096), s)
    with pytest.raises(ParaplanError, match="record_events"):
        trace_document(plan)


def test_cli_trace(tmp_path):
    out = tmp_path / "t.json"
    r = runner.invoke(app, ["trace", "--model", "llama3-8b", "--cluster", "dgx-h100", "--strategy", PLANS["1f1b"],
                            "--global-batch", "32", "--seq-len", "4096", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["traceEvents"]
    r = runner.invoke(app, ["trace", "--model", "llama3-8b", "--cluster", "dgx-h100", "--strategy", "tp=3,dp=1",
                            "--global-batch", "32", "--seq-len", "4096", "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_write_trace_bad_path(tmp_path):
    with pytest.raises(ParaplanError, match="cannot write trace"):
        write_trace(_plan(PLANS["1f1b"]), tmp_path / "missing" / "t.json")


def test_readme_demo_trace_is_well_formed():
    """docs/trace.json (python -m paraplan.report.demo docs) is the README's demo trace."""
    path = __import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "trace.json"
    d = json.loads(path.read_text())
    phases = {e["ph"] for e in d["traceEvents"]}
    assert {"M", "X", "s", "f", "C"} <= phases
    assert all(isinstance(e["pid"], int) for e in d["traceEvents"])
