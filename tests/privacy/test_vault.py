"""The vault's cipher: originals sealed per token, opened only with the key and the token
they were sealed for; a wrong key and altered bytes are told apart, clearly."""

from __future__ import annotations

import secrets

import pytest

from codara.errors import ConfigError, StoreError
from codara.privacy import Masker, VaultCipher, VaultEntryAlteredError, VaultKeyError

ORIGINAL = "GB82 WEST 1234 5698 7654 32"


@pytest.fixture
def cipher() -> VaultCipher:
    return VaultCipher(secrets.token_bytes(32))


@pytest.fixture
def token() -> str:
    return Masker(secrets.token_bytes(32)).token("iban", ORIGINAL)


def test_seal_then_open_gives_back_the_original(cipher: VaultCipher, token: str) -> None:
    sealed = cipher.seal(token, ORIGINAL)
    assert ORIGINAL.encode() not in sealed
    assert b"WEST" not in sealed
    assert cipher.open(token, sealed) == ORIGINAL
    odd = "zoë \ud800 \x00 " + "x" * 10_000
    assert cipher.open(token, cipher.seal(token, odd)) == odd


def test_each_seal_uses_a_fresh_nonce(cipher: VaultCipher, token: str) -> None:
    assert cipher.seal(token, ORIGINAL) != cipher.seal(token, ORIGINAL)


def test_a_wrong_key_is_a_clear_config_error(cipher: VaultCipher, token: str) -> None:
    sealed = cipher.seal(token, ORIGINAL)
    other = VaultCipher(secrets.token_bytes(32))
    with pytest.raises(VaultKeyError, match="sealed under key") as e:
        other.open(token, sealed)
    assert isinstance(e.value, ConfigError)
    assert e.value.hint is not None
    assert "CODARA_VAULT_KEY" in e.value.hint
    assert ORIGINAL not in str(e.value)


@pytest.mark.parametrize("where", [1 + 4 + 12, -1, -20])
def test_altered_ciphertext_is_refused(cipher: VaultCipher, token: str, where: int) -> None:
    sealed = bytearray(cipher.seal(token, ORIGINAL))
    sealed[where] ^= 0x01
    with pytest.raises(VaultEntryAlteredError, match="fails its integrity check") as e:
        cipher.open(token, bytes(sealed))
    assert isinstance(e.value, StoreError)
    assert e.value.non_retryable


def test_an_entry_moved_to_another_token_does_not_open(cipher: VaultCipher, token: str) -> None:
    sealed = cipher.seal(token, ORIGINAL)
    with pytest.raises(VaultEntryAlteredError, match="belongs to another token"):
        cipher.open("<iban:000000000000>", sealed)


@pytest.mark.parametrize("sealed", [b"", b"\x01", b"\x02" + bytes(40), bytes(16)])
def test_bytes_that_are_no_entry_are_refused(cipher: VaultCipher, sealed: bytes) -> None:
    with pytest.raises(VaultEntryAlteredError, match="not a sealed entry"):
        cipher.open("<iban:000000000000>", sealed)


def test_a_vault_key_must_be_32_bytes_and_is_never_shown() -> None:
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        VaultCipher(b"short")
    key = secrets.token_bytes(32)
    assert key.hex() not in repr(VaultCipher(key))
