"""From plan to launch: the files and the exact command for Megatron-LM, torchtitan and DeepSpeed.

    export_plan(plan_or_strategy, model, cluster, job, fmt) -> Export(files={name: text}, launch="...", notes=[...])

`fmt` is "megatron", "torchtitan" or "deepspeed". A plan the engine cannot run raises ExportRefused (a
ParaplanError) whose one-line message names the broken rule. Write the files with `write_export(export, folder)`."""
from __future__ import annotations

from pathlib import Path

from paraplan.errors import ParaplanError
from paraplan.export import deepspeed, megatron, torchtitan
from paraplan.export.common import Export, ExportRefused
from paraplan.specs import ClusterSpec, JobSpec, ModelSpec, Plan, Strategy
from paraplan.specs.strategy import check

EXPORTERS = {"megatron": megatron, "torchtitan": torchtitan, "deepspeed": deepspeed}
FORMATS = tuple(EXPORTERS)

__all__ = ["export_plan", "write_export", "Export", "ExportRefused", "FORMATS", "EXPORTERS"]


def export_plan(plan_or_strategy: Plan | Strategy, model: ModelSpec, cluster: ClusterSpec, job: JobSpec,
                fmt: str) -> Export:
    """The files and launch command that run this plan on engine `fmt`."""
    if fmt not in EXPORTERS:
        raise ParaplanError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    s = plan_or_strategy.strategy if isinstance(plan_or_strategy, Plan) else plan_or_strategy
    if cluster.num_gpus != s.world_size:
        cluster = cluster.resized(s.world_size)
    check(s, model, cluster, job)
    return EXPORTERS[fmt].export(s, model, cluster, job)


def write_export(export: Export, folder: str | Path) -> list[Path]:
    """Write the export's files into `folder` (created if needed); returns their paths."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in export.files.items():
            path = folder / name
            path.write_text(text, encoding="utf-8")
            if name.endswith(".sh"):
                path.chmod(0o755)
            paths.append(path)
    except OSError as e:
        raise ParaplanError(f"cannot write export to '{folder}': {e.strerror or e}") from None
    return paths
