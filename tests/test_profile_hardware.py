"""The hardware profile file without torch: its format and checks, how it changes predictions (`estimate
--hardware`), the measured-curve lookups of cost/measured.py, the fits of profile/fit.py on synthetic records, and
the `paraplan profile` argument errors that come before any measurement."""
import copy
import json
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.cost import comm, compute, measured
from paraplan.cost.calibration import Calibration, calibration_for
from paraplan.profile import fit
from paraplan.profile.hardware import FORMAT, HARDWARE_FIELDS, apply_hardware, load_hardware, write_hardware
from paraplan.specs import GPUSpec
from paraplan.specs.loaders import load_cluster
from tests.test_cli import assert_one_line_error

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})

# A GPU that is 4x slower than an H100 at everything, with measured collective curves for groups of 2 and 8.
DOC = {
    "format": FORMAT,
    "created": "2026-11-23T15:00:00Z",
    "complete": True,
    "device": {"kind": "cuda", "name": "Slow GPU", "host": "test", "dtype": "bf16"},
    "gpu": {"name": "slow-gpu", "vendor": "measured", "peak_tflops": {"bf16": 250.0}, "hbm_gb": 80, "hbm_gbps": 800,
            "sm_count": 132, "sources": ["synthetic"]},
    "node": {"gpus_per_node": 8, "intra_node": {"name": "measured", "bandwidth_gbps": 100.0, "latency_us": 20.0},
             "inter_node": None},
    "calibration": {"gemm_efficiency": 0.7, "memory_efficiency": 0.6, "kernel_floor_s": 1e-5,
                    "intra_node_efficiency": 1.0, "collective_latency_s": 2e-5},
    "curves": {"gemm": [["bf16", 4096, 4096, 4096, 150.0], ["bf16", 8192, 8192, 8192, 170.0]],
               "collectives": [["all_reduce", 2, 1, 1048576, 1e-4], ["all_reduce", 2, 1, 16777216, 5e-4],
                               ["all_gather", 8, 1, 16777216, 8e-4]]},
    "measurements": [],
}
ESTIMATE = ["estimate", "--model", "llama3-8b", "--strategy", "tp=2,dp=4,mbs=1", "--global-batch", "32",
            "--seq-len", "4096", "--json"]


@pytest.fixture
def hw_file(tmp_path):
    path = tmp_path / "hw.yaml"
    write_hardware(copy.deepcopy(DOC), path)
    return path


def _write(tmp_path, doc) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_hardware_fields_are_calibration_fields():
    assert set(HARDWARE_FIELDS) <= {f.name for f in fields(Calibration)}


def test_load_round_trip(hw_file):
    hw = load_hardware(hw_file)
    assert hw.gpu.name == "slow-gpu" and hw.gpu.peak("bf16") == 250.0
    assert hw.gpus_per_node == 8 and set(hw.links) == {"intra_node"}
    assert hw.overrides["gemm_efficiency"] == 0.7
    assert hw.overrides["gemm_measured"][0] == ("bf16", 4096, 4096, 4096, 150.0)
    assert len(hw.overrides["comm_measured"]) == 3
    cal = hw.calibration("megatron-lm")
    assert cal.gemm_efficiency == 0.7
    assert cal.layer_host_s == calibration_for("H100-SXM5-80GB", "megatron-lm").layer_host_s  # software stays


def test_apply_replaces_gpu_and_measured_links_only(hw_file):
    hw = load_hardware(hw_file)
    cluster = apply_hardware(hw, load_cluster("dgx-h100", 16))
    g = cluster.primary
    assert g.gpu.name == "slow-gpu" and g.num_nodes == 2 and g.gpus_per_node == 8
    assert g.intra_node.bandwidth_gbps == 100.0
    assert g.inter_node == load_cluster("dgx-h100", 16).primary.inter_node      # not measured: the cluster's own
    alone = apply_hardware(hw, None, 4)
    assert alone.num_gpus == 4 and alone.gpu.name == "slow-gpu"


def test_profile_changes_predictions(hw_file):
    base = json.loads(runner.invoke(app, [*ESTIMATE, "--cluster", "dgx-h100"]).stdout)
    result = runner.invoke(app, [*ESTIMATE, "--cluster", "dgx-h100", "--hardware", str(hw_file)])
    assert result.exit_code == 0, result.stderr
    profiled = json.loads(result.stdout)
    assert profiled["iteration_time_s"] > 2.0 * base["iteration_time_s"]    # a 4x slower device
    alone = runner.invoke(app, [*ESTIMATE, "--hardware", str(hw_file)])     # the profiled node itself
    assert alone.exit_code == 0, alone.stderr
    assert json.loads(alone.stdout)["iteration_time_s"] == pytest.approx(profiled["iteration_time_s"], rel=1e-9)


def test_more_devices_than_the_profiled_node_need_a_cluster(hw_file):
    result = runner.invoke(app, ["estimate", "--model", "llama3-8b", "--strategy", "tp=8,dp=2", "--global-batch",
                                 "32", "--seq-len", "4096", "--hardware", str(hw_file)])
    assert_one_line_error(result, "--cluster", code=2)


@pytest.mark.parametrize("change, needle", [
    ({"format": "v0"}, "format"),
    ({"gpu": None}, "gpu"),
    ({"node": {"gpus_per_node": 0}}, "gpus_per_node"),
    ({"calibration": {"gemm_efficiency": -1}}, "calibration.gemm_efficiency"),
    ({"calibration": {"layer_host_s": 0.1}}, "layer_host_s"),
    ({"curves": {"gemm": [["bf16", 1, 2]]}}, "curves.gemm[0]"),
    ({"curves": {"collectives": [["broadcast", 2, 1, 10, 1e-3]]}}, "curves.collectives[0]"),
    ({"surprise": 1}, "surprise"),
])
def test_malformed_profile_is_one_line(tmp_path, change, needle):
    doc = {**copy.deepcopy(DOC), **change}
    result = runner.invoke(app, [*ESTIMATE, "--hardware", _write(tmp_path, doc)])
    assert_one_line_error(result, needle, code=2)


def test_profile_file_not_yaml_mapping_or_missing(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert_one_line_error(runner.invoke(app, [*ESTIMATE, "--hardware", str(path)]), "mapping", code=2)
    assert_one_line_error(runner.invoke(app, [*ESTIMATE, "--hardware", str(tmp_path / "none.yaml")]),
                          "not found", code=2)


def test_hardware_with_runs_is_refused(hw_file):
    result = runner.invoke(app, ["estimate", "--runs", "x.csv", "--hardware", str(hw_file)])
    assert_one_line_error(result, "--runs", code=2)


# ---- measured curves ------------------------------------------------------------------------------------------
GPU = GPUSpec("g", {"bf16": 100.0}, 80.0, 1000.0, sm_count=100)


def test_gemm_curve_is_exact_at_measured_shapes_and_corrects_between():
    cal = Calibration(kernel_floor_s=0.0, gemm_measured=(("bf16", 1024, 1024, 1024, 20.0),
                                                        ("bf16", 4096, 4096, 4096, 30.0)))
    for m, tflops in ((1024, 20.0), (4096, 30.0)):
        assert 2 * m**3 / compute.gemm_time(m, m, m, GPU, cal, "bf16") / 1e12 == pytest.approx(tflops, rel=1e-9)
    between = 2 * 2048**3 / compute.gemm_time(2048, 2048, 2048, GPU, cal, "bf16") / 1e12
    assert 20.0 < between < 30.0
    analytic = 2 * 2048**3 / compute.gemm_time(2048, 2048, 2048, GPU, Calibration(kernel_floor_s=0.0), "bf16") / 1e12
    assert analytic > 50.0                          # the curve, not the analytic model, sets the level


def test_gemm_curve_precision_fallback():
    rows, used = measured.gemm_rows((("fp32", 64, 64, 64, 1.0), ("bf16", 64, 64, 64, 2.0)), "fp16")
    assert used == "bf16"
    rows, used = measured.gemm_rows((("fp32", 64, 64, 64, 1.0),), "bf16")
    assert used == "fp32" and rows == ((64, 64, 64, 1.0),)
    assert measured.gemm_rows((), "bf16") == ((), None)


def test_collective_curve_interpolates_extrapolates_and_falls_back():
    table = (("all_reduce", 2, 1, 1e6, 1e-4), ("all_reduce", 2, 1, 1e7, 5e-4))
    assert measured.collective_seconds(table, "all_reduce", 1e6, 2, 1) == pytest.approx(1e-4)
    mid = measured.collective_seconds(table, "all_reduce", 3e6, 2, 1)
    assert 1e-4 < mid < 5e-4
    assert measured.collective_seconds(table, "all_reduce", 1e3, 2, 1) == pytest.approx(1e-4)   # latency-bound
    big = measured.collective_seconds(table, "all_reduce", 1e8, 2, 1)
    assert big == pytest.approx(5e-4 + 9e7 * (4e-4 / 9e6))                                     # last segment's rate
    assert measured.collective_seconds(table, "all_reduce", 1e6, 4, 1) is None                  # unmeasured group
    assert measured.collective_seconds(table, "all_gather", 1e6, 2, 1) is None


def test_collective_time_uses_the_curve_only_where_measured():
    link = load_cluster("dgx-h100", 8).primary.intra_node
    cal = Calibration(comm_measured=(("all_reduce", 2, 1, 1e6, 1e-3),))
    two = comm.Group(2, 2, 1)
    assert comm.collective_time("all_reduce", 1e6, two, link, link, cal) == pytest.approx(1e-3)
    four = comm.Group(4, 4, 1)
    assert comm.collective_time("all_reduce", 1e6, four, link, link, cal) == \
        comm.collective_time("all_reduce", 1e6, four, link, link, Calibration())
    assert comm.p2p_time(1e6, False, link, link, Calibration(comm_measured=(("send_recv", 2, 1, 1e6, 2e-3),))) \
        == pytest.approx(2e-3)


# ---- fits on synthetic records ---------------------------------------------------------------------------------
def test_gemm_fit_recovers_the_model():
    truth = Calibration(gemm_efficiency=0.7, gemm_k_half=64.0)
    records = []
    for m, n, k in ((512, 512, 64), (512, 512, 512), (2048, 2048, 256), (4096, 4096, 4096), (1024, 4096, 128)):
        eff = compute.gemm_efficiency(m, n, k, GPU, truth)
        records.append({"bench": "gemm", "precision": "bf16", "m": m, "n": n, "k": k, "tflops": 100.0 * eff,
                        "seconds": 2.0 * m * n * k / (100e12 * eff)})
    got = fit.fit_gemm(records, 100.0, GPU.sm_count, "bf16", floor_s=0.0)
    assert got["gemm_k_half"] == 64.0
    assert got["gemm_efficiency"] == pytest.approx(0.7, rel=1e-3)


def test_attention_fit_never_promises_more_than_peak():
    # throughput still rising linearly at the largest length: the fit must cap the large-size level at 1
    records = [{"bench": "attention", "seq_len": s, "tflops": 0.01 * s, "seconds": 1.0, "backward_seconds": 2.5}
               for s in (64, 128, 256)]
    got = fit.fit_attention(records, peak_tflops=1.0, floor_s=0.0)
    assert got["attention_efficiency"] <= 1.0
    assert got["attention_backward_ratio"] == 2.5


def test_collective_fit_recovers_bandwidth_and_latency():
    bandwidth, latency = 50e9, 2e-5
    records = [{"bench": "collective", "op": op, "size": n, "nodes": 1, "bytes": s,
                "seconds": latency + comm.BUS_FACTOR[op](n) * s / bandwidth}
               for op in ("all_reduce", "all_gather") for n in (2, 4) for s in (1e4, 1e6, 1e8)]
    links, constants = fit.fit_collectives(records)
    assert links["intra_node"]["bandwidth_gbps"] == pytest.approx(50.0, rel=1e-3)
    assert constants["collective_latency_s"] == pytest.approx(latency, rel=1e-3)
    assert constants["comm_half_size_bytes"] == pytest.approx(0.0, abs=1.0)


def test_catalog_gpu_matching_needs_family_and_memory():
    assert fit.catalog_gpu_for("NVIDIA H100 80GB HBM3") == "H100-SXM5-80GB"
    assert fit.catalog_gpu_for("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert fit.catalog_gpu_for("NVIDIA H100 PCIe") == "H100-PCIe-80GB"     # its own entry, not the SXM part's
    assert fit.catalog_gpu_for("NVIDIA GH200 480GB") == "GH200-96GB"       # nvidia-smi's name for the 96 GB part
    assert fit.catalog_gpu_for("NVIDIA L4") is None                        # not in the catalog


# ---- the command's own argument errors, before torch is needed -------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--out", "{tmp}/hw.yaml", "--budget", "soon"], "--budget"),
    (["--out", "{tmp}/hw.yaml", "--budget", "0"], "--budget"),
    (["--out", "{tmp}/missing/hw.yaml"], "does not exist"),
    (["--out", "{tmp}"], "directory"),
    (["--out", "{tmp}/hw.yaml", "--procs", "0"], "--procs"),
    ([], "--out"),
    (["--check", "--hardware", "{tmp}/none.yaml"], "not found"),
    (["--sweep", "huge", "--out", "{tmp}/hw.yaml"], "unknown sweep"),
    (["--out", "{tmp}/hw.yaml", "--hardware", "{tmp}/hw.yaml"], "not both"),
])
def test_profile_bad_input_is_one_line(tmp_path, args, needle):
    result = runner.invoke(app, ["profile", *[a.format(tmp=tmp_path) for a in args]])
    assert_one_line_error(result, needle, code=2)


def test_paraplan_runs_without_importing_torch(hw_file):
    code = ("import sys, json; from paraplan import api; import paraplan.cli; "
            f"api.estimate_strategy('debug', None, 'dp=2', 4, 256, hardware={str(hw_file)!r}); "
            "print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) is False



def _synthetic_h100_records() -> list[dict]:
    """What an 8-GPU H100 node on two nodes could measure: the shape of the records the benchmarks write."""
    truth = Calibration(gemm_efficiency=0.75, gemm_k_half=32.0)
    h100 = load_cluster("dgx-h100", 8).gpu
    peak = h100.peak("bf16")
    records = [{"bench": "memory", "bytes": 1 << 30, "seconds": 2 * 2**30 / 3000e9, "gbps": 3000.0},
               {"bench": "elementwise", "op": "add", "elements": 1, "seconds": 3e-6, "elements_moved": 3},
               {"bench": "elementwise", "op": "add", "elements": 1 << 26, "seconds": 3 * 2 * 2**26 / 2600e9,
                "elements_moved": 3 * 2**26}]
    for precision, scale in (("bf16", 1.0), ("fp8", 1.6)):
        for m, n, k in ((2048, 4096, 4096), (8192, 8192, 8192), (16384, 28672, 4096), (512, 1024, 1024)):
            tflops = peak * scale * compute.gemm_efficiency(m, n, k, h100, truth)
            records.append({"bench": "gemm", "precision": precision, "m": m, "n": n, "k": k, "tflops": tflops,
                            "seconds": 2.0 * m * n * k / tflops / 1e12})
    for s in (1024, 4096, 16384):
        tflops = peak * 0.55 * s / (s + 1024)
        records.append({"bench": "attention", "seq_len": s, "tflops": tflops, "seconds": 1e-3,
                        "backward_seconds": 2.6e-3})
    for n, nodes, bw in ((2, 1, 360e9), (8, 1, 370e9), (2, 2, 45e9)):
        for op in ("all_reduce", "all_gather"):
            for size in (1 << 20, 1 << 26, 1 << 30):
                records.append({"bench": "collective", "op": op, "size": n, "stride": 8 if nodes > 1 else 1,
                                "nodes": nodes, "bytes": size,
                                "seconds": 2e-5 + comm.BUS_FACTOR[op](n) * size / bw})
    return records


def test_gpu_profile_document_keeps_datasheet_peaks_and_fits_efficiencies(tmp_path):
    device = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "host": "node0", "dtype": "bf16", "sm_count": 132}
    doc = fit.profile_document(_synthetic_h100_records(), device, True, 16, 8, "nccl",
                               {"python": "3.11", "torch": "2.13.0", "cuda": "12.8", "nccl": "2.27.3"})
    h100 = load_cluster("dgx-h100", 8).gpu
    assert doc["gpu"]["name"] == h100.name and doc["gpu"]["peak_tflops"] == h100.peak_tflops
    cal = doc["calibration"]
    assert cal["gemm_efficiency"] == pytest.approx(0.75, rel=0.02) and cal["gemm_k_half"] == 32.0
    assert cal["fp8_gemm_speedup"] == pytest.approx(1.6, rel=1e-3)
    assert cal["attention_efficiency"] == pytest.approx(0.55, rel=0.05)
    assert cal["memory_efficiency"] == pytest.approx(2600 / h100.hbm_gbps, rel=0.01)  # element-wise vs datasheet
    assert doc["node"]["inter_node"]["bandwidth_gbps"] == pytest.approx(45.0, rel=0.01)
    assert doc["device"]["nodes"] == 2
    path = tmp_path / "h100.yaml"
    write_hardware(doc, path)
    hw = load_hardware(path)
    cluster = apply_hardware(hw, load_cluster("dgx-h100", 16))
    assert cluster.primary.inter_node.bandwidth_gbps == pytest.approx(45.0, rel=0.01)
    assert hw.calibration("megatron-lm").gemm_efficiency == pytest.approx(0.75, rel=0.02)
