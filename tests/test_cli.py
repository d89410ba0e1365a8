"""The `paraplan` command line: output of estimate / validate / presets, the `--runs --json` contract of
docs/DESIGN.md, and bad input as ONE `error:` line on stderr with a non-zero exit code, never a traceback."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from tests.rows import synthetic_row

DATA = Path(__file__).resolve().parent.parent / "data" / "validation"
STRATEGY = "tp=2,pp=1,dp=4,mbs=1,zero=1,recompute=selective,sp=true"
GOOD = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--strategy", STRATEGY,
        "--global-batch", "64", "--seq-len", "8192"]
PLAN_KEYS = {"iteration_time_s", "time_breakdown", "memory_gib_per_gpu", "tokens_per_s", "mfu", "flop_formula"}

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles, code=None):
    """Non-zero exit, exactly one non-empty stderr line starting with 'error:', no traceback, nothing on stdout."""
    assert result.exit_code != 0, result.stdout
    if code is not None:
        assert result.exit_code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_runs(path: Path, rows: list[dict]) -> Path:
    header = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def small_runs(tmp_path) -> tuple[Path, list[str]]:
    """The first three rows of the published file, one good synthetic row, and two bad ones."""
    with (DATA / "published_runs.csv").open(newline="") as fh:
        real = [row for _, row in zip(range(3), csv.DictReader(fh))]
    rows = real + [synthetic_row(),
                   synthetic_row(id="cli_bad_tp3", tp="3", dp="2"),     # 3*1*2 = 6 GPUs, not 8
                   synthetic_row(id="cli_bad_empty", layers="")]         # a required field left empty
    return write_runs(tmp_path / "runs.csv", rows), [r["id"] for r in rows]


# ---- estimate ------------------------------------------------------------------------------------------------------
def test_estimate_table_shows_time_and_memory():
    result = invoke(*GOOD)
    assert result.exit_code == 0, result.stderr
    plan = json.loads(invoke(*GOOD, "--json").stdout)
    out = result.stdout
    assert "iteration" in out and f"{plan['iteration_time_s']:.4f}" in out
    assert "memory per GPU" in out and f"{plan['memory_gib_per_gpu']:.2f}" in out
    assert "tokens/s" in out and "MFU" in out
    assert result.stderr == ""


def test_estimate_json_is_one_document_with_the_contract_keys():
    result = invoke(*GOOD, "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)          # the whole of stdout is one JSON document
    assert isinstance(plan, dict)
    assert PLAN_KEYS <= set(plan)
    assert plan["iteration_time_s"] > 0 and plan["memory_gib_per_gpu"] > 0 and 0 < plan["mfu"] < 1
    assert plan["strategy"]["tp"] == 2 and plan["strategy"]["dp"] == 4
    assert isinstance(plan["time_breakdown"], dict) and "compute_s" in plan["time_breakdown"]


def test_estimate_is_deterministic():
    assert invoke(*GOOD, "--json").stdout == invoke(*GOOD, "--json").stdout


def test_estimate_runs_json_one_object_per_row(small_runs):
    path, ids = small_runs
    result = invoke("estimate", "--runs", path, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out, list) and [o["id"] for o in out] == ids
    for obj in out:
        assert ("iteration_time_s" in obj) != ("error" in obj), obj
        if "iteration_time_s" in obj:
            assert obj["iteration_time_s"] > 0 and obj["memory_gib_per_gpu"] > 0
        else:
            assert isinstance(obj["error"], str) and obj["error"] and "\n" not in obj["error"]
    by_id = {o["id"]: o for o in out}
    assert "iteration_time_s" in by_id["cli_syn_01"]
    assert "6" in by_id["cli_bad_tp3"]["error"] and "8" in by_id["cli_bad_tp3"]["error"]
    assert "layers" in by_id["cli_bad_empty"]["error"]


def test_estimate_runs_table(small_runs):
    path, ids = small_runs
    result = invoke("estimate", "--runs", path)
    assert result.exit_code == 0, result.stderr
    for rid in ids:
        assert rid in result.stdout


def test_estimate_runs_odd_rows_become_errors_not_crashes(tmp_path):
    """Rows the row parser does not anticipate still get an `error` and leave the other rows alone."""
    good = synthetic_row()
    path = write_runs(tmp_path / "odd.csv", [
        good,
        synthetic_row(id="odd_inf", tp="inf"),                                   # int(float('inf')) overflows
        synthetic_row(id="odd_measured", tp="3", measured_iter_time_s="abc"),    # bad row + non-numeric target
        synthetic_row(id="odd_nan_bw", intra_node_GBps="nan"),                   # would predict NaN
    ])
    with path.open("a") as fh:                                                   # a truncated line: gpu missing
        fh.write("odd_short,test,nemo,m,32,4096,32,8,14336,128256,8192\n")
    result = invoke("estimate", "--runs", path, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)                                              # strict JSON: no NaN
    assert [o["id"] for o in out] == ["cli_syn_01", "odd_inf", "odd_measured", "odd_nan_bw", "odd_short"]
    assert "iteration_time_s" in out[0]
    for obj in out[1:]:
        assert "error" in obj and "iteration_time_s" not in obj, obj
    json.dumps(out, allow_nan=False)


# ---- validate ------------------------------------------------------------------------------------------------------
def test_validate_table_has_mean_accuracy(small_runs):
    path, _ = small_runs
    result = invoke("validate", "--runs", path)
    assert result.exit_code == 0, result.stderr
    assert "mean accuracy" in result.stdout
    assert "all" in result.stdout and "%" in result.stdout
    assert "cli_bad_tp3" in result.stdout                    # rows that cannot be modelled are listed


def test_validate_json(small_runs):
    path, ids = small_runs
    result = invoke("validate", "--runs", path, "--json")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["rows"] == len(ids)
    assert 1 <= stats["modelled"] <= len(ids) - 2
    assert isinstance(stats["mean_accuracy"], float) and stats["mean_accuracy"] <= 1


# ---- presets -------------------------------------------------------------------------------------------------------
def test_presets_lists_models_gpus_clusters():
    result = invoke("presets")
    assert result.exit_code == 0, result.stderr
    for word in ("models:", "gpus:", "clusters:", "llama3-8b", "H100-SXM5-80GB", "dgx-h100"):
        assert word in result.stdout


# ---- bad input: one line on stderr ---------------------------------------------------------------------------------
def _estimate(model="llama3-8b", cluster="dgx-h100", strategy=STRATEGY, gb="64", seq="8192", *extra):
    return invoke("estimate", "--model", model, "--cluster", cluster, "--strategy", strategy,
                  "--global-batch", gb, "--seq-len", seq, *extra)


def test_unknown_model_preset():
    assert_one_line_error(_estimate(model="llama9-1t"), "unknown model 'llama9-1t'", "llama3-8b", code=2)


def test_unknown_cluster_preset():
    assert_one_line_error(_estimate(cluster="dgx-z900"), "unknown cluster 'dgx-z900'", "dgx-h100", code=2)


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_one_line_error(_estimate(model=missing), "not found", "nope.yaml", code=2)


@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", "layers: [32\nhidden: : 4096\n", "malformed YAML"),
    ("bad.json", '{"layers": 32,', "malformed JSON"),
    ("list.yaml", "- 32\n- 4096\n", "mapping"),
    ("partial.yaml", "layers: 32\nhidden: 4096\n", "heads"),
])
def test_malformed_model_file(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_error(_estimate(model=path), needle, name, code=2)


def test_hf_config_with_unsupported_model_type(tmp_path):
    folder = tmp_path / "falcon-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "falcon", "hidden_size": 4544,
                                                    "num_hidden_layers": 32, "num_attention_heads": 71}))
    line = assert_one_line_error(_estimate(model=folder, strategy="tp=1,dp=8"), "unsupported model_type 'falcon'",
                                 code=2)
    assert "llama" in line                                   # the supported types are listed


def test_strategy_not_multiplying_to_gpu_count():
    assert_one_line_error(_estimate(cluster="dgx-h100:8", strategy="dp=3"), "= 3", "8 GPUs", code=2)


def test_heads_not_divisible_by_tp():
    assert_one_line_error(_estimate(strategy="tp=3,dp=1", gb="63"), "heads (32)", "tp (3)", code=2)


def test_unknown_strategy_key():
    assert_one_line_error(_estimate(strategy="tp=2,dp=4,foo=1"), "unknown strategy key 'foo'", "allowed:", "tp",
                          code=2)


@pytest.mark.parametrize("strategy, needle", [("tp=two,dp=4", "tp"), ("tp=2,dp=4.0", "dp"), ("tp", "key=value")])
def test_non_integer_strategy_value(strategy, needle):
    assert_one_line_error(_estimate(strategy=strategy), needle, code=2)


@pytest.mark.parametrize("flag, value", [("--global-batch", "0"), ("--global-batch", "-64"),
                                         ("--seq-len", "0"), ("--seq-len", "-8192")])
def test_non_positive_sizes_name_the_flag(flag, value):
    args = {"--global-batch": "64", "--seq-len": "8192", flag: value}
    result = _estimate(gb=args["--global-batch"], seq=args["--seq-len"])
    assert_one_line_error(result, flag, "positive", value, code=2)


def test_non_integer_size_is_a_one_line_usage_error():
    assert_one_line_error(_estimate(gb="lots"), "--global-batch", code=2)


def test_invalid_precision():
    assert_one_line_error(_estimate("llama3-8b", "dgx-h100", STRATEGY, "64", "8192", "--precision", "fp4"),
                          "precision", "fp4", "bf16", code=2)


def test_invalid_framework():
    assert_one_line_error(_estimate("llama3-8b", "dgx-h100", STRATEGY, "64", "8192", "--framework", "jax"),
                          "framework", "jax", "megatron-lm", code=2)


def test_missing_model_without_runs():
    result = invoke("estimate", "--cluster", "dgx-h100", "--strategy", STRATEGY, "--global-batch", "64",
                    "--seq-len", "8192")
    assert_one_line_error(result, "--model", "--runs", code=2)


def test_unknown_option_is_one_line():
    assert_one_line_error(invoke(*GOOD, "--tensor-parallel", "2"), "--tensor-parallel", code=2)


@pytest.mark.parametrize("command", ["estimate", "validate"])
def test_runs_file_missing(tmp_path, command):
    assert_one_line_error(invoke(command, "--runs", tmp_path / "nope.csv"), "not found", "nope.csv", code=2)


@pytest.mark.parametrize("command", ["estimate", "validate"])
@pytest.mark.parametrize("name, content", [
    ("runs.yaml", "runs:\n  - {id: a, tp: 2}\n"),
    ("lacks.csv", "id,layers,hidden\nr1,32,4096\n"),
    ("empty.csv", ""),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00"),
])
def test_runs_file_not_a_csv_or_lacking_columns(tmp_path, command, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = assert_one_line_error(invoke(command, "--runs", path), name, code=2)
    assert "CSV" in line or "columns" in line


def test_internal_errors_are_one_line_too(monkeypatch):
    """An exception that is not a ParaplanError (a paraplan bug) still gives one line, exit 1, no traceback."""
    from paraplan import api

    def boom(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(api, "estimate_strategy", boom)
    line = assert_one_line_error(invoke(*GOOD), "internal error", "ZeroDivisionError", code=1)
    assert "second line" in line


# ---- the installed console script ----------------------------------------------------------------------------------
def test_console_script_end_to_end():
    """The real entry point (`paraplan = paraplan.cli:main`): JSON on stdout, and a bad preset as one stderr line."""
    script = Path(sys.executable).with_name("paraplan")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "paraplan.cli"]
    ok = subprocess.run([*cmd, *GOOD, "--json"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert PLAN_KEYS <= set(json.loads(ok.stdout))
    bad = subprocess.run([*cmd, *GOOD[:2], "nope-model", *GOOD[3:]], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'nope-model'"), bad.stderr
    assert bad.stdout == ""
