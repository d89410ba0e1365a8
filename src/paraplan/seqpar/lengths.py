"""Where a step's sequence lengths come from: a file of lengths, or a shipped long-tail distribution to sample.

File format: one length (tokens, a positive integer) per line; a blank line or a line `---` starts the next batch;
`#` starts a comment. Distributions live in paraplan/catalog/seqlen/*.yaml as a cumulative table
`cdf: [[length, share <= length], ...]` with a `source:` saying what it is based on; sampling interpolates the
inverse CDF linearly in log-length, and sequences longer than the maximum length are dropped and redrawn
(FlexSP §6.1 drops them).
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from paraplan.errors import ParaplanError


def parse_lengths(text: str, where: str = "lengths") -> list[list[int]]:
    """Batches of lengths from the file format above. Errors name the line."""
    batches: list[list[int]] = [[]]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line == "---":
            if batches[-1]:
                batches.append([])
            continue
        try:
            value = float(line)
        except ValueError:
            raise ParaplanError(f"{where} line {number}: {line!r} is not a number; expected one length in tokens "
                                "per line") from None
        if value != int(value) or value <= 0:
            raise ParaplanError(f"{where} line {number}: length must be a positive integer, got {line!r}")
        batches[-1].append(int(value))
    batches = [b for b in batches if b]
    if not batches:
        raise ParaplanError(f"{where}: no sequence lengths (the batch is empty)")
    return batches


def read_lengths(path: str | Path) -> list[list[int]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParaplanError(f"cannot read lengths file '{path}': {exc.strerror or exc}") from None
    return parse_lengths(text, where=f"lengths file '{path}'")


def check_lengths(lengths) -> list[int]:
    """A batch as a list of positive ints, or a one-line error naming the first bad entry."""
    out = []
    if lengths is None or len(lengths) == 0:
        raise ParaplanError("the batch is empty: give at least one sequence length")
    for i, x in enumerate(lengths):
        try:
            v = int(x)
        except (TypeError, ValueError):
            raise ParaplanError(f"sequence {i}: length {x!r} is not a number") from None
        if v != x or v <= 0:
            raise ParaplanError(f"sequence {i}: length must be a positive integer, got {x!r}")
        out.append(v)
    return out


# ---- distributions ---------------------------------------------------------------------------------------------
@functools.cache
def _catalog() -> dict[str, dict]:
    out = {}
    for entry in resources.files("paraplan").joinpath("catalog", "seqlen").iterdir():
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text())
            out[data["name"]] = data
    return out


def list_distributions() -> list[str]:
    return sorted(_catalog())


def distribution_source(name: str) -> str:
    return " ".join(str(_lookup(name).get("source", "")).split())


def _lookup(name: str) -> dict:
    catalog = _catalog()
    if name not in catalog:
        raise ParaplanError(f"unknown length distribution {name!r}; known: {', '.join(sorted(catalog))}")
    return catalog[name]


def sample_lengths(name: str, count: int, max_len: int, seed: int = 0) -> list[int]:
    """`count` lengths drawn from distribution `name`, each <= max_len (longer draws are redrawn)."""
    if count <= 0:
        raise ParaplanError(f"batch size must be a positive integer, got {count}")
    if max_len <= 0:
        raise ParaplanError(f"max length must be a positive integer, got {max_len}")
    table = np.array(_lookup(name)["cdf"], dtype=float)
    lengths, shares = np.log(table[:, 0]), table[:, 1]
    # drawing from the CDF truncated at max_len is the same as redrawing the longer ones
    top = float(np.interp(np.log(max_len), lengths, shares))
    if top <= 0:
        raise ParaplanError(f"max length {max_len} is below every length of distribution {name!r}")
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.0, top, size=count)
    return [int(x) for x in np.clip(np.round(np.exp(np.interp(u, shares, lengths))), 1, max_len)]


def sample_batches(name: str, batches: int, batch_size: int, max_len: int, seed: int = 0) -> list[list[int]]:
    return [sample_lengths(name, batch_size, max_len, seed=seed * 100_003 + b) for b in range(batches)]
