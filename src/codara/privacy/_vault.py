"""The vault's cipher: originals sealed per token with AES-256-GCM, so they can be erased.

Crypto-shredding: the journal and the audit chain hold tokens only; the personal value
behind a token lives in one vault row, sealed here. Erasing a subject deletes their rows,
and nothing in the audit trail changes, so ``audit verify`` stays clean.

A sealed entry is ``version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext and
tag``. The token is the associated data: an entry moved to another token's row does not
open. The key id (HMAC of the key, not the key) tells a wrong ``CODARA_VAULT_KEY`` apart
from an entry that was altered, which AES-GCM alone cannot (both fail the tag), and lets a
later version open entries sealed under a previous key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

from codara.errors import ConfigError, StoreError
from codara.privacy._keys import KEY_BYTES, VAULT_KEY_ENV

__all__ = ["VaultCipher", "VaultEntryAlteredError", "VaultKeyError"]

_VERSION: Final = b"\x01"
_NONCE: Final = 12
_KEY_ID: Final = 4
_HEADER: Final = 1 + _KEY_ID + _NONCE
_TAG: Final = 16


class VaultKeyError(ConfigError):
    """The vault entry was sealed under another key than ``CODARA_VAULT_KEY``."""

    code = "vault_key_mismatch"


class VaultEntryAlteredError(StoreError):
    """A vault entry does not open under its own key: its bytes or its token were changed.
    Never retried: the same bytes fail again, and they must not be trusted."""

    code = "vault_entry_altered"
    non_retryable = True


def _key_id(key: bytes) -> bytes:
    return hmac.new(key, b"codara vault key id", hashlib.sha256).digest()[:_KEY_ID]


class VaultCipher:
    """Seals and opens originals with one 32-byte key (see
    :func:`~codara.privacy.vault_key_from_env`)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ConfigError(
                f"a vault key must be exactly {KEY_BYTES} bytes",
                hint=f"read it with codara.privacy.vault_key_from_env ({VAULT_KEY_ENV})",
            )
        # Imported here: the CLI commands that never open the vault do not pay for it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.key_id = _key_id(key).hex()

    def __repr__(self) -> str:
        return f"VaultCipher(key_id={self.key_id!r})"  # never the key

    def seal(self, token: str, original: str) -> bytes:
        """``original`` encrypted under a fresh random nonce, bound to ``token``."""
        nonce = os.urandom(_NONCE)
        data = original.encode("utf-8", "surrogatepass")
        sealed = self._aead.encrypt(nonce, data, token.encode("utf-8", "surrogatepass"))
        return _VERSION + bytes.fromhex(self.key_id) + nonce + sealed

    def open(self, token: str, sealed: bytes) -> str:
        """The original sealed for ``token``; :class:`VaultKeyError` if it was sealed under
        another key, :class:`VaultEntryAlteredError` if it was changed (or is not an entry)."""
        from cryptography.exceptions import InvalidTag

        sealed = bytes(sealed)
        if len(sealed) < _HEADER + _TAG or sealed[:1] != _VERSION:
            raise VaultEntryAlteredError(
                f"the vault entry for {token} is not a sealed entry of this version",
                hint="the row was changed or written by something else; restore it from a "
                "backup, or erase it",
            )
        key_id = sealed[1 : 1 + _KEY_ID].hex()
        if key_id != self.key_id:
            raise VaultKeyError(
                f"the vault entry for {token} was sealed under key {key_id}, "
                f"and {VAULT_KEY_ENV} is key {self.key_id}",
                hint=f"set {VAULT_KEY_ENV} to the key this vault was written with",
            )
        nonce = sealed[1 + _KEY_ID : _HEADER]
        try:
            data = self._aead.decrypt(
                nonce, sealed[_HEADER:], token.encode("utf-8", "surrogatepass")
            )
        except InvalidTag:
            raise VaultEntryAlteredError(
                f"the vault entry for {token} fails its integrity check: it was altered, or "
                "belongs to another token",
                hint="do not trust it; restore the row from a backup, or erase it",
            ) from None
        return data.decode("utf-8", "surrogatepass")
