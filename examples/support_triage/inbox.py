"""The inbox as the demo writes it: the day's tickets in a CSV file under the ``inbox``
source's root, read by the ``intake`` workflow through that source.

Like a real export it is not clean. Among the BANKING77 messages are rows that must not
reach the triage, each of which ends in quarantine with its reason:

=====================  ==========================================  =====================
fault                  what the row holds                           rule
=====================  ==========================================  =====================
empty text             ``""`` or only spaces                        ``schema.text``
oversized text         more than 5,000 characters                   ``schema.text``
bad encoding           bytes that are not UTF-8                     ``encoding``
ragged row             a field too many                             ``ragged_row``
no customer            an empty customer id                         ``schema.customer_id``
unknown customer       a customer id the CRM does not know          ``unknown_customer``
duplicate ticket id    the id of an earlier ticket, another text    ``duplicate_id``
=====================  ==========================================  =====================

The first five are refused by the source (its connector and ``records.InboxTicket``); the
unknown customer is found by the triage when the CRM has no such record, the duplicate by
the intake (both with ``ctx.quarantine``).

Some customers also wrote personal data into their message (an e-mail address, an IBAN, a
card number, a phone number): the source masks them before any model, journal or console
sees them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .crm import _gb_iban, _pan
from .data import CUSTOMERS, Example, customer_of

COLUMNS = ("id", "customer_id", "received_at", "text", "label")


@dataclass
class Manifest:
    """What :func:`write_inbox` wrote: the file, its rows, and the faults on purpose."""

    path: Path
    rows: int = 0
    tickets: int = 0
    """Rows that are well-formed tickets (the rest are the faults below)."""
    faults: dict[str, int] = field(default_factory=dict)
    """Quarantine rule -> how many rows of the file must end there with it."""
    personal: list[str] = field(default_factory=list)
    """The personal values written into messages (canaries: none may appear unmasked)."""


def _personal(rng: random.Random, n: int) -> tuple[str, str]:
    """A sentence with one personal value, and the value."""
    kind = n % 4
    if kind == 0:
        value = f"mia.canary{n}@mail.example.org"
        return f" You can reach me at {value}.", value
    if kind == 1:
        value = _gb_iban(rng)
        return f" My IBAN is {value}.", value
    if kind == 2:
        value = _pan(rng)
        return f" The card is {value[:4]} {value[4:8]} {value[8:12]} {value[12:]}.", value
    value = f"+44 20 7946 0{rng.randint(100, 999)}"
    return f" Please call me on {value}.", value


def write_inbox(
    root: Path,
    inbox: Iterable[Example],
    *,
    seed: int = 77,
    now: dt.datetime | None = None,
    name: str = "inbox.csv",
    personal_every: int = 47,
) -> Manifest:
    """Write the tickets of ``inbox`` (and the faults) to ``root/name``; replace what was
    there."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("*.csv"):
        old.unlink()
    manifest = Manifest(path=root / name)
    examples = list(inbox)
    out = io.BytesIO()

    def line(*values: object) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(values)
        out.write(text.getvalue().encode("utf-8"))
        manifest.rows += 1

    def when() -> str:
        return (now - dt.timedelta(minutes=rng.randint(1, 48 * 60))).isoformat()

    def fault(rule: str) -> None:
        manifest.faults[rule] = manifest.faults.get(rule, 0) + 1

    line(*COLUMNS)
    manifest.rows = 0
    every = max(1, len(examples) // 12)  # spread the faults through the file
    for n, example in enumerate(examples, start=1):
        text = example.text
        if n % personal_every == 0:  # about 2% of the messages carry a personal value
            sentence, value = _personal(rng, n)
            text += sentence
            manifest.personal.append(value)
        ticket_id = f"T{n:05d}"
        line(ticket_id, customer_of(text), when(), text, example.label)
        manifest.tickets += 1
        if n % every:
            continue
        k = n // every
        if k == 1:
            line(f"E{n:05d}", 17, when(), "", "")
            line(f"E{n:05d}b", 18, when(), "   ", "")
            fault("schema.text")
            fault("schema.text")
        elif k == 2:
            line(f"E{n:05d}", 19, when(), "Please help. " * 500, "")
            fault("schema.text")
        elif k == 3:
            text_bytes = f"E{n:05d},20,{when()},Caf\xe9 charged me twice\n".encode("latin-1")
            out.write(text_bytes)
            manifest.rows += 1
            fault("encoding")
        elif k == 4:
            line(f"E{n:05d}", 21, when(), "I was charged twice", "", "extra field")
            fault("ragged_row")
        elif k == 5:
            line(f"E{n:05d}", "", when(), "Where is my new card?", "card_arrival")
            fault("schema.customer_id")
        elif k in (6, 7):
            line(f"E{n:05d}", CUSTOMERS + 800 + k, when(), "Why has my transfer not arrived yet?",
                 "transfer_not_received_by_recipient")  # fmt: skip
            fault("unknown_customer")
        elif k in (8, 9):
            line(ticket_id, customer_of(text), when(), "Can I get a second card for my partner?",
                 "getting_spare_card")  # fmt: skip
            fault("duplicate_id")
    manifest.path.write_bytes(out.getvalue())
    return manifest
