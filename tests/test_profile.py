"""`paraplan profile` end to end on CPU: compute microbenchmarks, collectives over gloo in two processes, the fit,
the written profile, resuming a sweep cut short by its budget, `--check`, and `estimate --hardware` with the result.

Timings vary from run to run (the CI host is shared): the tests assert structure and plausible ranges, never exact
times. A hung collective fails rather than blocks: the launcher stops its processes after COLLECTIVE_TIMEOUT_S
without news (comm_bench.launch_local), and the tests lower that to 30 s."""
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from paraplan.cli import app

pytest.importorskip("torch")

TINY = ["profile", "--sweep", "tiny", "--threads", "1", "--procs", "2"]
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def paraplan(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A sweep cut short by its budget, then resumed to completion with --check:
    (first run, points it saved, second run, the profile file, whether the first run's profile was complete)."""
    from paraplan.profile import runner as profile_runner
    out = tmp_path_factory.mktemp("profile") / "hw.yaml"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(profile_runner, "COLLECTIVE_TIMEOUT_S", 90.0)   # a loaded CI host starts torch slowly
        first = paraplan(*TINY, "--out", out, "--budget", "0.3s")
        partial = out.with_name("hw.yaml.partial.jsonl")
        saved = len(partial.read_text().splitlines()) - 1 if partial.exists() else 0
        first_complete = yaml.safe_load(out.read_text())["complete"] if out.exists() else None
        second = paraplan(*TINY, "--out", out, "--budget", "10m", "--check", "--json")
    return first, saved, second, out, first_complete


def test_budget_cut_sweep_keeps_its_points(profiled):
    first, saved, _, _, first_complete = profiled
    assert saved >= 1                                   # measured before the budget ran out, kept for the rerun
    if first.exit_code == 0:                           # enough to fit: a profile marked incomplete
        assert first_complete is False
    else:                                               # too little measured to fit a profile: says so in one line
        assert first.exit_code == 2
        lines = first.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "rerun" in lines[0], first.stderr


def test_resumed_sweep_completes(profiled):
    _, saved, second, out, _ = profiled
    assert second.exit_code == 0, second.stderr
    run = json.loads(second.stdout)["profile"]
    assert run["complete"] is True
    assert run["reused"] == saved and run["reused"] + run["measured"] == run["points"]
    assert not out.with_name("hw.yaml.partial.jsonl").exists()     # removed once the sweep is complete


def test_profile_file_structure(profiled):
    out = profiled[3]
    doc = yaml.safe_load(out.read_text())
    assert doc["format"] == "paraplan-hardware-profile/1" and doc["complete"] is True
    assert doc["device"]["kind"] == "cpu" and doc["device"]["dtype"] == "fp32"
    assert doc["device"]["software"]["backend"] == "gloo" and doc["device"]["world_size"] == 2
    gpu = doc["gpu"]
    assert gpu["name"].startswith("cpu-")
    assert 1e-4 < gpu["peak_tflops"]["bf16"] < 20          # a CPU core or two: GFLOP/s to a few TFLOP/s
    assert 0.01 < gpu["hbm_gbps"] < 2000
    cal = doc["calibration"]
    for key in ("gemm_efficiency", "attention_efficiency", "memory_efficiency", "kernel_floor_s",
                "attention_backward_ratio", "collective_latency_s", "comm_half_size_bytes"):
        assert key in cal and math.isfinite(cal[key]) and cal[key] >= 0, key
    assert 0 < cal["gemm_efficiency"] <= 1 and 0 < cal["attention_efficiency"] <= 1
    assert 0 < cal["kernel_floor_s"] < 1e-2
    assert doc["node"]["gpus_per_node"] == 2 and doc["node"]["intra_node"]["bandwidth_gbps"] > 0
    # tiny sweep: 2 x 4 GEMM shapes; 5 collectives (send/recv too) x 3 sizes on the one group of 2
    assert len(doc["curves"]["gemm"]) == 8
    ops = {row[0] for row in doc["curves"]["collectives"]}
    assert ops == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"}
    assert len(doc["curves"]["collectives"]) == 15
    assert all(row[1:3] == [2, 1] and row[4] > 0 for row in doc["curves"]["collectives"])
    benches = {m["bench"] for m in doc["measurements"]}
    assert benches == {"gemm", "attention", "memory", "elementwise", "collective"}
    assert all(m["seconds"] > 0 and len(m["samples"]) == 3 for m in doc["measurements"])


def test_check_reports_an_error_per_shape(profiled):
    check = json.loads(profiled[2].stdout)["check"]
    assert [c["shape"] for c in check] == ["h128 a4/2 f344 s128 b1"]
    for c in check:
        for key in ("predicted_forward_s", "predicted_backward_s", "measured_forward_s", "measured_backward_s"):
            assert 0 < c[key] < 10, key
        assert math.isfinite(c["error"]) and c["error"] > -1


def test_profile_changes_predictions_measurably(profiled):
    out = profiled[3]
    args = ["estimate", "--model", "debug", "--strategy", "dp=2,mbs=1", "--global-batch", "4", "--seq-len", "256",
            "--json"]
    catalog = paraplan(*args, "--cluster", "dgx-h100")
    measured = paraplan(*args, "--hardware", out)
    assert catalog.exit_code == 0 and measured.exit_code == 0, measured.stderr
    t_catalog = json.loads(catalog.stdout)["iteration_time_s"]
    t_measured = json.loads(measured.stdout)["iteration_time_s"]
    assert t_measured > 3 * t_catalog                    # a CPU is far slower than an H100


def test_partial_file_from_other_settings_is_refused(tmp_path):
    from paraplan.errors import ParaplanError
    from paraplan.profile.runner import PartialResults
    path = tmp_path / "hw.yaml.partial.jsonl"
    results = PartialResults(path, {"partial_for": {"device": "here"}})
    results.add({"key": "memory/copy/1", "seconds": 1.0})
    again = PartialResults(path, {"partial_for": {"device": "here"}})
    assert list(again.records) == ["memory/copy/1"]
    assert again.remaining([{"key": "memory/copy/1"}, {"key": "gemm/x"}]) == [{"key": "gemm/x"}]
    with pytest.raises(ParaplanError, match="other settings"):
        PartialResults(path, {"partial_for": {"device": "elsewhere"}})
    path.write_text("{not json\n")
    with pytest.raises(ParaplanError, match="damaged"):
        PartialResults(path, {"partial_for": {"device": "here"}})


def test_collective_groups_within_and_across_nodes():
    from paraplan.profile.comm_bench import groups_for
    from paraplan.profile.sweeps import sweep_for
    assert groups_for(2, 2) == [(2, 1, 1)]
    assert groups_for(16, 8) == [(2, 1, 1), (4, 1, 1), (8, 1, 1), (16, 1, 2), (2, 8, 2)]   # TP-like, DP-like
    assert groups_for(6, 6) == [(2, 1, 1), (4, 1, 1), (6, 1, 1)]
    points = sweep_for("tiny").collective_points(groups_for(4, 4))
    assert {p["op"] for p in points if p["size"] == 4} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert len({p["key"] for p in points}) == len(points)
