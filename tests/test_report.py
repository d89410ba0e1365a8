"""The HTML report: one self-contained file (no network: no external URLs, scripts or styles), the sections it
promises, graceful without search results, and `paraplan report` on the command line. The browser check (console
errors, charts drawn) is tests/test_report_browser.py."""
import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from paraplan.cli import app
from paraplan.errors import ParaplanError
from paraplan.estimate import estimate
from paraplan.report import render_report, write_report
from paraplan.specs import JobSpec, Strategy
from paraplan.specs.loaders import load_cluster, load_model

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
STATS = {"space_size": 4096, "pruned": {"rule:world_size": 3000, "rule:heads_divisible_by_tp": 500, "memory_bound": 400},
         "simulated": 196, "seconds": 2.5}


def plans():
    model, job = load_model("llama3-8b"), JobSpec(global_batch=32, seq_len=4096)
    out = []
    for i, text in enumerate(["tp=2,pp=2,dp=2,mbs=1,zero=1,sp=true", "tp=2,pp=1,dp=4,mbs=1,zero=1,sp=true",
                              "tp=1,pp=2,dp=4,mbs=1,zero=1"]):
        s = Strategy.parse(text)
        out.append(estimate(model, load_cluster("dgx-h100", 8), job, s, record_events=(i == 0)))
    return out


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.ids, self.urls = [], set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])


@pytest.fixture(scope="module")
def full():
    return render_report(plans(), STATS, title="demo", context={"model": "llama3-8b"})


def test_self_contained(full):
    p = _Tags()
    p.feed(full)
    assert p.urls == [] and "<link" not in full and "@import" not in full
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", full)     # the SVG namespace is the only URL
    assert full.startswith("<!DOCTYPE html>") and full.rstrip().endswith("</html>")


def test_sections_of_a_search_report(full):
    p = _Tags()
    p.feed(full)
    assert {"timeline", "breakdown", "memory", "topk", "funnel"} <= p.ids
    assert full.count('class="chart"') == 5
    assert "GPU 80 GiB" in full                      # memory limit line of an H100 (81,559 MiB)
    left = STATS["space_size"]
    for rule, count in STATS["pruned"].items():     # each rule's row: its name, what is left, what it removed
        left -= count
        assert f'{rule.removeprefix("rule:").replace("_", " ")}</text>' in full and f"{left:,} left (-{count:,})" in full
    assert "tp=2,pp=1,dp=4" in full and "Top 3 plans" in full


def test_one_plan_without_stats_leaves_out_topk_and_funnel():
    html = render_report(plans()[:1])
    assert 'id="timeline"' in html and 'id="memory"' in html and 'id="breakdown"' in html
    assert 'id="topk"' not in html and 'id="funnel"' not in html


def test_plan_without_timeline_still_reports():
    html = render_report(plans()[1:2])
    assert 'id="timeline"' not in html and 'id="breakdown"' in html


def test_deterministic_and_escaped():
    ps = plans()
    assert render_report(ps, STATS) == render_report(ps, STATS)
    html = render_report(ps[:1], title="<script>alert(1)</script>")
    assert "<script>alert(1)" not in html


def test_empty_is_an_error():
    with pytest.raises(ParaplanError):
        render_report([])


def test_cli_report(tmp_path):
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", "--model", "llama3-8b", "--cluster", "dgx-h100", "--strategy",
                            "tp=2,pp=2,dp=2,mbs=1", "--global-batch", "32", "--seq-len", "4096", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert 'id="timeline"' in out.read_text()
    with pytest.raises(ParaplanError, match="cannot write report"):
        write_report(plans()[:1], tmp_path / "no" / "r.html")
