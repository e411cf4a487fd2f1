"""redact(): the one walk every export path passes masks every string in any structure,
changes nothing twice, bounds its work and never raises on odd input."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from codara.privacy import TOKEN, Masker, redact
from codara.privacy._redact import DEEP

CARD = "4111 1111 1111 1111"
EMAIL = "Alice.Smith+bank@Example.COM"
PHONE = "+44 20 7946 0958"
IBAN = "DE89 3704 0044 0532 0130 00"


@pytest.fixture(scope="module")
def masker() -> Masker:
    return Masker(bytes(range(32)), max_scan=4096)


def _printed(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return type(value).__name__


def _shown(value: Any) -> str:
    """What an export writes: JSON, anything else by its str."""
    return json.dumps(value, ensure_ascii=False, default=_printed)


def test_redact_masks_strings_at_any_depth_keys_included(masker: Masker) -> None:
    span: dict[str, Any] = {
        "attributes": {
            "input": [f"my card is {CARD}", ("tuple", f"mail {EMAIL}")],
            EMAIL: {"phone": PHONE},
            "count": 3,
            "ok": True,
            "none": None,
        }
    }
    out = redact(span, masker)
    shown = _shown(out)
    for canary in (CARD, EMAIL, PHONE):
        assert canary not in shown
    attributes = out["attributes"]
    assert isinstance(attributes["input"][1], tuple)  # shapes are kept
    assert attributes["count"] == 3
    assert attributes["ok"] is True
    assert attributes["none"] is None
    assert attributes[masker.token("email", EMAIL)] == {"phone": masker.token("phone", PHONE)}
    assert span["attributes"]["input"][0] == f"my card is {CARD}"  # the input is not changed


def test_a_json_string_inside_a_field_is_parsed_masked_and_written_back(masker: Masker) -> None:
    inner = {"ticket": {"text": f"refund to {IBAN} please", "from": EMAIL.lower()}}
    row = {"payload": json.dumps(inner, indent=2), "plain": json.dumps({"a": [1, 2]})}
    out = redact(row, masker)
    assert IBAN not in out["payload"]
    assert EMAIL.lower() not in out["payload"]
    assert json.loads(out["payload"]) == {
        "ticket": {
            "text": f"refund to {masker.token('iban', IBAN)} please",
            "from": masker.token("email", EMAIL),
        }
    }
    assert out["plain"] == row["plain"]  # nothing personal: left byte for byte
    # escaped in JSON, an address is still found (the text never shows a literal "@")
    escaped = '{"to": "alice\\u0040example.com"}'
    assert "alice" not in redact(escaped, masker)


def test_numbers_that_are_card_or_phone_numbers_are_masked(masker: Masker) -> None:
    numbers = {"card": 4111111111111111, "amount": 1500, "float": 4111111111111111.0,
               "dec": Decimal("4111111111111111"), "ratio": 0.5, "big": 10**80}  # fmt: skip
    out = redact(numbers, masker)
    token = masker.token("card", CARD)
    assert out["card"] == token
    assert out["float"] == token
    assert out["dec"] == token
    assert out["amount"] == 1500
    assert out["ratio"] == 0.5
    assert out["big"] == 10**80


def test_redact_is_idempotent_and_never_remasks_a_token(masker: Masker) -> None:
    value = {"a": f"{EMAIL} {CARD} {PHONE} {IBAN}", "b": json.dumps([f"x {CARD}"])}
    once = redact(value, masker)
    assert redact(once, masker) == once
    tokens = TOKEN.findall(once["a"])
    assert len(tokens) == 4
    assert masker.mask_text(once["a"]).found == ()


def test_two_keys_masked_to_one_token_both_keep_their_values(masker: Masker) -> None:
    out = redact({"A@example.com": 1, "a@example.com": 2}, masker)
    token = masker.token("email", "a@example.com")
    assert out == {token: 1, f"{token}#2": 2}


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class _Holder:
    def __str__(self) -> str:
        return f"Holder(card={CARD})"


def test_odd_input_never_raises(masker: Masker) -> None:
    loop: dict[str, Any] = {"note": f"card {CARD}"}
    loop["self"] = loop
    deep: Any = f"card {CARD}"
    for _ in range(500):
        deep = [deep]
    odd = {
        "bytes": f"mail {EMAIL}".encode(),
        "plain bytes": b"\xff\xfe nothing",
        "set": {f"card {CARD}", "x"},
        "frozen": frozenset({1, 2}),
        "nan": float("nan"),
        "inf": float("inf"),
        "dnan": Decimal("NaN"),
        "surrogate": "\ud800 mail a@example.com \udfff",
        "nul": "\x00" * 10,
        "unprintable": _Unprintable(),
        "holder": _Holder(),
        "bad json": "[1, 2, 4111 1111 1111 1111",
        "deep json": "[" * 5000 + "]" * 5000,
        "loop": loop,
        "deep": deep,
        7: "an int key",
    }
    out = redact(odd, masker)
    shown = _shown(out)
    assert CARD not in shown
    assert EMAIL not in shown
    assert "a@example.com" not in shown
    assert out["plain bytes"] == b"\xff\xfe nothing"
    assert out["holder"] == f"Holder(card={masker.token('card', CARD)})"
    assert isinstance(out["unprintable"], _Unprintable)
    assert out["frozen"] == frozenset({1, 2})
    assert out[7] == "an int key"
    assert DEEP in shown  # the cycle and the deep list were cut off, not followed forever
    assert redact(42, masker) == 42
    assert redact(None, masker) is None
    assert masker.mask_text(None).value is None  # type: ignore[arg-type]


def test_a_huge_string_is_scanned_up_to_max_scan_and_the_rest_hidden(masker: Masker) -> None:
    head = f"card {CARD} " + "word " * 1000  # about 5 KB: past the 4 KB bound
    tail = f"mail {EMAIL} " * 50
    masked = masker.mask_text(head + tail)
    text = masked.value
    assert CARD not in text
    assert EMAIL not in text
    assert text.startswith(f"card {masker.token('card', CARD)} word")
    hidden = [f for f in masked.found if f.kind == "text"]
    assert len(hidden) == 1
    assert text.endswith(hidden[0].token)
    assert hidden[0].original.endswith(tail)  # the original is kept, for the vault
    assert len(text) < 4096 + 100
    assert masker.mask_text(text).value == text  # and masking it again changes nothing


def test_the_cut_never_splits_a_number_between_shown_and_hidden(masker: Masker) -> None:
    filler = "x" * (4096 - 10)
    text = f"{filler} {CARD} end"  # the bound falls inside the card number
    out = masker.mask_text(text).value
    assert "4111" not in out
    assert "1111" not in out
    assert out.startswith(filler)
