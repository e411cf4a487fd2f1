"""Governed data sources: SQL databases, HTTP/JSON APIs and files, read in batches that
are checked against a declared scope before anything is read (see :mod:`._base`)."""

from codara.sources._base import JSON, Batch, Plan, Rejected, Source, SourceConfig, json_value
from codara.sources._registry import Sources, load_sources

__all__ = [
    "JSON",
    "Batch",
    "Plan",
    "Rejected",
    "Source",
    "SourceConfig",
    "Sources",
    "json_value",
    "load_sources",
]
