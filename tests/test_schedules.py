"""Per-rank pipeline orders (paraplan.sim.schedules)."""
from collections import Counter

import pytest

from paraplan.sim.schedules import (
    ScheduleOp,
    gpipe_order,
    interleaved_order,
    interleaved_schedule_table,
    interleaved_warmup,
    one_f_one_b_order,
    schedule_order,
)


def _short(order):
    """[["F0", "B0", ...], ...] for vpp == 1; "F0.1" = micro-batch 0, chunk 1 otherwise."""
    return [[f"{op.kind}{op.microbatch}" + (f".{op.chunk}" if op.chunk or _has_chunks(order) else "")
             for op in ops] for ops in order]


def _has_chunks(order):
    return any(op.chunk for ops in order for op in ops)


def _complete(order, m, vpp):
    """Every rank holds F and B of every (micro-batch, chunk) exactly once."""
    for ops in order:
        assert Counter((op.kind, op.microbatch, op.chunk) for op in ops) == Counter(
            {(k, mb, c): 1 for k in "FB" for mb in range(m) for c in range(vpp)})


def test_schedule_op_is_a_tuple():
    op = ScheduleOp("F", 3, 1)
    assert op == ("F", 3, 1) and op.kind == "F" and op.microbatch == 3 and op.chunk == 1


def test_gpipe_order_all_forwards_then_ascending_backwards():
    # documented choice: F0..F(m-1) then B0..B(m-1) on every rank
    assert _short(gpipe_order(2, 3)) == [["F0", "F1", "F2", "B0", "B1", "B2"]] * 2


def test_1f1b_order_p3_m4():
    # rank r: warm-up min(p-r-1, m) forwards, then (F, B) pairs, then cool-down backwards
    # rank 0: w=2 -> F0 F1 | F2 B0 | F3 B1 | B2 B3
    # rank 1: w=1 -> F0 | F1 B0 | F2 B1 | F3 B2 | B3
    # rank 2: w=0 -> F0 B0 | F1 B1 | F2 B2 | F3 B3
    assert _short(one_f_one_b_order(3, 4)) == [
        ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"],
        ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"],
        ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"],
    ]


def test_1f1b_order_fewer_microbatches_than_stages():
    # p=4, m=2: ranks 0,1 have w = min(3, 2) = 2 and min(2, 2) = 2 -> fill-drain; rank 2 w=1; rank 3 w=0
    assert _short(one_f_one_b_order(4, 2)) == [
        ["F0", "F1", "B0", "B1"],
        ["F0", "F1", "B0", "B1"],
        ["F0", "F1", "B0", "B1"],   # w=1: F0 | F1 B0 | B1
        ["F0", "B0", "F1", "B1"],
    ]
    _complete(one_f_one_b_order(4, 2), 2, 1)


def test_megatron_schedule_table_docstring_example():
    # Megatron's get_schedule_table docstring: PP2, group N=3, M=5, VP2
    # microbatch_id  0 1 2 0 1 2 3 4 3 4 ; model_chunk_id 0 0 0 1 1 1 0 0 1 1
    assert interleaved_schedule_table(5, 2, 3) == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (3, 0), (4, 0), (3, 1), (4, 1)]


def test_interleaved_order_p2_v2_m4():
    # forward table (group = pp = 2): (0,0) (1,0) (0,1) (1,1) (2,0) (3,0) (2,1) (3,1); backward chunk = 1 - chunk
    # rank 0 warm-up = (2-0-1)*2 + (2-1)*2 = 4 ; rank 1 warm-up = 0*2 + 2 = 2 ; total = 8
    assert _short(interleaved_order(2, 2, 4)) == [
        ["F0.0", "F1.0", "F0.1", "F1.1",                                  # warm-up (4)
         "F2.0", "B0.1", "F3.0", "B1.1", "F2.1", "B0.0", "F3.1", "B1.0",  # 4 steady pairs
         "B2.1", "B3.1", "B2.0", "B3.0"],                                 # cool-down (4)
        ["F0.0", "F1.0",
         "F0.1", "B0.1", "F1.1", "B1.1", "F2.0", "B0.0", "F3.0", "B1.0", "F2.1", "B2.1", "F3.1", "B3.1",
         "B2.0", "B3.0"],
    ]


@pytest.mark.parametrize("pp,vpp,m", [(2, 2, 4), (4, 2, 8), (4, 3, 4), (3, 4, 9), (8, 2, 16)])
def test_interleaved_warmup_matches_megatron_formula(pp, vpp, m):
    order = interleaved_order(pp, vpp, m)
    _complete(order, m, vpp)
    for r, ops in enumerate(order):
        w = min((pp - r - 1) * 2 + (vpp - 1) * pp, m * vpp)
        assert interleaved_warmup(pp, vpp, r, m) == w
        leading = next((i for i, op in enumerate(ops) if op.kind == "B"), len(ops))
        # the first steady-state op is a forward, so there are w + 1 leading forwards unless all are warm-up
        assert leading == min(w + 1, m * vpp)
        # chunk of the k-th forward = (k // pp) % vpp (m % pp == 0); backward chunks mirrored
        fwd = [op for op in ops if op.kind == "F"]
        bwd = [op for op in ops if op.kind == "B"]
        assert [op.chunk for op in fwd] == [(k // pp) % vpp for k in range(m * vpp)]
        assert [op.chunk for op in bwd] == [vpp - 1 - (k // pp) % vpp for k in range(m * vpp)]


def test_interleaved_group_size_allows_remainder():
    # pp=2, m=5 needs a group size G with 5 % G == 0 or >= 2: G = 3 (last group 2) works, default G = 2 does not
    order = interleaved_order(2, 2, 5, microbatch_group_size=3)
    _complete(order, 5, 2)
    # warm-up on rank 0 with G = 3: (2-0-1)*2 + (2-1)*3 = 5
    assert [op.kind for op in order[0][:6]] == ["F"] * 6 and order[0][6].kind == "B"


def test_interleaved_vpp1_is_1f1b():
    assert interleaved_order(4, 1, 6) == one_f_one_b_order(4, 6)


@pytest.mark.parametrize("call,match", [
    (lambda: interleaved_order(4, 2, 3), "num_microbatches >= pp"),
    (lambda: interleaved_order(4, 2, 6), "multiple of pp"),
    (lambda: interleaved_order(2, 2, 5, microbatch_group_size=4), "last group of 1"),
    (lambda: interleaved_order(2, 2, 4, microbatch_group_size=1), r"\[pp=2"),
    (lambda: schedule_order("1f1b", 2, 2, 4), "vpp == 1"),
    (lambda: schedule_order("zb", 2, 1, 4), "one of"),
    (lambda: one_f_one_b_order(0, 4), "pp must be a positive"),
    (lambda: gpipe_order(2, 0), "num_microbatches must be a positive"),
])
def test_invalid_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
