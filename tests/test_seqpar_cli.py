"""`paraplan seqpar`: output, --json, and bad input as one `error:` line naming the offending sequence."""
import json

from typer.testing import CliRunner

from paraplan.cli import app
from tests.test_cli import assert_one_line_error

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
BASE = ["seqpar", "--model", "gpt-7.5b", "--cluster", "dgx-a100-40gb:16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_json_plan(tmp_path):
    f = tmp_path / "lengths.txt"
    f.write_text("30000\n9000\n4000\n1000\n700\n")
    result = invoke(*BASE, "--lengths", f, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    plan = doc["batches"][0]["step_plan"]
    assert sorted(k for mb in plan["microbatches"] for g in mb["groups"] for k in g["sequences"]) == [0, 1, 2, 3, 4]
    assert doc["summary"]["static_ulysses"]["speedup"] > 0


def test_table_from_distribution():
    result = invoke(*BASE, "--distribution", "wikipedia", "--batch-size", "64", "--max-len", "32768")
    assert result.exit_code == 0, result.stderr
    assert "best static Ulysses SP" in result.stdout and "FlexSP" in result.stdout


def test_bad_input(tmp_path):
    too_long = tmp_path / "long.txt"
    too_long.write_text("1000\n5000000\n")
    assert_one_line_error(invoke(*BASE, "--lengths", too_long), "sequence 1 has 5000000 tokens", code=2)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert_one_line_error(invoke(*BASE, "--lengths", empty), "empty", code=2)
    words = tmp_path / "words.txt"
    words.write_text("100\nlong\n")
    assert_one_line_error(invoke(*BASE, "--lengths", words), "line 2: 'long' is not a number", code=2)
    assert_one_line_error(invoke(*BASE), "exactly one of --lengths", code=2)
    assert_one_line_error(invoke(*BASE, "--distribution", "books"), "unknown length distribution", code=2)
    assert_one_line_error(invoke(*BASE, "--distribution", "github", "--solver", "scip"), "solver", code=2)
