"""Trace and audit: the tamper-evident journal chain (OpenTelemetry export comes later)."""

from __future__ import annotations

from codara.trace._chain import (
    AuditProblem,
    AuditReport,
    genesis_hash,
    record_hash,
    row_hash,
    verify_chain,
)

__all__ = [
    "AuditProblem",
    "AuditReport",
    "genesis_hash",
    "record_hash",
    "row_hash",
    "verify_chain",
]
