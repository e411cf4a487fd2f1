"""Personal data masked before any model, log or trace sees it (pure logic, no store).

- :class:`Masker` turns personal values into stable tokens (``<email:7f3a9c1e2b4d>``, an
  HMAC keyed by ``CODARA_MASK_KEY``) in declared fields (:meth:`~Masker.mask_value`,
  :meth:`~Masker.mask_record`) and finds them in free text (:meth:`~Masker.mask_text`):
  emails, IBANs (mod 97), card numbers (Luhn) and phone numbers (``phonenumbers``).
- :func:`redact` is the one function every export path passes: it masks every string in
  any JSON-like structure, idempotently.
- :class:`VaultCipher` seals the originals per token (AES-256-GCM, ``CODARA_VAULT_KEY``) so
  that erasing a subject is deleting rows, and the audit chain, which holds tokens only,
  stays whole.

The detectors and the cipher import their libraries when first made, so ``import
codara.privacy`` stays cheap.
"""

from codara.privacy._keys import MASK_KEY_ENV, VAULT_KEY_ENV, secret_from_env, vault_key_from_env
from codara.privacy._masker import (
    KINDS,
    TOKEN,
    Finding,
    KnownValues,
    Masked,
    Masker,
    is_token,
    kind_of,
)
from codara.privacy._redact import known_patterns, redact, redact_found
from codara.privacy._vault import VaultCipher, VaultEntryAlteredError, VaultKeyError

__all__ = [
    "KINDS",
    "MASK_KEY_ENV",
    "TOKEN",
    "VAULT_KEY_ENV",
    "Finding",
    "KnownValues",
    "Masked",
    "Masker",
    "VaultCipher",
    "VaultEntryAlteredError",
    "VaultKeyError",
    "is_token",
    "kind_of",
    "known_patterns",
    "redact",
    "redact_found",
    "secret_from_env",
    "vault_key_from_env",
]
