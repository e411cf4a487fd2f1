"""Anchors: the newest chain head, signed, kept outside the database.

An anchor names the newest entry of ``codara_chain_heads`` (its ``seq`` and ``hash``). The
heads are chained, so that one hash pins every entry up to it: a later ``audit verify
--anchor`` that finds a different hash at that ``seq``, or no entry, proves the heads (and so
the runs and reviews they name) were rewritten or truncated. With ``CODARA_AUDIT_KEY`` set
the anchor carries an HMAC, so a forged anchor file is caught as well.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from codara.errors import ConfigError, InputError
from codara.store import Store
from codara.store._audit import HEADS_GENESIS, ChainKey, key_id_of
from codara.trace._verify import Anchor

__all__ = ["ANCHOR_FORMAT", "make_anchor", "read_anchor"]

ANCHOR_FORMAT = "codara-anchor-v1"


def _signed_text(seq: int, head: str, at: float) -> str:
    return f"{ANCHOR_FORMAT}\x1f{seq}\x1f{head}\x1f{at!r}"


async def make_anchor(store: Store, key: ChainKey, now: float) -> dict[str, Any]:
    """The anchor for the store's newest chain head, as a JSON-ready dict."""
    rows = await store.execute_raw(
        "SELECT seq, hash FROM codara_chain_heads ORDER BY seq DESC LIMIT 1"
    )
    seq, head = (int(rows[0][0]), str(rows[0][1])) if rows else (0, HEADS_GENESIS)
    return {
        "format": ANCHOR_FORMAT,
        "seq": seq,
        "hash": head,
        "at": now,
        "key_id": key.kid or None,
        "signature": key.seal(_signed_text(seq, head, now)) if key.keyed else None,
    }


def read_anchor(text: str, key: ChainKey, source: str) -> Anchor:
    """Parse and authenticate an anchor file; a bad or forged one is an error."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not a {ANCHOR_FORMAT} document")
        seq, head, at = int(data["seq"]), str(data["hash"]), float(data["at"])
        signature = data.get("signature")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{source} is not a Codara anchor: {exc}",
            hint="write one with `codara audit anchor --out FILE`",
        ) from exc
    if signature is None:
        return Anchor(seq, head)
    if not key.keyed:
        raise ConfigError(
            f"the anchor {source} is signed, but CODARA_AUDIT_KEY is not set",
            hint="set CODARA_AUDIT_KEY to the key the anchor was written with",
        )
    expected = key.seal(_signed_text(seq, head, at))
    if not hmac.compare_digest(expected, str(signature)):
        kid = key_id_of(str(signature))
        raise InputError(
            f"the anchor {source} does not verify: it was altered, or signed with another key"
            + (f" (key id {kid}; CODARA_AUDIT_KEY has {key.kid})" if kid != key.kid else ""),
            hint="use the anchor file exactly as `codara audit anchor` wrote it",
        )
    return Anchor(seq, head)
