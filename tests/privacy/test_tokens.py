"""Tokens: one per value whatever its spelling, stable across processes, keyed by the secret;
and the secrets themselves: read from the environment, weak ones refused without echoing."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys

import pytest

from codara.errors import ConfigError
from codara.privacy import (
    KINDS,
    TOKEN,
    Finding,
    Masker,
    is_token,
    secret_from_env,
    vault_key_from_env,
)

SECRET = bytes(range(32))
FULL_WIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


@pytest.fixture
def masker() -> Masker:
    return Masker(SECRET)


@pytest.mark.parametrize(
    ("kind", "spellings"),
    [
        ("email", ["Alice.Smith+Bank@Example.COM", " alice.smith+bank@example.com "]),
        ("iban", ["GB82 WEST 1234 5698 7654 32", "gb82west12345698765432",
                  "GB82-WEST-1234-5698-7654-32"]),
        ("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                  "4111 1111 1111 1111".translate(FULL_WIDTH)]),
        ("phone", ["07911 123456", "+44 7911 123456", "+447911123456", "(07911) 123-456",
                   "0044 7911 123456"]),
        ("name", ["Alice  Smith", "alice smith", " ALICE\tSMITH "]),
        ("address", ["1 High Street,  London", "1 high street, LONDON"]),
    ],
)  # fmt: skip
def test_two_spellings_of_one_value_give_one_token(
    masker: Masker, kind: str, spellings: list[str]
) -> None:
    tokens = {masker.token(kind, s) for s in spellings}
    assert len(tokens) == 1
    (token,) = tokens
    assert TOKEN.fullmatch(token)
    assert token.startswith(f"<{kind}:")


def test_a_token_found_in_text_is_the_token_of_the_declared_field(masker: Masker) -> None:
    masked = masker.mask_text("write to ALICE@example.com or call +44 7911 123456")
    assert [f.token for f in masked.found] == [
        masker.token("email", "alice@example.com"),
        masker.token("phone", "07911 123456"),
    ]


def test_tokens_differ_by_value_kind_and_secret(masker: Masker) -> None:
    assert masker.token("email", "a@example.com") != masker.token("email", "b@example.com")
    assert masker.token("name", "Alice") != masker.token("address", "Alice")
    other = Masker(bytes(range(1, 33)))
    assert other.token("email", "a@example.com") != masker.token("email", "a@example.com")


def test_tokens_are_stable_across_processes_for_one_secret(masker: Masker) -> None:
    code = (
        "from codara.privacy import Masker; "
        "print(Masker(bytes(range(32))).token('iban', 'GB82 WEST 1234 5698 7654 32'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == masker.token("iban", "GB82WEST12345698765432")


def test_a_token_holds_nothing_of_the_value(masker: Masker) -> None:
    token = masker.token("card", "4111 1111 1111 1111")
    assert "4111" not in token
    assert "1111" not in token
    assert len(token) == len("<card:>") + 12
    assert masker.token("card", token) == token  # a token is never tokenised again
    assert is_token(token)
    assert not is_token(f" {token}")
    assert not is_token(123)


def test_a_finding_never_shows_its_original_in_repr(masker: Masker) -> None:
    (finding,) = masker.mask_text("mail alice@example.com").found
    assert isinstance(finding, Finding)
    assert finding.original == "alice@example.com"
    assert "alice" not in repr(finding)
    assert "\\x00\\x01" not in repr(masker)
    assert "secret" not in repr(masker)


def test_mask_value_tokenises_the_whole_declared_value(masker: Masker) -> None:
    assert masker.mask_value("name", "Alice Smith").value == masker.token("name", "alice smith")
    emails = masker.mask_value("email", ["a@example.com", "b@example.com"])
    assert emails.value == [masker.token("email", "a@example.com"),
                            masker.token("email", "b@example.com")]  # fmt: skip
    assert [f.path for f in emails.found] == ["[0]", "[1]"]
    address = masker.mask_value("address", {"street": "1 High St", "city": "London"})
    assert is_token(address.value)
    assert address.value.startswith("<address:")
    assert masker.mask_value("phone", 447911123456).value.startswith("<phone:")
    for empty in (None, "", "  ", True):
        assert masker.mask_value("email", empty).value == empty
    text = masker.mask_value("text", "call 07911 123456 today")
    assert text.value == f"call {masker.token('phone', '07911 123456')} today"


def test_unknown_kinds_regions_and_field_paths_are_config_errors(masker: Masker) -> None:
    with pytest.raises(ConfigError, match="unknown personal data kind 'ssn'") as e:
        masker.token("ssn", "x")
    assert e.value.hint is not None
    assert all(k in e.value.hint for k in KINDS)
    with pytest.raises(ConfigError, match="unknown phone region 'UK'"):
        Masker(SECRET, region="UK")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Masker(b"short")
    with pytest.raises(ConfigError, match="not a kind of personal data"):
        masker.mask_record({}, {"customer.email": "mail"})
    for bad in ("", "customer..email", "items[0].iban", "a.[]"):
        with pytest.raises(ConfigError, match="is not a field path"):
            masker.mask_record({}, {bad: "email"})
    with pytest.raises(ConfigError, match="declared whole"):
        masker.mask_record({}, {"customer": "name", "customer.email": "email"})


# -- the secrets --------------------------------------------------------------------------------


def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def test_secret_from_env_reads_base64_in_either_alphabet_with_or_without_padding() -> None:
    key = secrets.token_bytes(32)
    assert secret_from_env({}) is None
    assert secret_from_env({"CODARA_MASK_KEY": "  "}) is None
    assert secret_from_env({"CODARA_MASK_KEY": _b64(key)}) == key
    assert secret_from_env({"CODARA_MASK_KEY": base64.b64encode(key).decode()}) == key
    long = secrets.token_bytes(64)
    assert secret_from_env({"CODARA_MASK_KEY": _b64(long)}) == long


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not base64 at all!", "is not base64"),
        (_b64(secrets.token_bytes(16)), "holds 16 bytes, at least 32"),
        (_b64(b"ab" * 16), "repeated pattern"),
        ("correct-horse-battery-staple-and-some-more-words-now", "passphrase"),
    ],
)
def test_weak_or_malformed_keys_are_refused_with_how_to_make_one(value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as e:
        secret_from_env({"CODARA_MASK_KEY": value})
    assert e.value.hint is not None
    assert "secrets.token_urlsafe(32)" in e.value.hint
    assert value not in str(e.value)  # the value is never echoed


def test_the_vault_key_is_exactly_32_bytes_and_not_the_mask_key() -> None:
    key = _b64(secrets.token_bytes(32))
    assert vault_key_from_env({}) is None
    assert vault_key_from_env({"CODARA_VAULT_KEY": key}) is not None
    with pytest.raises(ConfigError, match="exactly 32"):
        vault_key_from_env({"CODARA_VAULT_KEY": _b64(secrets.token_bytes(48))})
    with pytest.raises(ConfigError, match="same key as CODARA_MASK_KEY"):
        vault_key_from_env({"CODARA_VAULT_KEY": key, "CODARA_MASK_KEY": key})
