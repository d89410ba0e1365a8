"""DeepSpeed: the ds_config.json for a plan and the `deepspeed` launcher command.

Keys from DeepSpeed's docs/_pages/config-json.md and deepspeed/runtime/config.py (checked against deepspeed 0.19's
DeepSpeedConfig in the tests). The batch identity DeepSpeed asserts is
train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps * (data-parallel world size), where
the world is the DP size (mpu.get_data_parallel_world_size()), not all GPUs (runtime/config.py). Tensor parallelism is
AutoTP (`tensor_parallel.autotp_size`) without a pipeline, the topology's model axis with one; expert parallelism is
AutoEP (`expert_parallel.autoep_size`). The pipeline is built in the training script with deepspeed.pipe.PipelineModule
and a PipeModelDataParallelTopology(num_pp, num_mp, num_dp) (runtime/pipe/topology.py: axes pipe, data, model, so TP
is innermost as in paraplan's rank order); its engine runs its own 1F1B order."""
from __future__ import annotations

import json

from paraplan.export.common import Export, microbatches, nodes_and_gpus, refuse_if_broken, virtual_stage_layers
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Strategy

ENGINE_VERSION = "DeepSpeed 0.19 (config checked with deepspeed.runtime.config.DeepSpeedConfig)"
CONFIG = "ds_config.json"
HOSTFILE = "hostfile"


# ---- rules ---------------------------------------------------------------------------------------------------------
def rule_pp_needs_zero_at_most_1(s, model, cluster, job):
    if s.pp > 1 and s.zero >= 2:
        return (f"ZeRO-{s.zero} with pp={s.pp}: \"ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism\" "
                "(deepspeed/runtime/pipe/engine.py); use zero<=1 or pp=1")


def rule_no_context_parallel(s, model, cluster, job):
    if s.cp > 1:
        return f"cp={s.cp}: DeepSpeed has no ring context parallelism (Ulysses sequence parallelism is a different scheme)"


def rule_no_interleaved_pipeline(s, model, cluster, job):
    if s.vpp > 1:
        return f"vpp={s.vpp}: DeepSpeed's PipelineEngine runs one stage per rank (no interleaved schedule)"


def rule_no_gpipe(s, model, cluster, job):
    if s.schedule == "gpipe" and s.pp > 1:
        return "schedule=gpipe: DeepSpeed's PipelineEngine runs its own 1F1B order (TrainSchedule)"


def rule_no_megatron_sequence_parallel(s, model, cluster, job):
    if s.sequence_parallel and s.tp > 1:
        return "sp=true: DeepSpeed AutoTP does not shard norm/dropout activations over TP (no Megatron sequence parallelism)"


def rule_no_selective_recompute(s, model, cluster, job):
    if s.recompute == "selective":
        return "recompute=selective: DeepSpeed checkpoints whole layers only (activation_checkpointing); use full or none"


def rule_no_tp_comm_overlap(s, model, cluster, job):
    if s.tp_comm_overlap:
        return "tp_comm_overlap=true: Transformer Engine userbuffer overlap is Megatron's, not DeepSpeed's"


RULES = (rule_pp_needs_zero_at_most_1, rule_no_context_parallel, rule_no_interleaved_pipeline, rule_no_gpipe,
         rule_no_megatron_sequence_parallel, rule_no_selective_recompute, rule_no_tp_comm_overlap)


def ds_config(s: Strategy, model: ModelSpec, job: JobSpec) -> dict:
    """The ds_config.json document."""
    cfg: dict = {
        "train_batch_size": job.global_batch,
        "train_micro_batch_size_per_gpu": s.micro_batch,
        "gradient_accumulation_steps": microbatches(s, job),
        "gradient_clipping": 1.0,
        "steps_per_print": 10,
    }
    if job.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0}
    else:
        cfg["bf16"] = {"enabled": True}
    zero: dict = {"stage": s.zero}
    if s.zero >= 1:
        zero.update({"overlap_comm": bool(s.overlap_grad_reduce), "contiguous_gradients": True,
                     "reduce_bucket_size": 500_000_000})
    if s.zero == 3:
        zero.update({"stage3_prefetch_bucket_size": 500_000_000, "stage3_param_persistence_threshold": 1_000_000})
    cfg["zero_optimization"] = zero
    if s.tp > 1 and s.pp == 1:
        # AutoTP shards a whole (Hugging Face style) model; with a PipelineModule the tensor axis is the pipeline
        # topology's "model" axis, sharded by the model's own TP layers (Megatron-DeepSpeed), so no AutoTP then
        cfg["tensor_parallel"] = {"autotp_size": s.tp}
    if s.ep > 1:
        cfg["expert_parallel"] = {"enabled": True, "autoep_size": s.ep}
    if s.pp > 1:
        # stage count and split are set in code (PipelineModule(num_stages=pp, partition_method=...)); the section
        # carries DeepSpeed's own pipeline options
        cfg["pipeline"] = {"stages": s.pp, "partition": "uniform", "activation_checkpoint_interval":
                           1 if s.recompute == "full" else 0}
    if s.recompute == "full":
        cfg["activation_checkpointing"] = {"partition_activations": s.tp > 1, "contiguous_memory_optimization": False,
                                           "cpu_checkpointing": False}
    return cfg


def export(s: Strategy, model: ModelSpec, cluster: ClusterSpec, job: JobSpec) -> Export:
    refuse_if_broken("deepspeed", RULES, s, model, cluster, job)
    nodes, per_node = nodes_and_gpus(cluster, s)
    files = {CONFIG: json.dumps(ds_config(s, model, job), indent=2) + "\n"}
    notes = ["train.py is your training script: it calls deepspeed.initialize(..., config='ds_config.json')"]
    if s.pp > 1:
        notes.append(f"train.py builds deepspeed.pipe.PipelineModule(layers, topology=deepspeed.runtime.pipe.topology.PipeModelDataParallelTopology("
                     f"num_pp={s.pp}, num_mp={s.tp}, num_dp={s.dp})) with layers per stage "
                     f"{list(virtual_stage_layers(model, s))}"
                     + (f"; the tensor-parallel axis (num_mp={s.tp}) needs TP layers in the model itself, as "
                        "Megatron-DeepSpeed's are" if s.tp > 1 else ""))
    if nodes > 1:
        files[HOSTFILE] = "".join(f"node-{i} slots={per_node}\n" for i in range(nodes))
        notes.append(f"edit {HOSTFILE}: one line per node, '<host> slots={per_node}'")
        launch = (f"deepspeed --hostfile {HOSTFILE} --num_nodes {nodes} --num_gpus {per_node} "
                  f"--master_addr <node-0 host> --master_port 29500 train.py --deepspeed --deepspeed_config {CONFIG}")
    else:
        launch = f"deepspeed --num_nodes 1 --num_gpus {per_node} train.py --deepspeed --deepspeed_config {CONFIG}"
    return Export("deepspeed", files, launch, notes, ENGINE_VERSION)
