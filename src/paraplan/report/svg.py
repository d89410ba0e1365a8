"""Small SVG chart builders for the HTML report: plain strings, no dependencies, deterministic output."""
from __future__ import annotations

from html import escape

PALETTE = {"forward": "#4e79a7", "backward": "#59a14f", "recompute": "#8cd17d", "compute": "#4e79a7",
           "tp": "#f28e2b", "cp": "#edc948", "ep": "#b07aa1", "dp": "#e15759", "pp": "#ff9da7", "zero": "#9c755f",
           "slowdown": "#bab0ac", "bubble": "#d4d4d4", "optimizer": "#76b7b2", "overhead": "#79706e",
           "weights": "#4e79a7", "gradients": "#f28e2b", "optimizer_states": "#76b7b2", "activations": "#59a14f",
           "transient": "#edc948", "framework": "#bab0ac", "send": "#ff9da7"}


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def rect(x, y, w, h, fill, tip="", extra="") -> str:
    title = f"<title>{escape(tip)}</title>" if tip else ""
    return (f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0))}" height="{_num(h)}" fill="{fill}" '
            f'data-tip="{escape(tip)}"{extra}>{title}</rect>')


def text(x, y, s, size=11, anchor="start", fill="#222", weight="normal") -> str:
    return (f'<text x="{_num(x)}" y="{_num(y)}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}">{escape(str(s))}</text>')


def svg(width, height, body: list[str], label: str) -> str:
    return (f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {_num(width)} {_num(height)}" '
            f'width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
            + "".join(body) + "</svg>")


def nice_ticks(top: float, count: int = 6) -> list[float]:
    """Round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0.0]
    raw = top / count
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, t = [], 0.0
    while t < top + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def legend(items: list[tuple[str, str]], x: float, y: float, width: float) -> tuple[list[str], float]:
    """Legend swatches laid out in rows; returns (elements, height used)."""
    out, cx, cy = [], x, y
    for label, color in items:
        w = 18 + 7 * len(label)
        if cx + w > x + width:
            cx, cy = x, cy + 18
        out.append(rect(cx, cy, 12, 12, color))
        out.append(text(cx + 16, cy + 10, label, 11))
        cx += w + 10
    return out, cy - y + 18


def stacked_bars(rows: list[tuple], unit: str, label: str,
                 limit: float | None = None, limit_label: str = "", width: float = 900) -> str:
    """Horizontal stacked bars, one row per (name, [(part, value, color)]) or (name, parts, end label), with an
    optional vertical limit line."""
    left, right, row_h, gap = 190, 70, 26, 10
    top = max([sum(v for _, v, _ in row[1]) for row in rows] + [limit or 0]) or 1.0
    ticks = nice_ticks(top)
    scale = (width - left - right) / ticks[-1]
    seen: dict[str, str] = {}
    body: list[str] = []
    y = 22 if limit else 10
    for name, parts, *end_label in rows:
        body.append(text(left - 8, y + row_h / 2 + 4, name, 11, "end"))
        x = left
        for part, value, color in parts:
            if value <= 0:
                continue
            seen.setdefault(part, color)
            body.append(rect(x, y, value * scale, row_h, color, f"{name}: {part} {value:.4g} {unit}"))
            x += value * scale
        total = sum(v for _, v, _ in parts)
        end = end_label[0] if end_label else (f"{total:,.0f}" if total >= 100 else f"{total:.3g}")
        body.append(text(x + 4, y + row_h / 2 + 4, end, 10, fill="#555"))
        y += row_h + gap
    axis_y = y
    grid: list[str] = []
    for t in ticks:
        tx = left + t * scale
        grid.append(f'<line x1="{_num(tx)}" y1="6" x2="{_num(tx)}" y2="{_num(axis_y)}" stroke="#eee"/>')
        body.append(text(tx, axis_y + 14, f"{t:g}", 10, "middle", "#555"))
    body.append(text(width - right, axis_y + 28, unit, 10, "end", "#555"))
    if limit:
        lx = left + limit * scale
        body.append(f'<line x1="{_num(lx)}" y1="4" x2="{_num(lx)}" y2="{_num(axis_y)}" stroke="#d62728" '
                    f'stroke-width="2" stroke-dasharray="6 3"/>')
        body.append(text(lx + 4, 14, limit_label or f"limit {limit:g}", 10, "start", "#d62728"))
    lg, lh = legend(list(seen.items()), left, axis_y + 38, width - left - right)
    return svg(width, axis_y + 40 + lh, grid + body + lg, label)   # grid lines under the bars
