"""The choke point where personal data becomes tokens before anything is stored.

Two ways data enters a run: its input (``Client.start_runs``) and its reads
(``ctx.read``). Both pass :meth:`Privacy.mask` here before they reach the store: every
string is scanned (emails, IBANs, card numbers, phone numbers; :mod:`codara.privacy`), a
read's declared personal fields are tokenised whole, and what the workflow, the journal,
the reviews and the quarantine hold from then on is the masked form. The hash chain is
computed over it, so deleting an original never breaks ``audit verify``.

The originals go to the vault (``codara_vault``), sealed with ``CODARA_VAULT_KEY``, when
that key is set; without it they are not kept at all. Erasing a person
(:func:`erase`) deletes their vault rows: their tokens stay, meaning nothing any more.

Without ``CODARA_MASK_KEY`` tokens are keyed with a fixed public key, and a warning says
so: values are still never stored, but anyone could test a guess against a token.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from codara.errors import ConfigError
from codara.privacy import (
    KINDS,
    Finding,
    KnownValues,
    Masker,
    VaultCipher,
    kind_of,
    known_patterns,
    redact_found,
    secret_from_env,
    vault_key_from_env,
)

if TYPE_CHECKING:
    from codara.store import Store, Tx

__all__ = [
    "UNMASK_INSERT",
    "VAULT_SELECT",
    "Privacy",
    "RedactingFilter",
    "RunOriginals",
    "erase",
    "mask_input",
    "privacy",
]

log = logging.getLogger("codara.privacy")

_PUBLIC_KEY = hashlib.sha256(b"codara: the public default masking key, not a secret").digest()
UNKEYED_WARNING = (
    "CODARA_MASK_KEY is not set: personal values are masked with a public key, so anyone "
    "who can read a token can test a guess against it; set a secret key (see docs/privacy.md)"
)

_INSERT_VAULT = (
    "INSERT INTO codara_vault (token, kind, sealed, created_at) "
    "VALUES (:token, :kind, :sealed, :at) ON CONFLICT (token) DO NOTHING"
)


class Privacy:
    """One process's masker and vault cipher, from the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        secret = secret_from_env(env)
        self.keyed = secret is not None
        self.masker = Masker(secret if secret is not None else _PUBLIC_KEY)
        vault_key = vault_key_from_env(env)
        self.cipher = VaultCipher(vault_key) if vault_key is not None else None
        if not self.keyed:
            log.warning(UNKEYED_WARNING)

    def mask(
        self, value: Any, *, numbers: bool = False, known: KnownValues = ()
    ) -> tuple[Any, list[Finding]]:
        """``value`` with every personal value in it tokenised (``known`` ones too, wherever
        they appear), and what was masked."""
        return redact_found(value, self.masker, numbers=numbers, known=known)

    def mask_record(
        self, record: Mapping[str, Any], fields: Mapping[str, str]
    ) -> tuple[Any, list[Finding]]:
        """A read's record: ``fields`` (path -> kind) tokenised whole, the rest scanned."""
        masked = self.masker.mask_record(record, fields)
        return masked.value, list(masked.found)

    def mask_whole(self, kind: str, value: str) -> tuple[str, list[Finding]]:
        """``value`` replaced by one token of ``kind`` (its original for the vault)."""
        token = self.masker.token(kind, value)
        return token, [Finding(kind, token, value, "")]

    def vault_rows(self, found: Sequence[Finding], now: float) -> list[tuple[Any, ...]]:
        """The vault rows of ``found`` (none without a vault key: originals not kept)."""
        if self.cipher is None:
            return []
        seen: dict[str, tuple[Any, ...]] = {}
        for f in found:
            if f.token not in seen:
                sealed = base64.b64encode(self.cipher.seal(f.token, f.original)).decode()
                seen[f.token] = (f.token, f.kind, sealed, now)
        return list(seen.values())

    async def keep(self, store: Store, found: Sequence[Finding]) -> None:
        """Store the originals of ``found`` in the vault (its own transaction)."""
        rows = self.vault_rows(found, time.time())
        if not rows:
            return
        async with store.tx() as tx:
            await self.keep_in(tx, rows)

    async def keep_in(self, tx: Tx, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store vault rows inside an open transaction (a read's, with its journal row)."""
        for token, kind, sealed, at in rows:
            await tx.execute(_INSERT_VAULT, {"token": token, "kind": kind, "sealed": sealed,
                                             "at": at})  # fmt: skip

    def open_rows(self, rows: Sequence[Sequence[Any]]) -> dict[str, tuple[str, str]]:
        """token -> (kind, original) of vault rows ``(token, kind, sealed)``. Without a vault
        key: ConfigError (the originals cannot be opened here)."""
        if self.cipher is None:
            raise ConfigError(
                "turning a token back into its original needs the vault: CODARA_VAULT_KEY "
                "is not set in this process",
                hint="set CODARA_VAULT_KEY (the deployment's key, docs/privacy.md)",
            )
        cipher = self.cipher
        return {str(t): (str(k), cipher.open(str(t), base64.b64decode(str(s))))
                for t, k, s in rows}  # fmt: skip


VAULT_SELECT = "SELECT token, kind, sealed FROM codara_vault WHERE token IN ({marks})"
"""The vault rows of some tokens (``marks``: one ``?`` per token)."""

UNMASK_INSERT = (
    "INSERT INTO codara_unmask_events (at, actor, token, kind, run_id, purpose) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
"""Who saw (or erased) which token's original, when, for which run and why."""


class RunOriginals:
    """The originals unmasked reads gave one run, and the masking of what the run journals
    from the first of them on: every journal value is scanned, and those originals are found
    wherever they appear (a name or an address no detector finds included), so that a step
    returning one journals its token."""

    def __init__(self) -> None:
        self.revealed = False
        self._by_kind: dict[str, set[str]] = {}
        self._known: KnownValues = ()

    def learn(self, opened: Mapping[str, tuple[str, str]]) -> None:
        """``opened``: token -> (kind, original), as :meth:`Privacy.open_rows` gives them."""
        for kind, original in opened.values():
            self._by_kind.setdefault(kind, set()).add(original)
        self._known = known_patterns(self._by_kind)
        self.revealed = True

    def mask_journal(self, text: str | None) -> str | None:
        """A journal value (JSON text) with personal values masked."""
        if text is None:
            return None
        from codara.engine._codec import decode, dumps

        value = decode(text)
        masked, found = privacy().mask(value, numbers=False, known=self._known)
        return dumps(masked) if found or masked != value else text


_CACHE: dict[tuple[str, str], Privacy] = {}


def privacy() -> Privacy:
    """This process's Privacy for the current keys (made once per pair of keys: the
    masker's detectors take a few hundred milliseconds to load)."""
    key = (os.environ.get("CODARA_MASK_KEY", ""), os.environ.get("CODARA_VAULT_KEY", ""))
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = Privacy()
    return found


def mask_input(text: str, found: list[Finding]) -> str:
    """A run's input (JSON text) masked, what was masked appended to ``found``: the choke
    point every way of starting a run passes (App and Client)."""
    from codara.engine._codec import decode, dumps

    masked, personal = privacy().mask(decode(text))
    if not personal:
        return text
    found.extend(personal)
    return dumps(masked)


async def erase(store: Store, privacy: Privacy, subject: str, *, by: str) -> list[str]:
    """Delete the vault entries of ``subject`` (a personal value, as any kind): its tokens
    stay in journals and reviews, but nothing can turn them back into the value. Returns
    the tokens erased; the erasure is recorded (who, when, which tokens; never the value)."""
    tokens = sorted({privacy.masker.token(kind, subject) for kind in KINDS})
    marks = ", ".join("?" for _ in tokens)
    gone = await store.execute_raw(
        f"DELETE FROM codara_vault WHERE token IN ({marks}) RETURNING token", tokens
    )
    erased = sorted(str(t) for (t,) in gone)
    now = time.time()
    for token in erased:
        await store.execute_raw(
            UNMASK_INSERT,
            [now, by, token, kind_of(token), None, "erased (right to erasure)"],
        )
    return erased


class RedactingFilter(logging.Filter):
    """Masks personal values in log records before a handler writes them: the message with
    its arguments, and the traceback text. On the CLI's log handler (``codara worker``,
    ``codara serve``), so a value that reaches a log line (an error quoting a record, a
    workflow's own warning) is written as its token."""

    _busy = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._busy, "on", False):  # a record logged while masking (the key warning)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to logging
            return True
        self._busy.on = True
        try:
            return self._mask(record, message)
        finally:
            self._busy.on = False

    def _mask(self, record: logging.LogRecord, message: str) -> bool:
        shield = privacy()
        masked, found = shield.mask(message)
        if found:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            import traceback

            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text, _ = shield.mask(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text, _ = shield.mask(record.exc_text)
        return True
