"""Changing networks: bandwidth traces (trace.py) and re-planning over them (replan.py)."""
