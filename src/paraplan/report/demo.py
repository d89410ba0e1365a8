"""The README's demo report: `python -m paraplan.report.demo [FOLDER]` searches Llama-3 70B on 64 H100s (global
batch 256 x 8192 tokens), writes report.html (ranked plans, funnel, the best plan's timeline) and trace.json
(Perfetto) of the best plan into FOLDER (default docs/), and report.png when Chromium and playwright are there
(the picture in the README)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from paraplan.report.search import search_report
from paraplan.search.search import search
from paraplan.sim.trace import write_trace
from paraplan.specs import JobSpec
from paraplan.specs.loaders import load_cluster, load_model


def main(folder: str = "docs") -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    result = search(load_model("llama3-70b"), load_cluster("dgx-h100", 64), JobSpec(global_batch=256, seq_len=8192),
                    top_k=5, executor="serial")
    html = search_report(result)
    (out / "report.html").write_text(html, encoding="utf-8")
    best = result.plans[0]
    from paraplan.estimate import estimate
    timed = estimate(result.model, result.cluster, result.job, best.strategy, record_events=True)
    write_trace(timed, out / "trace.json", title=f"llama3-70b {best.strategy.describe()}")
    print(f"wrote {out / 'report.html'} and {out / 'trace.json'} (best: {best.strategy.describe()})")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto((out / "report.html").resolve().as_uri())
            page.screenshot(path=str(out / "report.png"), full_page=True)
            browser.close()
        print(f"wrote {out / 'report.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
