"""Search the strategy space for the fastest plans that fit (branch and bound; see search.py)."""
from paraplan.search.search import SearchResult, SearchStats, compare, search
from paraplan.search.space import KNOBS, parse_knob_values

__all__ = ["search", "SearchResult", "SearchStats", "compare", "parse_knob_values", "KNOBS"]
