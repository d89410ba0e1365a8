"""Framework conventions: defaults for what a run leaves unsaid."""
from paraplan.cost.memory import state_bytes_per_param
from paraplan.frameworks import grad_reduce_bytes_per_param, strategy_defaults, uses_flash_attention
from paraplan.specs import JobSpec


def test_sequence_parallel_only_with_tensor_parallel():
    assert strategy_defaults("nemo", 1, "bf16")["sequence_parallel"] is False
    assert strategy_defaults("nemo", 4, "bf16")["sequence_parallel"] is True
    assert strategy_defaults("nemo", 4, "bf16", sequence_parallel=False)["sequence_parallel"] is False


def test_tp_comm_overlap_is_off_unless_asked():
    # Turning it on for NeMo runs (its performance recipes enable it on H100) made the published-runs fit worse
    # (89.8 % -> 88.8 % mean accuracy), so no framework assumes it; a user sets tp_comm_overlap=true.
    assert strategy_defaults("nemo", 8, "fp8")["tp_comm_overlap"] is False
    assert strategy_defaults("megatron-lm", 8, "fp16")["tp_comm_overlap"] is False   # pre-TE Megatron
    assert strategy_defaults("megatron-deepspeed", 8, "fp16")["tp_comm_overlap"] is False


def test_megatron_distributed_optimizer_and_fsdp_defaults():
    assert strategy_defaults("megatron-lm", 1, "bf16")["zero"] == 1
    assert strategy_defaults("torchtitan", 1, "bf16")["zero"] == 3
    assert strategy_defaults("megatron-deepspeed", 1, "fp16")["overlap_grad_reduce"] is False   # vTrain: no buckets


def test_flash_attention_by_era():
    assert uses_flash_attention(JobSpec(8, 2048, "bf16", "megatron-lm"))
    assert not uses_flash_attention(JobSpec(8, 2048, "fp16", "megatron-lm"))
    assert not uses_flash_attention(JobSpec(8, 2048, "bf16", "megatron-deepspeed"))
    assert uses_flash_attention(JobSpec(8, 2048, "fp16", "torchtitan"))


def test_gradient_reduce_dtype():
    assert grad_reduce_bytes_per_param("megatron-lm") == 4      # fp32 main grads reduced in fp32
    assert grad_reduce_bytes_per_param("megatron-deepspeed") == 2


def test_nemo_fp8_recipes_keep_bf16_gradients():
    # NeMo scripts/performance/helpers.py set_precision_configs: fp8 -> plugins.grad_reduce_in_fp32 = False, so the
    # distributed optimizer holds 2 (bf16 weights) + 2 (bf16 grads) + 12/d; bf16 runs keep fp32 main grads (+4)
    assert state_bytes_per_param("nemo", 1, 8, "fp8") == (2, 2, 1.5)
    assert state_bytes_per_param("nemo", 1, 8, "bf16") == (2, 4, 1.5)
    assert state_bytes_per_param("megatron-lm", 1, 8, "fp8") == (2, 4, 1.5)
    assert grad_reduce_bytes_per_param("nemo", "fp8") == 2 and grad_reduce_bytes_per_param("nemo", "bf16") == 4
