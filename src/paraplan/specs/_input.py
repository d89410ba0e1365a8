"""Reading user input and the packaged catalog: one-line errors that name the file, preset and field."""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from paraplan.errors import ParaplanError


# ---- helpers ---------------------------------------------------------------------------------------------------
def _key(name: str) -> str:
    """Normalised lookup key: lower case, '_' and whitespace as '-'."""
    return re.sub(r"[\s_]+", "-", str(name).strip().lower())


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _catalog():
    return resources.files("paraplan") / "catalog"


def _read_catalog_yaml(resource) -> Any:
    try:
        return yaml.safe_load(resource.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # a broken package, not a user error, but keep the one-line contract
        raise ParaplanError(f"catalog file {resource.name}: malformed YAML: {_one_line(e)}") from None


def _read_mapping(path: Path, what: str) -> dict:
    """Read a JSON or YAML file holding one mapping."""
    if not path.exists():
        raise ParaplanError(f"{what} file '{path}' not found")
    if path.is_dir():
        raise ParaplanError(f"{what} file '{path}' is a directory")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ParaplanError(f"{what} file '{path}' cannot be read: {_one_line(e)}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParaplanError(f"{what} file '{path}': malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    else:
        try:
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as e:
            raise ParaplanError(f"{what} file '{path}': malformed YAML: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise ParaplanError(f"{what} file '{path}' must hold a mapping of fields, got {type(data).__name__}")
    return data


def _looks_like_path(spec: str, preset_index: dict) -> bool:
    """A path when it has a folder separator or a file suffix; else a preset if one has that name; else if it exists."""
    if any(sep in spec for sep in ("/", "\\")) or spec.lower().endswith((".json", ".yaml", ".yml")):
        return True
    return _key(spec.split(":")[0]) not in preset_index and Path(spec).exists()


def _int(value: Any, field: str, where: str, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ParaplanError(f"{where}: field '{field}' must be {need}, got {value!r}")
    return value


def _float(value: Any, field: str, where: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0) or value < 0:
        need = "a positive number" if positive else "a number >= 0"
        raise ParaplanError(f"{where}: field '{field}' must be {need}, got {value!r}")
    return float(value)


def _bool(value: Any, field: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ParaplanError(f"{where}: field '{field}' must be true or false, got {value!r}")
    return value


def _str(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise ParaplanError(f"{where}: field '{field}' must be a string, got {value!r}")
    return value


def _mapping(value: Any, field: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise ParaplanError(f"{where}: field '{field}' must be a mapping, got {value!r}")
    return value


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ParaplanError(f"{where}: unknown field '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")


def _unknown(kind: str, name: str, known: list[str], hint: str = "") -> ParaplanError:
    return ParaplanError(f"unknown {kind} '{name}'; known: {', '.join(known)}{hint}")
