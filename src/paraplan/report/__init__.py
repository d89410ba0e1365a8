"""Self-contained HTML reports: `render_report(plans, stats=None, title="", context=None) -> str`, and
`search_report(search_result)` for the ranked plans and funnel of a search."""
from paraplan.report.html import render_report, write_report
from paraplan.report.search import search_report

__all__ = ["render_report", "write_report", "search_report"]
