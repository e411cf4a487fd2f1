"""Trace and audit: the tamper-evident chains and their anchors (OpenTelemetry comes later)."""

from __future__ import annotations

from codara.store._audit import ChainKey, chain_key
from codara.trace._anchor import make_anchor, read_anchor
from codara.trace._chain import (
    AuditProblem,
    AuditReport,
    genesis_hash,
    record_hash,
    row_hash,
)
from codara.trace._verify import Anchor, verify_chain

__all__ = [
    "Anchor",
    "AuditProblem",
    "AuditReport",
    "ChainKey",
    "chain_key",
    "genesis_hash",
    "make_anchor",
    "read_anchor",
    "record_hash",
    "row_hash",
    "verify_chain",
]
