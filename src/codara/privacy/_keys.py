"""The two secrets masking needs, read from the environment and refused when weak.

``CODARA_MASK_KEY`` keys the tokens (HMAC-SHA256): whoever holds it can test a guess
("is <phone:…> +44 7911 123456?"), so it is a secret like a password hash's pepper.
``CODARA_VAULT_KEY`` encrypts the originals kept in the vault (AES-256-GCM). They must differ:
a leaked token key must not also open the vault.

Both are at least 32 random bytes written in base64 (URL-safe or standard, padding
optional), which is what ``python -c "import secrets; print(secrets.token_urlsafe(32))"``
prints. A passphrase, a short value or a repeated pattern is refused with a
:class:`~codara.errors.ConfigError` saying how to make a good one; the error never contains
the value.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

from codara.errors import ConfigError

__all__ = ["MASK_KEY_ENV", "VAULT_KEY_ENV", "parse_key", "secret_from_env", "vault_key_from_env"]

MASK_KEY_ENV = "CODARA_MASK_KEY"
VAULT_KEY_ENV = "CODARA_VAULT_KEY"
KEY_BYTES = 32
_MAKE_ONE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def parse_key(text: str, name: str, *, exact: bool = False) -> bytes:
    """The key bytes written in ``text`` (base64), or ConfigError naming ``name``.

    At least 32 bytes (exactly 32 when ``exact``: AES-256 takes no other length), and not
    typed by hand: 32 random bytes have about 30 distinct values (fewer than 16 means a
    pattern) and their base64 has both letter cases. These are heuristics that refuse the
    usual mistakes, not a proof of randomness.
    """
    hint = f"set {name} to 32 random bytes in base64, made with: {_MAKE_ONE}"
    compact = "".join(text.split())
    try:
        padded = (compact + "=" * (-len(compact) % 4)).replace("+", "-").replace("/", "_")
        key = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} is not base64", hint=hint) from None
    if compact.lower() == compact or compact.upper() == compact:
        # Random base64 of 32 bytes has both cases (all one case: odds about 1 in 10^9);
        # words typed as a passphrase ("correct-horse-battery-staple...") usually do not.
        raise ConfigError(f"{name} looks like a passphrase, not a random key", hint=hint)
    if len(key) < KEY_BYTES or (exact and len(key) != KEY_BYTES):
        wanted = f"exactly {KEY_BYTES}" if exact else f"at least {KEY_BYTES}"
        raise ConfigError(f"{name} holds {len(key)} bytes, {wanted} are needed", hint=hint)
    if len(set(key)) < 16:
        raise ConfigError(f"{name} is a repeated pattern, not a random key", hint=hint)
    return key


def secret_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The token key from ``CODARA_MASK_KEY``, or None when it is not set (the caller decides
    whether masking is required: it is as soon as a source declares a personal field)."""
    text = environ.get(MASK_KEY_ENV, "")
    if not text.strip():
        return None
    return parse_key(text, MASK_KEY_ENV)


def vault_key_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The vault key from ``CODARA_VAULT_KEY`` (exactly 32 bytes), or None when not set.
    Refused when it is the same key as ``CODARA_MASK_KEY``."""
    text = environ.get(VAULT_KEY_ENV, "")
    if not text.strip():
        return None
    key = parse_key(text, VAULT_KEY_ENV, exact=True)
    mask = environ.get(MASK_KEY_ENV, "")
    if mask.strip() and parse_key(mask, MASK_KEY_ENV) == key:
        raise ConfigError(
            f"{VAULT_KEY_ENV} is the same key as {MASK_KEY_ENV}",
            hint=f"give the vault a key of its own, made with: {_MAKE_ONE}",
        )
    return key
