"""The inbox: BANKING77 messages split into a part that fits the classifier and a disjoint
part that the demo triages."""

from __future__ import annotations

import csv
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

DATA_DIR = Path(__file__).parent / "data"
DATASET = DATA_DIR / "banking77_train.csv"
CUSTOMERS = 200


def customer_of(text: str) -> int:
    """The demo's customer for a message: fixed by the text's hash."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % CUSTOMERS + 1


class Ticket(BaseModel):
    """A customer message. ``label`` (or ``category``) is the reviewer's truth, if known."""

    text: str = Field(min_length=1, max_length=5000)
    id: str | None = None
    label: str | None = Field(default=None, validation_alias=AliasChoices("label", "category"))
    customer_id: int | None = None
    received_at: str | None = None

    def customer(self) -> int:
        """The customer this ticket is from: given, or fixed by the text's hash."""
        if self.customer_id is not None:
            return self.customer_id
        return customer_of(self.text)


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Split:
    fit: list[Example]
    """Examples the classifier learns from."""
    tune: list[Example]
    """Examples that set the confidence threshold (never learned from)."""
    inbox: list[Example]
    """The tickets the demo triages (never seen by the classifier)."""


def load_examples(path: Path = DATASET) -> list[Example]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Example(r["text"].strip(), r["category"]) for r in csv.DictReader(handle)]


def split(
    examples: Iterable[Example],
    *,
    inbox_size: int,
    fit_per_intent: int | Literal["all"],
    tune_per_intent: int,
    seed: int = 77,
) -> Split:
    """Deterministic split. The inbox is a random sample of the whole set; fit and tune come
    only from what is left: ``tune_per_intent`` per intent to tune, then at most
    ``fit_per_intent`` per intent (``"all"``: all the rest) to fit."""
    rows = list(dict.fromkeys(examples))  # exact duplicates would leak across parts
    rng = random.Random(seed)  # noqa: S311 - a reproducible split
    rng.shuffle(rows)
    if not 0 < inbox_size < len(rows):
        raise ValueError(f"inbox size must be between 1 and {len(rows) - 1}, not {inbox_size}")
    inbox, rest = rows[:inbox_size], rows[inbox_size:]
    inbox_texts = {e.text.lower() for e in inbox}
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in rest:
        if e.text.lower() not in inbox_texts:
            by_label[e.label].append(e)
    fit: list[Example] = []
    tune: list[Example] = []
    for label in sorted(by_label):
        items = by_label[label]
        tune.extend(items[:tune_per_intent])
        end = None if fit_per_intent == "all" else tune_per_intent + fit_per_intent
        fit.extend(items[tune_per_intent:end])
    return Split(fit=fit, tune=tune, inbox=inbox)


def tickets(inbox: Iterable[Example]) -> Iterator[Ticket]:
    for n, e in enumerate(inbox, start=1):
        yield Ticket(id=f"T{n:05d}", text=e.text, label=e.label)
