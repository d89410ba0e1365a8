"""Measured-runs CSV -> specs: framework defaults filled and reported, bad rows are one-line errors."""
import csv
from pathlib import Path

import pytest

from paraplan.errors import ParaplanError
from paraplan.validate.runs import case_from_row, read_rows
from paraplan.validate.score import predict_rows, row_group
from tests.rows import synthetic_row

DATA = Path(__file__).resolve().parent.parent / "data" / "validation"


def base_row(**changes):
    """The shared Llama-3-8B row with the fields a source may leave empty left empty."""
    return synthetic_row(**{"id": "t1", "vpp": "", "sequence_parallel": "", "recompute": "", "zero": "",
                            "measured_iter_time_s": "10.0", **changes})


def test_empty_fields_take_framework_defaults_and_say_so():
    case = case_from_row(base_row())
    assert case.strategy.sequence_parallel is True          # NeMo turns SP on with TP
    assert case.strategy.zero == 1                           # distributed optimizer
    assert any("sequence_parallel=true" in a for a in case.assumptions)
    assert any("zero=1" in a for a in case.assumptions)
    assert case.model.kv_heads == 8 and case.model.gated_mlp


def test_world_size_mismatch_is_an_error():
    with pytest.raises(ParaplanError, match="num_gpus = 16"):
        case_from_row(base_row(num_gpus="16"))


@pytest.mark.parametrize("column, value, fragment", [
    ("layers", "-4", "must be a positive integer"),
    ("hidden", "abc", "is not an integer"),
    ("framework", "jax-magic", "framework 'jax-magic' unknown"),
    ("sequence_parallel", "maybe", "must be true or false"),
])
def test_bad_fields_are_named(column, value, fragment):
    with pytest.raises(ParaplanError, match=fragment):
        case_from_row(base_row(**{column: value}))


def test_unmodellable_rows_get_an_error_not_a_crash():
    results = predict_rows([base_row(), base_row(id="bad", tp="3", dp="1", num_gpus="3")])
    assert results[0].error is None and results[0].predicted_s > 0
    assert results[1].predicted_s is None and "tp" in results[1].error


def test_missing_columns_are_reported(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("id,layers\nx,2\n")
    with pytest.raises(ParaplanError, match="lacks required columns"):
        read_rows(path)
    with pytest.raises(ParaplanError, match="not found"):
        read_rows(tmp_path / "nope.csv")


def test_every_shipped_row_is_read():
    for name in ("vtrain_a100.csv", "published_runs.csv"):
        with (DATA / name).open() as fh:
            n = sum(1 for _ in csv.DictReader(fh))
        assert len(read_rows(DATA / name)) == n


def test_row_group_strips_the_row_number():
    assert row_group("vtrain-single-0042") == "vtrain-single"
    assert row_group("narayanan21_t1_03") == "narayanan21"
    assert row_group("dgxc_llama31_8b_bf16_8") == "dgxc"
