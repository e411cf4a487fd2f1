"""Seeded personal values (canaries) are found wherever they hide, and look-alikes are not.

The surrounding text is real: BANKING77 customer messages (CC BY 4.0, Casanueva et al. 2020,
/work/shared/data/banking77, read from the shared folder and not vendored), so that order
numbers, amounts and dates that customers really write are part of what must *not* become
phone or card numbers.
"""

from __future__ import annotations

import csv
import json
import random
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codara.privacy import Masker, redact

IBANS = [
    "GB82 WEST 1234 5698 7654 32",
    "DE89 3704 0044 0532 0130 00",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91ABNA0417164300",
    "ES91-2100-0418-4502-0005-1332",
    "BE68 5390 0754 7034",
    "CH93 0076 2011 6238 5295 7",
    "it60 x054 2811 1010 0000 0123 456",  # typed in lower case: still an IBAN
]
CARDS = [
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "3782 822463 10005",  # American Express, 4-6-5
    "6011000990139424",
    "4222222222222",  # 13 digits
    "5105-1051-0510-5100",
]
PHONES = [
    "07911 123456",
    "+44 20 7946 0958",
    "020 7946 0123",
    "+44 (0)20 7946 0958",
    "0044 20 7946 0958",
    "+33 1 42 68 53 00",
    "+33 6 12 34 56 78",
    "+1 212-555-0123",
    "+1 (415) 555-2671",
]
EMAILS = [
    "Alice.Smith+bank@Example.COM",
    "JOHN_DOE@mail.example.co.uk",
    "o'brien.k@post.example.ie",
    "zoë+refund@bücher.example",
]
CANARIES = IBANS + CARDS + PHONES + EMAILS

LOOKALIKES = [
    "GB83 WEST 1234 5698 7654 32",  # wrong IBAN check digits
    "DE88 3704 0044 0532 0130 00",
    "4111 1111 1111 1112",  # 16 digits, Luhn-invalid
    "1234-5678-9012-3456",
    "2026-12-01",  # dates
    "12/01/2026",
    "01.12.2026 10:30",
    "order 123456789",
    "ref 20261201",
    "£1,500.00",
    "sort code 12-34-56",
    "account 12345678",
    "version 2.14.1",
]

BANKING77 = Path("/work/shared/data/banking77/train.csv")


def _tickets() -> list[str]:
    if not BANKING77.exists():
        pytest.skip(f"!!! {BANKING77} is missing: the shared data set is not on this machine")
    with BANKING77.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def masker() -> Masker:
    return Masker(secrets.token_bytes(32))


@pytest.mark.parametrize("canary", CANARIES)
def test_each_canary_is_found_in_a_ticket_and_replaced_by_its_token(
    masker: Masker, canary: str
) -> None:
    text = f"Hello, my details are {canary}. Why was I charged twice?"
    masked = masker.mask_text(text)
    assert canary not in masked.value
    assert [f.original for f in masked.found] == [canary]
    (finding,) = masked.found
    assert masked.value == f"Hello, my details are {finding.token}. Why was I charged twice?"
    assert finding.token.startswith(f"<{finding.kind}:")


def test_canaries_of_every_kind_found_together_in_one_text(masker: Masker) -> None:
    text = " / ".join(CANARIES)
    masked = masker.mask_text(text)
    assert sorted(f.original for f in masked.found) == sorted(CANARIES)
    kinds = {f.original: f.kind for f in masked.found}
    assert {kinds[c] for c in IBANS} == {"iban"}
    assert {kinds[c] for c in CARDS} == {"card"}
    assert {kinds[c] for c in PHONES} == {"phone"}
    assert {kinds[c] for c in EMAILS} == {"email"}


@pytest.mark.parametrize("lookalike", LOOKALIKES)
def test_invalid_lookalikes_and_dates_are_left_alone(masker: Masker, lookalike: str) -> None:
    text = f"About {lookalike}: please check."
    assert masker.mask_text(text).value == text


def test_an_iban_followed_by_words_is_cut_at_its_valid_length(masker: Masker) -> None:
    masked = masker.mask_text("send it to GB82 WEST 1234 5698 7654 32 is that right")
    assert [f.original for f in masked.found] == ["GB82 WEST 1234 5698 7654 32"]
    assert masked.value.endswith("> is that right")


def test_an_iban_after_a_failed_candidate_is_still_found(masker: Masker) -> None:
    masked = masker.mask_text("ref AB12 GB82 WEST 1234 5698 7654 32")
    assert [f.original for f in masked.found] == ["GB82 WEST 1234 5698 7654 32"]


def test_a_card_inside_a_longer_run_of_digit_groups_is_found(masker: Masker) -> None:
    masked = masker.mask_text("card 4111 1111 1111 1111 2026 expiry")
    assert [f.original for f in masked.found] == ["4111 1111 1111 1111"]
    assert masked.value.endswith("> 2026 expiry")


def test_a_us_national_number_needs_the_us_region(masker: Masker) -> None:
    text = "call (415) 555-2671"
    assert masker.mask_text(text).value == text  # not a British number
    us = Masker(secrets.token_bytes(32), region="US")
    assert [f.original for f in us.mask_text(text).found] == ["(415) 555-2671"]


def test_banking77_tickets_yield_no_false_positives(masker: Masker) -> None:
    """Ten thousand real customer messages, with their amounts, dates and '2 weeks', contain
    no email, IBAN, card or phone number: none may be 'found'."""
    found = [(f.kind, f.original) for t in _tickets() for f in masker.mask_text(t).found]
    assert found == []


def test_canaries_seeded_in_banking77_tickets_are_all_found_and_nothing_else(
    masker: Masker,
) -> None:
    tickets = _tickets()
    rng = random.Random(77)
    seeded: list[str] = []
    expected: list[list[str]] = []
    for i in range(600):
        ticket = rng.choice(tickets)
        if i % 3 == 0:
            seeded.append(ticket)
            expected.append([])
            continue
        picks = rng.sample(CANARIES, rng.randint(1, 3)) + rng.sample(LOOKALIKES, 1)
        rng.shuffle(picks)
        words = ticket.split()
        for pick in picks:
            words.insert(rng.randint(0, len(words)), pick + rng.choice(["", ",", ".", ";"]))
        seeded.append(" ".join(words))
        expected.append(sorted(p for p in picks if p in CANARIES))
    for text, want in zip(seeded, expected, strict=True):
        masked = masker.mask_text(text)
        assert sorted(f.original for f in masked.found) == want, text
        for canary in want:
            assert canary not in masked.value


def test_canaries_in_nested_records_declared_or_not(masker: Masker) -> None:
    record: dict[str, Any] = {
        "customer": {"name": "Alice  SMITH", "email": EMAILS[0], "phone": PHONES[0]},
        "items": [
            {"iban": IBANS[0], "memo": f"card {CARDS[0]} lost"},
            {"iban": IBANS[1], "memo": "nothing here"},
        ],
        "note": f"alice smith wrote from {EMAILS[1]} about {IBANS[2]}",
        "body": "Dear bank, this is ALICE SMITH again",
        "payload": json.dumps({"deep": [f"phone {PHONES[5]}"]}),
    }
    fields = {
        "customer.name": "name",
        "customer.email": "email",
        "customer.phone": "phone",
        "items[].iban": "iban",
        "body": "text",
    }
    masked = masker.mask_record(record, fields)
    dumped = json.dumps(masked.value)
    for canary in [EMAILS[0], EMAILS[1], PHONES[0], IBANS[0], IBANS[1], IBANS[2], CARDS[0]]:
        assert canary not in dumped
    assert PHONES[5] not in json.loads(masked.value["payload"])["deep"][0]
    assert "alice smith" not in dumped.lower()  # the declared name, found again in the note
    name = masker.token("name", "alice smith")
    assert masked.value["customer"]["name"] == name
    assert masked.value["note"].startswith(f"{name} wrote from <email:")
    assert masked.value["body"] == f"Dear bank, this is {name} again"  # declared free text too
    paths = {(f.path, f.kind) for f in masked.found}
    assert ("items[1].iban", "iban") in paths
    assert ("items[0].memo", "card") in paths
    assert record["customer"]["name"] == "Alice  SMITH"  # the input is not changed


# -- properties -------------------------------------------------------------------------------

_FILLER = st.text(st.characters(categories=["L", "Zs"], include_characters=".,!?'"), max_size=30)
_SEP = st.sampled_from([" ", ", ", ". ", "\n", " (", ") ", ": ", " - "])


@st.composite
def _seeded_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    canaries = draw(st.lists(st.sampled_from(CANARIES), max_size=3))
    parts = [draw(_FILLER)]
    for canary in canaries:
        parts += [draw(_SEP), canary, draw(_SEP), draw(_FILLER)]
    return "".join(parts), canaries


def _structures(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=3).map(tuple),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=3).map(json.dumps),
        ),
        max_leaves=12,
    )


_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.sampled_from(CANARIES + LOOKALIKES),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_structures(_JSON_LEAF))
def test_redact_is_idempotent_on_any_json_like_value(masker: Masker, value: Any) -> None:
    once = redact(value, masker)
    assert redact(once, masker) == once


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_canary_survives_redact_of_any_structure_holding_it(
    masker: Masker, data: st.DataObject
) -> None:
    seeded: list[str] = []

    def leaf(pair: tuple[str, list[str]]) -> str:
        seeded.extend(pair[1])
        return pair[0]

    value = data.draw(_structures(_seeded_text().map(leaf)))
    once = redact(value, masker)
    shown = json.dumps(once, ensure_ascii=False, default=str)
    for canary in set(seeded):
        assert canary not in shown
        assert json.dumps(canary)[1:-1] not in shown  # not even escaped inside a JSON string
    assert redact(once, masker) == once
