"""Benchmarks: scripts that measure edgead, runnable as `python benchmarks/NAME.py` or `edgead bench NAME`."""
