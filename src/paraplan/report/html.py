"""One self-contained HTML report of a plan (or of a search's ranked plans): inline SVG, CSS and a few lines of JS,
nothing fetched from the network.

    render_report(plans, stats=None, title="", context=None) -> str

`plans` are Plans, best first; the first should carry a timeline (estimate(..., record_events=True)) for the
pipeline chart. `stats` is a search's funnel: {"space_size": int, "pruned": {"<rule>": count, ...}, "simulated": int,
"seconds": float}. With one plan and no stats the top-K and funnel sections are left out. `context` is free
key -> value text shown under the title (model, cluster, batch)."""
from __future__ import annotations

from html import escape
from pathlib import Path

from paraplan.errors import ParaplanError
from paraplan.report.svg import PALETTE, legend, nice_ticks, rect, stacked_bars, svg, text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
background:#fff;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.ctx{color:#555;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin-top:8px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:right}th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}
.bad{color:#c0392b;font-weight:600}.ok{color:#27ae60;font-weight:600}.note{font-size:12px;color:#666}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;font-size:12px;padding:4px 6px;border-radius:4px;
display:none;z-index:9}svg.chart rect[data-tip]:hover{opacity:.8}
"""

# Hover tooltips from data-tip; the report reads fine without them.
_JS = """
(function(){var tip=document.getElementById('tip');
document.querySelectorAll('[data-tip]').forEach(function(el){
 el.addEventListener('mousemove',function(e){tip.textContent=el.getAttribute('data-tip');tip.style.display='block';
  tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';});
 el.addEventListener('mouseleave',function(){tip.style.display='none';});});
document.body.setAttribute('data-charts',String(document.querySelectorAll('svg.chart').length));})();
"""


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


# ---- sections ------------------------------------------------------------------------------------------------------
def pipeline_chart(plan, width: float = 1000) -> str:
    """Each pipeline rank's compute stream over one iteration: forward/backward per micro-batch, sends, the DP
    gradient reduction left after the last backward, and the optimizer step."""
    tl = plan.timeline
    s = plan.strategy
    pipe = tl.pipeline
    left, right, row_h, send_h, gap = 90, 20, 22, 6, 12
    end = max(pipe.last_backward_end_s[r] + tl.dp_exposed_s[r] + tl.optimizer_s[r] for r in range(s.pp))
    ticks = nice_ticks(end * 1e3)
    scale = (width - left - right) / (ticks[-1] / 1e3)
    body: list[str] = []
    for r in range(s.pp):
        y = 8 + r * (row_h + send_h + gap)
        body.append(text(left - 8, y + row_h / 2 + 4, f"stage {r}", 11, "end"))
        body.append(rect(left, y, (end) * scale, row_h, "#f4f4f4"))
    for ev in pipe.events:
        y = 8 + ev.rank * (row_h + send_h + gap)
        x, w = left + ev.start_s * scale, (ev.end_s - ev.start_s) * scale
        if ev.kind in ("F", "B"):
            color = PALETTE["forward"] if ev.kind == "F" else PALETTE["backward"]
            if s.vpp > 1 and ev.chunk % 2:
                color = "#76a5d6" if ev.kind == "F" else "#8cc47f"
            tip = (f"stage {ev.rank} {'forward' if ev.kind == 'F' else 'backward'} micro-batch {ev.microbatch}"
                   + (f" chunk {ev.chunk}" if s.vpp > 1 else "") + f": {_fmt_s(ev.end_s - ev.start_s)}")
            body.append(rect(x, y, w, row_h, color, tip, ' stroke="#fff" stroke-width="0.5"'))
            if w > 14:
                body.append(text(x + w / 2, y + row_h / 2 + 4, ev.microbatch, 9, "middle", "#fff"))
        else:
            body.append(rect(x, y + row_h + 1, w, send_h - 2, PALETTE["send"],
                             f"stage {ev.rank} sends {'activation' if ev.kind == 'SEND_F' else 'gradient'} "
                             f"of micro-batch {ev.microbatch}"))
    for r in range(s.pp):
        y = 8 + r * (row_h + send_h + gap)
        t0 = pipe.last_backward_end_s[r]
        if tl.dp_exposed_s[r] > 0:
            body.append(rect(left + t0 * scale, y, tl.dp_exposed_s[r] * scale, row_h, PALETTE["dp"],
                             f"stage {r} DP gradient reduction (exposed) {_fmt_s(tl.dp_exposed_s[r])}"))
        t1 = t0 + tl.dp_exposed_s[r]
        body.append(rect(left + t1 * scale, y, tl.optimizer_s[r] * scale, row_h, PALETTE["optimizer"],
                         f"stage {r} optimizer step {_fmt_s(tl.optimizer_s[r])}"))
    axis_y = 8 + s.pp * (row_h + send_h + gap)
    grid = []
    for t in ticks:
        tx = left + t / 1e3 * scale
        grid.append(f'<line x1="{tx:.2f}" y1="4" x2="{tx:.2f}" y2="{axis_y:.2f}" stroke="#e6e6e6"/>')
        body.append(text(tx, axis_y + 14, f"{t:g}", 10, "middle", "#555"))
    body.append(text(width - right, axis_y + 28, "ms", 10, "end", "#555"))
    items = [("forward", PALETTE["forward"]), ("backward", PALETTE["backward"]), ("pipeline send", PALETTE["send"]),
             ("DP reduce (exposed)", PALETTE["dp"]), ("optimizer", PALETTE["optimizer"]), ("idle (bubble)", "#f4f4f4")]
    lg, lh = legend(items, left, axis_y + 36, width - left - right)
    return svg(width, axis_y + 40 + lh, grid + body + lg, "pipeline timeline")


def _breakdown_parts(plan) -> list[tuple[str, float, str]]:
    t = plan.time
    parts = [("compute", t.compute_s - t.recompute_s, PALETTE["compute"]), ("recompute", t.recompute_s, PALETTE["recompute"])]
    parts += [(f"exposed {k.upper()} comm", v, PALETTE.get(k, "#999")) for k, v in sorted(t.exposed_comm_s.items())]
    parts += [("overlap slowdown", t.overlap_slowdown_s, PALETTE["slowdown"]), ("pipeline bubble", t.bubble_s, PALETTE["bubble"]),
              ("optimizer", t.optimizer_s, PALETTE["optimizer"]), ("framework overhead", t.overhead_s, PALETTE["overhead"])]
    return parts


def _memory_parts(plan) -> list[tuple[str, float, str]]:
    m = plan.memory
    return [("weights", m.weights_gib, PALETTE["weights"]), ("gradients", m.gradients_gib, PALETTE["gradients"]),
            ("optimizer states", m.optimizer_gib, PALETTE["optimizer_states"]),
            ("activations", m.activations_gib, PALETTE["activations"]), ("transient", m.transient_gib, PALETTE["transient"]),
            ("framework overhead", m.overhead_gib, PALETTE["framework"])]


def _label(plan, i: int) -> str:
    s = plan.strategy
    return f"#{i + 1} tp{s.tp} pp{s.pp} dp{s.dp}" + (f" cp{s.cp}" if s.cp > 1 else "") + (f" ep{s.ep}" if s.ep > 1 else "") \
        + (f" v{s.vpp}" if s.vpp > 1 else "")


def breakdown_section(plan) -> str:
    parts = _breakdown_parts(plan)
    total = plan.iteration_time_s
    rows = "".join(f"<tr><td>{escape(n)}</td><td>{v:.4f}</td><td>{100 * v / total:.1f}%</td></tr>"
                   for n, v, _ in parts if v > 0)
    hidden = ", ".join(f"{k.upper()} {v:.4f} s" for k, v in sorted(plan.time.overlapped_comm_s.items()) if v)
    chart = stacked_bars([("critical stage", parts)], "seconds", "time breakdown")
    return (chart + f"<table><tr><th>part</th><th>seconds</th><th>share</th></tr>{rows}"
            f"<tr><th>iteration</th><th>{total:.4f}</th><th></th></tr></table>"
            + (f'<p class="note">communication hidden behind compute: {escape(hidden)}</p>' if hidden else ""))


def memory_section(plans) -> str:
    cap = plans[0].memory.capacity_gib
    rows = [(_label(p, i) if len(plans) > 1 else "per GPU", _memory_parts(p)) for i, p in enumerate(plans)]
    chart = stacked_bars(rows, "GiB", "memory per GPU", limit=cap, limit_label=f"GPU {cap:.0f} GiB")
    m = plans[0].memory
    verdict = '<span class="ok">fits</span>' if m.fits else '<span class="bad">does not fit</span>'
    return chart + f'<p class="note">best plan: {m.total_gib:.1f} GiB of {cap:.1f} GiB ({verdict}) on the most loaded GPU</p>'


def topk_section(plans) -> str:
    rows = [(_label(p, i), [("iteration", p.iteration_time_s, PALETTE["compute"] if i else "#2e5d8a")])
            for i, p in enumerate(plans)]
    chart = stacked_bars(rows, "seconds per iteration", "top plans")
    head = "<tr><th>#</th><th>strategy</th><th>iteration s</th><th>tokens/s</th><th>MFU</th><th>memory GiB</th><th>bubble s</th></tr>"
    body = "".join(
        f"<tr><td>{i + 1}</td><td>{escape(p.strategy.describe())}</td><td>{p.iteration_time_s:.4f}</td>"
        f"<td>{p.tokens_per_s:,.0f}</td><td>{100 * p.mfu:.1f}%</td>"
        f"<td class=\"{'ok' if p.memory.fits else 'bad'}\">{p.memory.total_gib:.1f}</td><td>{p.time.bubble_s:.4f}</td></tr>"
        for i, p in enumerate(plans))
    return chart + f"<table>{head}{body}</table>"


def funnel_section(stats: dict) -> str:
    """Candidates left after each pruning rule, in the order the search applied them, down to those simulated."""
    space = int(stats.get("space_size", 0))
    rows, left = [("strategy space", [("candidates", space, "#4e79a7")], f"{space:,}")], space
    for rule, count in stats.get("pruned", {}).items():
        left = max(0, left - int(count))
        rows.append((rule.removeprefix("rule:").replace("_", " "),
                     [("left", left, "#76b7b2"), ("removed by this rule", int(count), "#e15759")],
                     f"{left:,} left (-{int(count):,})"))
    simulated = int(stats.get("simulated", 0))
    rows.append(("simulated", [("simulated", simulated, "#59a14f")], f"{simulated:,}"))
    chart = stacked_bars(rows, "strategies", "search funnel")
    secs = stats.get("seconds")
    share = f"{100 * (1 - simulated / space):.2f}% of the space never simulated" if space else ""
    return chart + (f'<p class="note">{share}{"; " if share and secs is not None else ""}'
                    f'{f"search took {float(secs):.2f} s" if secs is not None else ""}</p>')


def render_report(plans, stats: dict | None = None, title: str = "", context: dict | None = None) -> str:
    """The report as one HTML document (a str)."""
    plans = list(plans)
    if not plans:
        raise ParaplanError("a report needs at least one plan")
    best = plans[0]
    title = title or f"paraplan: {best.strategy.describe()}"
    ctx = " · ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in (context or {}).items())
    m = best.memory
    cards = [("iteration", _fmt_s(best.iteration_time_s)), ("tokens/s", f"{best.tokens_per_s:,.0f}"),
             ("TFLOP/s per GPU", f"{best.model_tflops_per_gpu:.1f}"), ("MFU", f"{100 * best.mfu:.1f}%"),
             ("memory per GPU", f"{m.total_gib:.1f} / {m.capacity_gib:.0f} GiB"),
             ("pipeline bubble", _fmt_s(best.time.bubble_s))]
    parts = [f"<h1>{escape(title)}</h1>", f'<div class="ctx">{ctx}</div>' if ctx else "",
             f'<div class="ctx">strategy: <b>{escape(best.strategy.describe())}</b></div>',
             '<div class="cards">' + "".join(f"<div class=\"card\"><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                             for k, v in cards) + "</div>"]
    if best.timeline is not None:
        parts += ['<h2 id="timeline">Pipeline timeline (one iteration)</h2>', pipeline_chart(best)]
    parts += ['<h2 id="breakdown">Where the time goes</h2>', breakdown_section(best),
              '<h2 id="memory">Memory per GPU</h2>', memory_section(plans)]
    if len(plans) > 1:
        parts += [f'<h2 id="topk">Top {len(plans)} plans</h2>', topk_section(plans)]
    if stats:
        parts += ['<h2 id="funnel">Search funnel</h2>', funnel_section(stats)]
    if best.assumptions:
        parts.append('<p class="note">assumed: ' + escape("; ".join(best.assumptions)) + "</p>")
    parts.append(f'<p class="note">{escape(best.flop_formula)}. Generated by paraplan.</p>')
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(p for p in parts if p)
            + f'<div id="tip"></div><script>{_JS}</script></body></html>\n')


def write_report(plans, path: str | Path, stats: dict | None = None, title: str = "", context: dict | None = None) -> Path:
    return write_html(render_report(plans, stats, title, context), path)


def write_html(html: str, path: str | Path) -> Path:
    """Write a rendered report; a path that cannot be written is one ParaplanError line."""
    path = Path(path)
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise ParaplanError(f"cannot write report '{path}': {e.strerror or e}") from None
    return path
