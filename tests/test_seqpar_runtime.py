"""The FlexSP runtime (paraplan.seqpar.runtime) on CPU: 4 gloo processes, random batches and random plans.

Starting 4 processes that import torch costs most of this file's time, so one process group runs every distributed
scenario once (module fixture) and each test checks its part of the results. Collectives time out after 30 s and the
processes are killed after 150 s, so a hang fails the tests instead of blocking CI.
"""
from __future__ import annotations

import importlib.util
import json
import random
import socket
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from paraplan.errors import ParaplanError  # noqa: E402
from paraplan.seqpar.attention import UlyssesContext, ulysses_attention  # noqa: E402
from paraplan.seqpar.data import IGNORE_INDEX, next_token_labels, pack_shard, token_loss_sum  # noqa: E402
from paraplan.seqpar.runtime import SeqParRuntime, check_plan, describe_plan, plan_digest  # noqa: E402
from paraplan.seqpar.tiny_model import TinyConfig, TinyTransformer  # noqa: E402
from paraplan.seqpar.types import GroupAssignment, MicroBatchPlan, StepPlan  # noqa: E402

WORLD = 4
COLLECTIVE_TIMEOUT_S = 30
JOIN_TIMEOUT_S = 150
# One micro-batch per partition of the world, so every random step has groups of 1, 2 and 4.
PARTITIONS = ((4,), (2, 1, 1), (2, 2), (1, 1, 1, 1))


def random_plan(lengths, world_size: int, rng: random.Random, partitions=PARTITIONS) -> StepPlan:
    """A valid plan with random rank order inside groups (not only contiguous ascending ranges) and a random
    sequence-to-group assignment; some groups may get no sequence."""
    slots, microbatches = [], []
    for sizes in partitions:
        ranks = list(range(world_size))
        rng.shuffle(ranks)
        groups, start = [], 0
        for size in sizes:
            groups.append(tuple(ranks[start:start + size]))
            start += size
        microbatches.append(groups)
        slots += [(len(microbatches) - 1, g) for g in range(len(groups))]
    assigned: dict[tuple[int, int], list[int]] = {slot: [] for slot in slots}
    for k in range(len(lengths)):
        assigned[rng.choice(slots)].append(k)
    return StepPlan(tuple(lengths), world_size, tuple(
        MicroBatchPlan(tuple(GroupAssignment(ranks, tuple(assigned[(m, g)])) for g, ranks in enumerate(groups)))
        for m, groups in enumerate(microbatches)))


# ---- distributed scenarios, run by every rank ---------------------------------------------------------------------
def _attention_reference(q, k, v, w):
    """Per-sequence causal attention written out (independent of the code under test); returns out and grads of
    sum(out * w)."""
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q, kr) / q.shape[-1] ** 0.5
    causal = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).tril()
    out = torch.einsum("hqk,khd->qhd", scores.masked_fill(~causal, float("-inf")).softmax(-1), vr)
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def scenario_attention(rank: int) -> dict:
    errors, sizes = [], set()
    for trial, (heads, kv_heads) in enumerate([(4, 4), (4, 2), (4, 1), (8, 2)]):
        rng, gen = random.Random(100 + trial), torch.Generator().manual_seed(100 + trial)
        lengths = [rng.randint(1, 23) for _ in range(7)]
        plan = random_plan(lengths, WORLD, rng)
        dim = 8
        qkvw = [[torch.randn(s, h, dim, generator=gen) for s in lengths] for h in (heads, kv_heads, kv_heads, heads)]
        reference = [_attention_reference(*(t[k] for t in qkvw)) for k in range(len(lengths))]
        runtime = SeqParRuntime(heads=heads, kv_heads=kv_heads)
        step = runtime.plan(lengths, plan)
        for mb in step.microbatches:
            sizes.add(mb.group_size)
            shard = pack_shard([torch.zeros(s, dtype=torch.long) for s in lengths], mb.sequences, mb.group_ranks,
                               rank, process_group=mb.process_group)
            total = int(shard.attention.cu_seqlens[-1])
            if total == 0:
                continue
            part = slice(mb.position * total // mb.group_size, (mb.position + 1) * total // mb.group_size)

            def stream(tensors, ks=mb.sequences, total=total):
                full = torch.cat([tensors[k] for k in ks])
                return torch.cat([full, full.new_zeros((total - full.shape[0],) + full.shape[1:])])

            q, k, v, w = (stream(t)[part] for t in qkvw)
            q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
            out = ulysses_attention(q, k, v, shard.attention)
            (out * w).sum().backward()
            for got, index in ((out, 0), (q.grad, 1), (k.grad, 2), (v.grad, 3)):
                want = stream([r[index] for r in reference])[part]
                errors.append(float((got.detach() - want).abs().max()) if want.numel() else 0.0)
    return {"max_error": max(errors), "compared": len(errors), "group_sizes": sorted(sizes)}


def scenario_tiny_model(rank: int) -> dict:
    cfg = TinyConfig()
    trials = []
    for trial in range(3):
        rng, gen = random.Random(trial), torch.Generator().manual_seed(trial)
        lengths = [rng.randint(1, 40) for _ in range(9)]
        tokens = [torch.randint(0, cfg.vocab, (s,), generator=gen) for s in lengths]
        plan = random_plan(lengths, WORLD, rng)
        torch.manual_seed(trial)
        model, reference = TinyTransformer(cfg), TinyTransformer(cfg)
        reference.load_state_dict(model.state_dict())
        # Single process, one sequence at a time: no packing, no sharding, no communication.
        labels = sum(s - 1 for s in lengths)
        loss_ref = sum(token_loss_sum(reference(t, torch.arange(len(t)), UlyssesContext(
            1, torch.tensor([0, len(t)], dtype=torch.int32), len(t))), next_token_labels(t)) for t in tokens) / labels
        loss_ref.backward()

        runtime = SeqParRuntime(heads=cfg.heads, kv_heads=cfg.kv_heads)
        step = runtime.plan(lengths, plan)
        packed = runtime.pack(step, tokens)
        loss = torch.zeros(())
        for shard in packed.shards:
            if shard.num_tokens:
                part = token_loss_sum(model(shard.input_ids, shard.position_ids, shard.attention), shard.labels)
                (part / packed.global_label_tokens).backward()
                loss += part.detach() / packed.global_label_tokens
        dist.all_reduce(loss)
        runtime.allreduce_gradients(model)
        grad_error = max(float((p.grad - r.grad).abs().max())
                         for p, r in zip(model.parameters(), reference.parameters()))
        grad_scale = max(float(r.grad.abs().max()) for r in reference.parameters())
        trials.append({"loss": float(loss), "loss_ref": float(loss_ref.detach()), "grad_error": grad_error,
                       "grad_scale": grad_scale, "labels": packed.global_label_tokens, "labels_ref": labels,
                       "sizes": sorted({mb.group_size for mb in step.microbatches})})
    return {"trials": trials}


def scenario_group_reuse(rank: int) -> dict:
    runtime = SeqParRuntime(heads=4, kv_heads=2)
    lengths = [5, 9, 3, 12, 7, 1]
    plans = [random_plan(lengths, WORLD, random.Random(seed)) for seed in (1, 2, 3)]
    created, handles = [], {}
    same_handle = True
    for step_index in range(9):
        step = runtime.plan(lengths, plans[step_index % 3])
        created.append(runtime.groups.created)
        for mb in step.microbatches:
            key = tuple(sorted(mb.group_ranks))
            same_handle &= handles.setdefault(key, mb.process_group) is mb.process_group
    return {"created": created, "cached": len(runtime.groups), "same_handle": same_handle}


def _deterministic_planner(lengths):
    return random_plan(lengths, WORLD, random.Random(sum(lengths) * 7919 + len(lengths)))


def scenario_determinism(rank: int) -> dict:
    lengths = [30, 2, 17, 8, 8, 41, 5]
    step = SeqParRuntime(_deterministic_planner, heads=4, kv_heads=2, plan_on="every_rank").plan(lengths)
    result = {"digest": plan_digest(step.plan)}
    try:
        SeqParRuntime(lambda ls: random_plan(ls, WORLD, random.Random(rank)), plan_on="every_rank").plan(lengths)
        result["rank_dependent"] = "no error"
    except ParaplanError as exc:
        result["rank_dependent"] = str(exc)
    return result


def scenario_bad_inputs(rank: int) -> dict:
    lengths = [6, 25, 4, 3]
    everything = MicroBatchPlan((GroupAssignment((0, 1, 2, 3), (0, 1, 2, 3)),))
    not_covering = StepPlan(tuple(lengths), WORLD, (MicroBatchPlan((GroupAssignment((0, 1), (0, 1)),
                                                                    GroupAssignment((2,), (2, 3)))),))
    too_long = StepPlan(tuple(lengths), WORLD, (MicroBatchPlan((GroupAssignment((2, 3), (1,)),
                                                                GroupAssignment((0, 1), (0, 2, 3)))),))

    def planner_failing_on_rank0(ls):
        raise RuntimeError("solver exploded\nwith a second line")

    def planner_failing_on_rank3(ls):
        if rank == 3:
            raise ParaplanError("rank 3's planner refuses")
        return StepPlan(tuple(ls), WORLD, (everything,))

    tokens = [torch.arange(s) for s in lengths]
    bad_tokens = [torch.arange(s + (1 if rank == 1 and k == 2 else 0)) for k, s in enumerate(lengths)]
    one_group = StepPlan(tuple(lengths), WORLD, (everything,))
    cases = {
        "not_covering": lambda: SeqParRuntime().plan(lengths, not_covering),
        "too_long": lambda: SeqParRuntime(max_tokens_per_rank=10).plan(lengths, too_long),
        "wrong_world": lambda: SeqParRuntime().plan(lengths, StepPlan(tuple(lengths), 8, ())),
        "heads": lambda: SeqParRuntime(heads=6, kv_heads=2).plan(lengths, one_group),
        "planner_raises_on_rank0": lambda: SeqParRuntime(planner_failing_on_rank0).plan(lengths),
        "planner_raises_on_rank3": lambda: SeqParRuntime(planner_failing_on_rank3, plan_on="every_rank").plan(lengths),
        "lengths_differ": lambda: SeqParRuntime(_deterministic_planner).plan(lengths if rank != 2 else lengths[:3]),
        "tokens_differ": lambda: SeqParRuntime().pack(SeqParRuntime().plan(lengths, one_group), bad_tokens),
    }
    messages = {}
    for name, case in cases.items():
        try:
            case()
            messages[name] = "no error"
        except ParaplanError as exc:
            messages[name] = str(exc)
        except Exception as exc:   # noqa: BLE001 - reported as a wrong exception type
            messages[name] = f"wrong type {type(exc).__name__}: {exc}"
    # After all the failures the ranks are still in step: a good step runs.
    runtime = SeqParRuntime(_deterministic_planner)
    packed = runtime.pack(runtime.plan(lengths), tokens)
    messages["good_step_after"] = f"labels {packed.global_label_tokens}"
    return messages


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "flexsp_train.py"
    spec = importlib.util.spec_from_file_location("flexsp_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def scenario_example(rank: int) -> dict:
    """examples/flexsp_train.py's loop with the real planner, every rank planning (so its plans must agree)."""
    example = _load_example()
    try:
        example.find_planner()
    except ParaplanError as exc:
        return {"skipped": str(exc)}
    args = example.TrainArgs(steps=3, sequences=8, max_len=256, median_len=48, max_tokens_per_rank=96,
                             plan_on="every_rank", hidden=32, heads=4, kv_heads=4)
    records = example.train(args, torch.device("cpu"), log=lambda line: None)
    return {"losses": [r["loss"] for r in records], "plans": [r["plan"] for r in records]}


SCENARIOS = {"attention": scenario_attention, "tiny_model": scenario_tiny_model, "group_reuse": scenario_group_reuse,
             "determinism": scenario_determinism, "bad_inputs": scenario_bad_inputs,
             "example": scenario_example}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    results, elapsed_s = {}, {}
    for name, scenario in SCENARIOS.items():
        start = time.perf_counter()
        try:
            results[name] = scenario(rank)
        except Exception:   # noqa: BLE001 - reported to the test, which fails on it
            results[name] = {"crash": traceback.format_exc()}
        elapsed_s[name] = round(time.perf_counter() - start, 2)
    results["elapsed_s"] = elapsed_s   # per scenario, for when the file gets slow
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("seqpar_runtime")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A fork server imports torch and this module once and forks the 4 ranks from that clean process: 4 imports of
    # torch cost more than everything the ranks do. (Forking pytest itself is unsafe once torch has run threads.)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
    procs = [ctx.Process(target=_worker, args=(rank, port, str(out_dir))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT_S)
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {JOIN_TIMEOUT_S} s"
    results = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    for rank, result in enumerate(results):
        for name, value in result.items():
            assert "crash" not in value, f"rank {rank} scenario {name}:\n{value['crash']}"
    return results


# ---- tests on the distributed results ------------------------------------------------------------------------------
def test_sharded_attention_matches_single_process(ranks):
    for result in ranks:
        r = result["attention"]
        assert r["compared"] > 0 and r["group_sizes"] == [1, 2, 4]
        assert r["max_error"] < 1e-5, r


def test_tiny_model_loss_and_gradients_match_single_process(ranks):
    for result in ranks:
        for trial in result["tiny_model"]["trials"]:
            assert trial["sizes"] == [1, 2, 4]
            assert trial["labels"] == trial["labels_ref"]
            assert trial["loss"] == pytest.approx(trial["loss_ref"], rel=1e-5)
            assert trial["grad_error"] <= 1e-5 * trial["grad_scale"], trial


def test_process_groups_are_created_once_and_reused(ranks):
    plans = [random_plan([5, 9, 3, 12, 7, 1], WORLD, random.Random(seed)) for seed in (1, 2, 3)]
    distinct = [len({tuple(sorted(g.ranks)) for p in plans[:n] for mb in p.microbatches for g in mb.groups
                     if len(g.ranks) > 1}) for n in (1, 2, 3)]
    for result in ranks:
        r = result["group_reuse"]
        assert r["created"][:3] == distinct            # new groups only when a plan brings new rank sets
        assert r["created"][3:] == [distinct[-1]] * 6  # none at all once every plan has been seen
        assert r["cached"] == distinct[-1] and r["same_handle"]


def test_plans_computed_on_every_rank_agree(ranks):
    expected = plan_digest(_deterministic_planner([30, 2, 17, 8, 8, 41, 5]))
    assert {result["determinism"]["digest"] for result in ranks} == {expected}
    messages = {result["determinism"]["rank_dependent"] for result in ranks}
    assert len(messages) == 1 and "not deterministic" in messages.pop()


@pytest.mark.parametrize("case, phrase", [
    ("not_covering", "groups must cover ranks 0..3"),
    ("too_long", "sequence 1 (25 tokens) is longer than its group of 2 ranks can hold"),
    ("wrong_world", "the plan is for 8 ranks but the world has 4"),
    ("heads", "6 attention heads do not split over a group of 4 ranks"),
    ("planner_raises_on_rank0", "RuntimeError: solver exploded with a second line (seen on rank 0)"),
    ("planner_raises_on_rank3", "rank 3's planner refuses (seen on rank 3)"),
    ("lengths_differ", "rank 2's batch has different sequence lengths than rank 0's"),
    ("tokens_differ", "sequence 2 has 5 tokens but the plan says 4 (seen on rank 1)"),
])
def test_bad_input_fails_on_every_rank_with_one_message(ranks, case, phrase):
    messages = {result["bad_inputs"][case] for result in ranks}
    assert len(messages) == 1, messages
    message = messages.pop()
    assert phrase in message and "\n" not in message, message


def test_ranks_stay_in_step_after_failures(ranks):
    assert {result["bad_inputs"]["good_step_after"] for result in ranks} == {f"labels {6 + 25 + 4 + 3 - 4}"}


def test_example_trains_with_the_real_planner(ranks):
    if "skipped" in ranks[0]["example"]:
        pytest.skip(ranks[0]["example"]["skipped"])
    assert len({json.dumps(result["example"]) for result in ranks}) == 1   # same losses and plans everywhere
    losses = ranks[0]["example"]["losses"]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)


# ---- single-process tests -----------------------------------------------------------------------------------------
def test_random_plans_are_valid_and_hold_groups_of_1_2_and_4():
    for seed in range(20):
        rng = random.Random(seed)
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 12))]
        plan = random_plan(lengths, WORLD, rng)
        check_plan(plan, world_size=WORLD, lengths=lengths, heads=4, kv_heads=2)
        assert {len(g.ranks) for mb in plan.microbatches for g in mb.groups} == {1, 2, 4}


def test_shards_of_a_group_reassemble_its_stream_in_plan_order():
    tokens = [torch.arange(100, 105), torch.arange(200, 203), torch.arange(300, 302)]
    group = (3, 0, 2)   # not sorted: shard position follows the plan, not the rank number
    shards = {r: pack_shard(tokens, (2, 0), group, r) for r in group}
    stream = torch.cat([shards[r].input_ids for r in group])
    assert stream.tolist() == [300, 301, 100, 101, 102, 103, 104, 0, 0]          # padded to 9 = 3 x 3
    assert torch.cat([shards[r].position_ids for r in group]).tolist() == [0, 1, 0, 1, 2, 3, 4, 0, 1]
    labels = torch.cat([shards[r].labels for r in group]).tolist()
    assert labels == [301, IGNORE_INDEX, 101, 102, 103, 104, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    ctx = shards[0].attention
    assert ctx.cu_seqlens.tolist() == [0, 2, 7, 9] and ctx.max_seqlen == 5
    assert ctx.pos_of_group_rank == (1, 2, 0)   # group ranks are sorted (0, 2, 3): positions 1, 2, 0


def test_custom_labels_are_packed_and_checked():
    tokens, labels = [torch.arange(4)], [torch.tensor([7, IGNORE_INDEX, 8, 9])]
    shards = [pack_shard(tokens, (0,), (0, 1), r, labels=labels) for r in (0, 1)]
    assert [s.labels.tolist() for s in shards] == [[7, IGNORE_INDEX], [8, 9]]
    assert sum(s.num_label_tokens for s in shards) == 3
    with pytest.raises(ParaplanError, match="sequence 0: 3 labels for 4 tokens"):
        pack_shard(tokens, (0,), (0,), 0, labels=[torch.arange(3)])
    with pytest.raises(ParaplanError, match="rank 2 is not in the group"):
        pack_shard(tokens, (0,), (0, 1), 2)


def test_group_of_one_needs_no_process_group():
    cfg = TinyConfig()
    tokens = torch.randint(0, cfg.vocab, (11,), generator=torch.Generator().manual_seed(0))
    shard = pack_shard([tokens], (0,), (5,), 5)
    logits = TinyTransformer(cfg)(shard.input_ids, shard.position_ids, shard.attention)
    assert logits.shape == (11, cfg.vocab)
    loss = float(token_loss_sum(logits, shard.labels).detach()) / shard.num_label_tokens
    assert loss == pytest.approx(float(F.cross_entropy(logits[:-1], tokens[1:]).detach()), rel=1e-6)


def test_check_plan_messages_name_the_problem():
    plan = StepPlan((5, 9), 2, (MicroBatchPlan((GroupAssignment((0, 1), (0, 1)),)),))
    check_plan(plan, world_size=2, heads=4, kv_heads=1, max_tokens_per_rank=8)
    with pytest.raises(ParaplanError, match="longer than its group of 2 ranks can hold"):
        check_plan(plan, world_size=2, max_tokens_per_rank=4)
    with pytest.raises(ParaplanError, match="holds 14 tokens, more than 6 per rank allows"):
        check_plan(plan, world_size=2, max_tokens_per_rank=6)
    with pytest.raises(ParaplanError, match="3 K/V heads do not split over, nor replicate evenly to"):
        check_plan(plan, world_size=2, heads=6, kv_heads=3)
    with pytest.raises(ParaplanError, match="must return a StepPlan"):
        check_plan({"lengths": [5, 9]}, world_size=2)
    assert describe_plan(plan) == "mb0: 2r(2 seq 14 tok)"


def test_importing_paraplan_does_not_import_torch():
    code = ("import sys, paraplan, paraplan.seqpar, paraplan.seqpar.types, paraplan.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
