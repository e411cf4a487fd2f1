"""Benchmarks: Codara vs LangGraph vs DBOS vs the raw commit floor.

Run with ``python -m benchmarks.run`` (see docs/benchmarks.md).
"""
