"""Turn names and files into specs: GPUs, models and clusters from the packaged catalog or from user files.

Public API
    load_gpu(name) -> GPUSpec                 catalog name or alias, case-insensitive ('_'/' ' count as '-')
    load_model(spec) -> ModelSpec             preset name | Hugging Face config.json (file or checkpoint folder)
                                              | YAML/JSON file of ModelSpec fields
    model_from_hf_config(cfg, name) -> ModelSpec
    model_from_dict(data, where) -> ModelSpec
    load_cluster(spec, num_gpus=None) -> ClusterSpec   preset | "PRESET:GPUS" | YAML/JSON file
    cluster_from_links(gpu, num_gpus, gpus_per_node, intra_gbps, inter_gbps_bits) -> ClusterSpec
    cluster_from_dict(data, where, num_gpus=None) -> ClusterSpec
    list_gpus(), list_models(), list_clusters() -> list[str]

Every problem with the input raises ParaplanError with a one-line message naming the file/preset and the field.

Model file format (YAML or JSON): the ModelSpec fields, e.g.
    name: my-model            # optional, default: the file name
    base: llama3-8b           # optional: start from a preset, the keys below override it
    layers: 32                # required (unless base): layers, hidden, heads, ffn, vocab
    hidden: 4096
    heads: 32
    kv_heads: 8               # optional (default heads)
    head_dim: 128             # optional (default hidden // heads)
    ffn: 14336                # dense MLP inner size, per branch when gated
    vocab: 128256
    gated_mlp: true           # optional booleans: gated_mlp, tied_embeddings, linear_bias
    norm: rmsnorm             # layernorm | rmsnorm
    max_position: 8192
    moe: {num_experts: 8, top_k: 2, expert_ffn: 14336, shared_experts: 0, first_dense_layers: 0, moe_layer_freq: 1}
    mla: {q_lora_rank: 1536, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128}
    source: "where the numbers come from"
A file holding `model_type` (or `text_config`, or `architectures`) is read as a Hugging Face config.json.

Cluster file format (YAML or JSON); bandwidths are GB/s per GPU per direction (bandwidth_gbit: Gb/s instead):
  (a) one node type, like the presets in paraplan/catalog/clusters/:
    name: my-cluster
    base: dgx-h100            # optional: start from a preset, the keys below override it
    gpu: H100-SXM5-80GB       # catalog name or alias
    gpus_per_node: 8
    nodes: 4                  # or num_gpus: 32, or default_nodes (presets); default 1 node
    intra_node: {name: nvlink4, bandwidth_gbps: 450, latency_us: 3, nvls: true}
    inter_node: {name: ib-ndr, bandwidth_gbps: 50, latency_us: 8}
    source: "..."
  (b) heterogeneous: a list of node groups (each like (a), `preset:` fills in gpu, gpus_per_node and links)
    name: mixed
    node_groups:
      - {preset: dgx-h100, num_nodes: 2}
      - gpu: RTX-4090
        num_nodes: 4
        gpus_per_node: 8
        intra_node: {name: pcie4, bandwidth_gbps: 25, latency_us: 5}
        inter_node: {name: roce-100, bandwidth_gbps: 12.5, latency_us: 10}
  An inter_node link may describe a two-tier (leaf/spine) fabric: `nodes_per_leaf: 16, oversubscription: 2`
  (downlink:uplink at each leaf); collectives spanning more than one leaf lose bandwidth (LinkSpec.spine_factor).
  A level may list several physical links (`exclusive_with:` for those that cannot run at once); `node_links:`
  overrides a node or node pair, `group_links:` a group pair (`down: true`): specs/cluster_links.py.
See examples/cluster_example.yaml, cluster_leaf_spine.yaml, cluster_4090_pcie_nic.yaml, cluster_slow_rack.yaml.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

from paraplan.errors import ParaplanError
from paraplan.specs._input import (_bool, _catalog, _check_keys, _float, _int, _key, _looks_like_path, _mapping,
                                   _read_catalog_yaml, _read_mapping, _str, _unknown)
from paraplan.specs.cluster import ClusterSpec, GPUSpec, LinkSpec, NodeGroup
from paraplan.specs.cluster_links import DEFAULT_LATENCY_US, group_links, level_from_dict, node_links
from paraplan.specs.topology import check_connected
from paraplan.specs.hf_config import model_from_hf_config
from paraplan.specs.model import MLASpec, ModelSpec, MoESpec

__all__ = ["load_gpu", "list_gpus", "load_model", "list_models", "model_from_hf_config", "model_from_dict",
           "load_cluster", "list_clusters", "cluster_from_links", "cluster_from_dict"]

_GB_TO_GIB = 1e9 / 2**30


# ---- GPUs ------------------------------------------------------------------------------------------------------
_GPU_FIELDS = {"name", "aliases", "vendor", "peak_tflops", "hbm_gb", "hbm_mib", "hbm_gbps", "sm_count", "sources"}
_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")


@functools.cache
def _gpu_catalog() -> tuple[tuple[str, ...], dict[str, dict]]:
    """(canonical names in catalog order, lookup key -> entry)."""
    entries = _read_catalog_yaml(_catalog() / "gpus.yaml")
    if not isinstance(entries, list):
        raise ParaplanError("catalog file gpus.yaml must hold a list of GPUs")
    for entry in entries:
        where = f"GPU catalog entry {entry.get('name', '?')!r}" if isinstance(entry, dict) else "GPU catalog"
        _mapping(entry, "entry", where)
        _check_keys(entry, _GPU_FIELDS, where)
        _str(entry.get("name"), "name", where)
    return _index_by_name(entries, "GPU catalog")


def _lookup(catalog: tuple[tuple[str, ...], dict[str, dict]], kind: str, name: str, hint: str = "") -> dict:
    """The catalog entry for a name or alias, or a one-line error listing the known names."""
    names, index = catalog
    entry = index.get(_key(name)) if isinstance(name, str) else None
    if entry is None:
        raise _unknown(kind, str(name), list(names), hint)
    return entry


def _index_by_name(entries: list[dict], what: str) -> tuple[tuple[str, ...], dict[str, dict]]:
    """(canonical names in catalog order, lookup key of every name and alias -> entry)."""
    names, index = [], {}
    for entry in entries:
        names.append(entry["name"])
        for key in [entry["name"], *entry.get("aliases", [])]:
            k = _key(key)
            if k in index:
                raise ParaplanError(f"{what}: name or alias '{key}' is used twice")
            index[k] = entry
    return tuple(names), index


def _gpu_from_entry(entry: dict) -> GPUSpec:
    where = f"GPU catalog entry '{entry['name']}'"
    peaks = _mapping(entry.get("peak_tflops"), "peak_tflops", where)
    for prec, value in peaks.items():
        if prec not in _PRECISIONS:
            raise ParaplanError(f"{where}: unknown precision '{prec}' in peak_tflops; allowed: {', '.join(_PRECISIONS)}")
        _float(value, f"peak_tflops.{prec}", where)
    sources = entry.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ParaplanError(f"{where}: field 'sources' must be a list of strings")
    return GPUSpec(
        name=entry["name"],
        peak_tflops={p: float(v) for p, v in peaks.items()},
        # what the driver reports (nvidia-smi memory.total) where known: "80 GB" parts hold about 80 GiB, not 74.5
        hbm_gib=(_float(entry["hbm_mib"], "hbm_mib", where) / 1024 if "hbm_mib" in entry
                 else _float(entry.get("hbm_gb"), "hbm_gb", where) * _GB_TO_GIB),
        hbm_gbps=_float(entry.get("hbm_gbps"), "hbm_gbps", where),
        sm_count=_int(entry.get("sm_count", 108), "sm_count", where),
        vendor=_str(entry.get("vendor", "nvidia"), "vendor", where),
        sources=tuple(sources),
    )


def list_gpus() -> list[str]:
    """Canonical GPU names in the catalog."""
    return list(_gpu_catalog()[0])


def load_gpu(name: str) -> GPUSpec:
    """A catalog GPU by name or alias (case-insensitive), else the one entry whose name or an alias carries every
    word of `name` (resolve_gpu_name)."""
    return _gpu_from_entry(_lookup(_gpu_catalog(), "GPU", resolve_gpu_name(name)))


# words that name no particular part; SXM4/SXM5/SXM6 are the sockets of one generation each, so "SXM" is enough
_GPU_NOISE = {"nvidia", "amd", "instinct", "tesla", "geforce", "hbm2", "hbm2e", "hbm3", "hbm3e"}


@functools.cache
def _gpu_words(name: str) -> frozenset[str]:
    words = set(_key(name).replace("-", " ").split()) - _GPU_NOISE
    words = {re.sub(r"^sxm\d$", "sxm", w) for w in words}
    return frozenset(re.sub(r"^(\d+)g$", r"\1gb", w) for w in words)     # 80G -> 80GB


def resolve_gpu_name(name: str) -> str:
    """`name` itself when it is a catalog name or alias; otherwise the canonical name of the only entry one of whose
    names contains all of its words, in any order ("A100-80GB-SXM4", "H100 SXM 80GB"). Several or none: `name`
    unchanged, and the lookup reports it as unknown."""
    names, index = _gpu_catalog()
    if not isinstance(name, str) or _key(name) in index:
        return name
    words = _gpu_words(name)
    hits = {entry["name"] for key, entry in index.items() if words and words <= _gpu_words(key)}
    return hits.pop() if len(hits) == 1 else name


# ---- models: ModelSpec fields ----------------------------------------------------------------------------------
_MODEL_INT = ("layers", "hidden", "heads", "ffn", "vocab")
_MODEL_OPT_INT = ("kv_heads", "head_dim", "max_position")
_MODEL_BOOL = ("gated_mlp", "tied_embeddings", "linear_bias")
_MODEL_FIELDS = {"name", "base", "source", "norm", "moe", "mla", "extra", *_MODEL_INT, *_MODEL_OPT_INT, *_MODEL_BOOL}
_MOE_FIELDS = {"num_experts", "top_k", "expert_ffn", "shared_experts", "shared_expert_ffn", "first_dense_layers",
               "moe_layer_freq"}
_MLA_FIELDS = {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"}


def _moe_from_dict(d: Any, where: str) -> MoESpec:
    d = _mapping(d, "moe", where)
    _check_keys(d, _MOE_FIELDS, f"{where} (moe)")
    for req in ("num_experts", "top_k", "expert_ffn"):
        if req not in d:
            raise ParaplanError(f"{where}: field 'moe.{req}' is missing")
    try:
        return MoESpec(
            num_experts=_int(d["num_experts"], "moe.num_experts", where),
            top_k=_int(d["top_k"], "moe.top_k", where),
            expert_ffn=_int(d["expert_ffn"], "moe.expert_ffn", where),
            shared_experts=_int(d.get("shared_experts", 0), "moe.shared_experts", where, minimum=0),
            shared_expert_ffn=_int(d.get("shared_expert_ffn"), "moe.shared_expert_ffn", where, allow_none=True),
            first_dense_layers=_int(d.get("first_dense_layers", 0), "moe.first_dense_layers", where, minimum=0),
            moe_layer_freq=_int(d.get("moe_layer_freq", 1), "moe.moe_layer_freq", where),
        )
    except ParaplanError as e:
        if str(e).startswith(where):
            raise
        raise ParaplanError(f"{where}: {e}") from None


def _mla_from_dict(d: Any, where: str) -> MLASpec:
    d = _mapping(d, "mla", where)
    _check_keys(d, _MLA_FIELDS, f"{where} (mla)")
    for req in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if req not in d:
            raise ParaplanError(f"{where}: field 'mla.{req}' is missing")
    return MLASpec(
        q_lora_rank=_int(d.get("q_lora_rank"), "mla.q_lora_rank", where, allow_none=True),
        kv_lora_rank=_int(d["kv_lora_rank"], "mla.kv_lora_rank", where),
        qk_nope_head_dim=_int(d["qk_nope_head_dim"], "mla.qk_nope_head_dim", where),
        qk_rope_head_dim=_int(d["qk_rope_head_dim"], "mla.qk_rope_head_dim", where),
        v_head_dim=_int(d["v_head_dim"], "mla.v_head_dim", where),
    )


def model_from_dict(data: dict, where: str = "model", default_name: str = "model") -> ModelSpec:
    """A ModelSpec from a mapping of its fields (optional `moe:`/`mla:` mappings, optional `base:` preset)."""
    data = dict(_mapping(data, "model", where))
    _check_keys(data, _MODEL_FIELDS, where)
    if "base" in data:
        base_name = _str(data.pop("base"), "base", where)
        merged = dict(_model_preset_entry(base_name))
        merged.pop("aliases", None)
        merged.pop("name", None)
        merged["extra"] = dict(merged.get("extra") or {})
        merged.update(data)
        data = merged
    for req in _MODEL_INT:
        if req not in data:
            raise ParaplanError(f"{where}: required field '{req}' is missing (required: {', '.join(_MODEL_INT)})")
    kwargs: dict[str, Any] = {"name": _str(data.get("name", default_name), "name", where)}
    for f in _MODEL_INT:
        kwargs[f] = _int(data[f], f, where)
    for f in _MODEL_OPT_INT:
        if data.get(f) is not None:
            kwargs[f] = _int(data[f], f, where)
    for f in _MODEL_BOOL:
        if f in data:
            kwargs[f] = _bool(data[f], f, where)
    if "norm" in data:
        norm = _str(data["norm"], "norm", where)
        if norm not in ("layernorm", "rmsnorm"):
            raise ParaplanError(f"{where}: field 'norm' must be 'layernorm' or 'rmsnorm', got {norm!r}")
        kwargs["norm"] = norm
    if data.get("moe") is not None:
        kwargs["moe"] = _moe_from_dict(data["moe"], where)
    if data.get("mla") is not None:
        kwargs["mla"] = _mla_from_dict(data["mla"], where)
    if "source" in data:
        kwargs["source"] = _str(data["source"], "source", where)
    if data.get("extra") is not None:
        kwargs["extra"] = dict(_mapping(data["extra"], "extra", where))
    try:
        return ModelSpec(**kwargs)
    except ParaplanError as e:
        raise ParaplanError(f"{where}: {e}") from None


# ---- models: presets -------------------------------------------------------------------------------------------
@functools.cache
def _model_catalog() -> tuple[tuple[str, ...], dict[str, dict]]:
    root = _catalog()
    entries: list = []
    files = [root / "models.yaml"] if (root / "models.yaml").is_file() else []
    models_dir = root / "models"
    if models_dir.is_dir():
        files += sorted((r for r in models_dir.iterdir() if r.name.endswith((".yaml", ".yml"))), key=lambda r: r.name)
    for res in files:
        data = _read_catalog_yaml(res)
        if not isinstance(data, list):
            raise ParaplanError(f"catalog file {res.name} must hold a list of models")
        entries += data
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ParaplanError(f"model catalog: every entry needs a 'name', got {entry!r:.80}")
    return _index_by_name(entries, "model catalog")


def _model_preset_entry(name: str) -> dict:
    return _lookup(_model_catalog(), "model", name, "; or give a path to a config.json or a YAML/JSON model file")


def list_models() -> list[str]:
    """Preset model names (aliases not included)."""
    return list(_model_catalog()[0])


def preset_named(name: str) -> ModelSpec | None:
    """The preset a free-form model name refers to ('Qwen3_30B_a3B (MoE)' -> qwen3-30b-a3b), or None. A
    measured-runs row names its model only for information; this lets the validator fill what its columns lack."""
    entry = _model_catalog()[1].get(_key(re.sub(r"\(.*?\)", "", name or "").strip()))
    return _load_preset(entry["name"]) if entry else None


@functools.cache
def _load_preset(canonical: str) -> ModelSpec:
    entry = dict(_model_preset_entry(canonical))
    entry.pop("aliases", None)
    return model_from_dict(entry, where=f"model preset '{canonical}'")


def _is_hf_config(data: dict) -> bool:
    return any(k in data for k in ("model_type", "text_config", "architectures"))


def load_model(spec: str) -> ModelSpec:
    """A preset name, a Hugging Face config.json (or a checkpoint folder holding one), or a YAML/JSON ModelSpec file."""
    if not isinstance(spec, str) or not spec.strip():
        raise ParaplanError(f"model must be a preset name or a file path, got {spec!r}")
    if not _looks_like_path(spec, _model_catalog()[1]):
        entry = _model_preset_entry(spec)
        return _load_preset(entry["name"])
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ParaplanError(f"model folder '{path}' has no config.json")
        path = path / "config.json"
    data = _read_mapping(path, "model")
    if set(data) == {"model"} and isinstance(data["model"], dict):
        data = data["model"]
    default_name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    if _is_hf_config(data):
        return model_from_hf_config(data, name=default_name or "hf-model", where=f"model file '{path}'")
    return model_from_dict(data, where=f"model file '{path}'", default_name=default_name)


# ---- clusters --------------------------------------------------------------------------------------------------
_NODE_FIELDS = {"name", "base", "preset", "gpu", "gpus_per_node", "nodes", "num_nodes", "num_gpus", "default_nodes",
                "intra_node", "inter_node", "source", "node_groups", "group_links", "node_links"}
_CLUSTER_ONLY = {"node_groups", "group_links", "node_links"}      # keys of the whole cluster, not of a node group


@functools.cache
def _cluster_catalog() -> tuple[tuple[str, ...], dict[str, dict]]:
    folder = _catalog() / "clusters"
    names, index = [], {}
    for res in sorted((r for r in folder.iterdir() if r.name.endswith((".yaml", ".yml"))), key=lambda r: r.name):
        data = _read_catalog_yaml(res)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ParaplanError(f"cluster catalog file {res.name} must hold a mapping with a 'name'")
        if _key(data["name"]) in index:
            raise ParaplanError(f"cluster catalog: name '{data['name']}' is used twice")
        names.append(data["name"])
        index[_key(data["name"])] = data
    return tuple(names), index


def list_clusters() -> list[str]:
    """Node-type preset names."""
    return list(_cluster_catalog()[0])


def _cluster_preset(name: str) -> dict:
    return _lookup(_cluster_catalog(), "cluster", name, "; or NAME:GPUS, or a path to a YAML/JSON cluster file")


def _with_base(data: dict, where: str) -> dict:
    """Apply `base:`/`preset:` (a cluster preset) under the given keys."""
    base = data.get("base", data.get("preset"))
    if base is None:
        return data
    merged = dict(_cluster_preset(_str(base, "base", where)))
    for level in ("intra_node", "inter_node"):   # a partial link mapping overrides only the keys it gives
        if isinstance(data.get(level), dict) and isinstance(merged.get(level), dict):
            merged[level] = {**merged[level], **data[level]}
            if "bandwidth_gbit" in data[level]:
                merged[level].pop("bandwidth_gbps", None)
        elif level in data:                       # a list of links replaces the preset's link
            merged[level] = data[level]
    merged.update({k: v for k, v in data.items() if k not in ("base", "preset", "intra_node", "inter_node")})
    return merged


def _node_group_from_dict(d: dict, where: str, num_gpus: int | None = None) -> NodeGroup:
    d = _with_base(d, where)
    for req in ("gpu", "gpus_per_node", "intra_node"):
        if req not in d:
            raise ParaplanError(f"{where}: required field '{req}' is missing")
    try:
        gpu = load_gpu(_str(d["gpu"], "gpu", where))
    except ParaplanError as e:
        raise ParaplanError(f"{where}: field 'gpu': {e}") from None
    per_node = _int(d["gpus_per_node"], "gpus_per_node", where)
    if num_gpus is None and d.get("num_gpus") is not None:
        num_gpus = _int(d["num_gpus"], "num_gpus", where)
    if num_gpus is not None:
        nodes, per_node = max(1, math.ceil(num_gpus / per_node)), min(per_node, num_gpus)
    else:
        raw = d.get("nodes", d.get("num_nodes", d.get("default_nodes", 1)))
        nodes = _int(raw, "nodes" if "nodes" in d else "num_nodes", where)
    if "inter_node" not in d:
        raise ParaplanError(f"{where}: required field 'inter_node' is missing" + (
            f"; without it the group's {nodes} nodes are disconnected" if nodes > 1 else ""))
    return NodeGroup(gpu, nodes, per_node, level_from_dict(d["intra_node"], "intra_node", where),
                     level_from_dict(d["inter_node"], "inter_node", where))


def cluster_from_dict(data: dict, where: str = "cluster", num_gpus: int | None = None,
                      default_name: str = "cluster") -> ClusterSpec:
    """A ClusterSpec from a mapping: one node type (like the presets) or `node_groups:` (heterogeneous)."""
    data = _mapping(data, "cluster", where)
    _check_keys(data, _NODE_FIELDS, where)
    name = _str(data.get("name", default_name), "name", where)
    source = _str(data.get("source", ""), "source", where)
    if "node_groups" in data:
        groups_raw = data["node_groups"]
        if not isinstance(groups_raw, list) or not groups_raw:
            raise ParaplanError(f"{where}: field 'node_groups' must be a non-empty list")
        groups = []
        for i, g in enumerate(groups_raw):
            gw = f"{where} node_groups[{i}]"
            _check_keys(_mapping(g, f"node_groups[{i}]", where), _NODE_FIELDS - _CLUSTER_ONLY, gw)
            groups.append(_node_group_from_dict(g, gw))
        cluster = ClusterSpec(name, tuple(groups), source)
        if "group_links" in data:
            cluster.extra["group_links"] = group_links(data["group_links"], len(groups), where)
        check_connected(cluster, where)
        if "node_links" in data:
            cluster.extra["node_links"] = node_links(data["node_links"], [g.num_nodes for g in groups], where)
        if num_gpus is not None and num_gpus != cluster.num_gpus:
            if not cluster.is_homogeneous:
                raise ParaplanError(f"{where}: cannot resize a heterogeneous cluster of {cluster.num_gpus} GPUs "
                                    f"to {num_gpus}; edit num_nodes in the file")
            cluster = cluster.resized(num_gpus)
        return cluster
    data = _with_base(data, where)
    cluster = ClusterSpec(name, (_node_group_from_dict(data, where, num_gpus),), source or data.get("source", ""))
    if "group_links" in data:
        raise ParaplanError(f"{where}: field 'group_links' needs node_groups; use node_links for pairs of nodes")
    if "node_links" in data:            # names are checked against the file's nodes, whatever size a job takes
        declared = _node_group_from_dict(data, where).num_nodes
        cluster.extra["node_links"] = node_links(data["node_links"], [max(declared, cluster.node_groups[0].num_nodes)],
                                                 where)
    return cluster


def load_cluster(spec: str, num_gpus: int | None = None) -> ClusterSpec:
    """A preset name, 'PRESET:GPUS' (e.g. 'dgx-h100:64' = 8 nodes of 8), or a YAML/JSON cluster file.

    `num_gpus` sets the size: ceil(num_gpus / gpus_per_node) nodes; fewer GPUs than a node gives one partial node.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParaplanError(f"cluster must be a preset name or a file path, got {spec!r}")
    if num_gpus is not None:
        num_gpus = _int(num_gpus, "num_gpus", f"cluster '{spec}'")
    if _looks_like_path(spec, _cluster_catalog()[1]):
        path = Path(spec).expanduser()
        data = _read_mapping(path, "cluster")
        return cluster_from_dict(data, where=f"cluster file '{path}'", num_gpus=num_gpus, default_name=path.stem)
    name, _, size = spec.partition(":")
    if size:
        if not size.strip().isdigit() or int(size) <= 0:
            raise ParaplanError(f"cluster '{spec}': the part after ':' must be a positive GPU count, got '{size}'")
        if num_gpus is not None and num_gpus != int(size):
            raise ParaplanError(f"cluster '{spec}' asks for {size} GPUs but num_gpus={num_gpus} was also given")
        num_gpus = int(size)
    entry = _cluster_preset(name.strip())
    return cluster_from_dict(entry, where=f"cluster preset '{entry['name']}'", num_gpus=num_gpus)


def _preset_for_gpu(gpu: GPUSpec) -> dict | None:
    """The cluster preset built from this GPU, else one of the same GPU family (first name token), else None."""
    _, index = _cluster_catalog()
    presets = list(index.values())
    for p in presets:
        if load_gpu(p["gpu"]).name == gpu.name:
            return p
    family = gpu.name.split("-")[0].lower()
    for p in presets:
        if load_gpu(p["gpu"]).name.split("-")[0].lower() == family:
            return p
    return None


_NVLS_GPUS = ("H100", "H200", "B200", "GB200")


def cluster_from_links(gpu: str, num_gpus: int, gpus_per_node: int, intra_gbps: float | None,
                       inter_gbps_bits: float | None) -> ClusterSpec:
    """A homogeneous cluster from a measured run: intra-node GB/s per GPU per direction, inter-node Gb/s per GPU.

    A bandwidth given as None comes from the cluster preset for that GPU (latencies and link names always do).
    NVLink SHARP (nvls) is on for H100/H200/B200 NVSwitch nodes.
    """
    where = f"cluster for {gpu} x{num_gpus}"
    spec = load_gpu(gpu)
    num_gpus = _int(num_gpus, "num_gpus", where)
    gpus_per_node = _int(gpus_per_node, "gpus_per_node", where)
    preset = _preset_for_gpu(spec)
    if preset is None and (intra_gbps is None or inter_gbps_bits is None):
        raise ParaplanError(f"{where}: no cluster preset for GPU {spec.name}; give both intra_gbps and inter_gbps_bits")
    nvls_gpu = spec.name.split("-")[0].upper() in _NVLS_GPUS
    if preset is not None:
        intra = level_from_dict(preset["intra_node"], "intra_node", where)
        inter = level_from_dict(preset["inter_node"], "inter_node", where)
    else:
        intra = LinkSpec("nvlink" if nvls_gpu else "intra-node", 1.0, DEFAULT_LATENCY_US["intra_node"], False)
        inter = LinkSpec("network", 1.0, DEFAULT_LATENCY_US["inter_node"], False)
    if intra_gbps is not None:
        intra = LinkSpec(intra.name, _float(intra_gbps, "intra_gbps", where), intra.latency_us, nvls_gpu)
    if inter_gbps_bits is not None:
        inter = LinkSpec(inter.name, _float(inter_gbps_bits, "inter_gbps_bits", where) / 8, inter.latency_us, False)
    nodes = max(1, math.ceil(num_gpus / gpus_per_node))
    group = NodeGroup(spec, nodes, min(gpus_per_node, num_gpus), intra, inter)
    source = f"measured-run links (intra {intra.bandwidth_gbps:g} GB/s, inter {inter.bandwidth_gbps * 8:g} Gb/s per GPU)"
    if preset is not None:
        source += f"; defaults from preset {preset['name']}"
    return ClusterSpec(f"{spec.name}x{num_gpus}", (group,), source)
