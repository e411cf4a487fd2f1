"""Finding personal values in free text: emails, IBANs, card numbers, phone numbers.

Each detector proposes candidates with a bounded regular expression and keeps only those a
kept library validates:

- an IBAN must pass ``stdnum.iban`` (the country's length and BBAN structure, then ISO 7064
  mod 97-10; not the national check digits some countries add, since an IBAN failing only
  those is still someone's account number);
- a card number ``stdnum.luhn``: 13 to 19 digits, in groups separated by single spaces or
  dashes, the first group of at least four digits;
- a phone number must be one ``phonenumbers.PhoneNumberMatcher`` finds *valid* for the
  region (its leniency checks keep dates, times and national numbers without their leading
  0 out), tried clause by clause and on numbers glued to another (see ``_phones``);
- emails have no checksum: a regular expression of the address's shape (a local part of at
  most 64 characters, a dotted domain) is what Presidio and every other detector use too.

The detectors run in that order over what the previous ones left, so the digits of an IBAN
never become a card or a phone number, and those of a card never a phone number. Names and
postal addresses are *not* found in free text: that needs a language model (a spaCy NER
model, which this machine cannot download), so they are masked only where a field declares
them (and, in a record, wherever that declared value appears again; see
:meth:`~codara.privacy.Masker.mask_record`).

This module imports ``phonenumbers`` and ``stdnum`` (about 300 ms together), so
:class:`~codara.privacy.Masker` imports it when it is first made, not at ``import codara``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn

__all__ = ["Detector", "Hit"]

# The local part is bounded (RFC 5321's 64) and may not start inside a word, so a long run of
# letters is tried from one place only: the scan stays linear on hostile text.
_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w%+\-][\w.%+'\-]{0,63}@(?:[^\W_][\w\-]{0,62}\.){1,8}[^\W\d_]{2,63}"
)
# Two letters, two check digits, then 11 to 30 letters or digits, optionally grouped by single
# spaces or dashes; the exact length is settled by validation (see _ibans).
_IBAN = re.compile(r"(?<![^\W_])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,30}")
# Runs of digit groups separated by single spaces or dashes; cards are windows of whole groups.
_DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:[ \-]\d+)*")
_GROUP = re.compile(r"\d+")
_ANY_DIGIT = re.compile(r"\d")
# Runs of two or more number-like words (for numbers beside another one: _phones_glued).
_NUMBER_WORD = re.compile(r"[+(]?\d[\d().\-]*")
_NUMBER_RUN = re.compile(r"[+(]?\d[\d().\-]*(?:[ \t]+[+(]?\d[\d().\-]*)+")
_GLUED_WORDS = 7  # "+33 6 12 34 56 78" is six
_PHONE_MIN, _PHONE_MAX = 7, 17  # E.164 has at most 15 digits; "0044 (0)20 ..." adds two
_PHONE_RUN = re.compile(r"\d[\d \-.()]*")
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s)|\n")

_IBAN_MIN, _IBAN_MAX = 15, 34
_CARD_MIN, _CARD_MAX = 13, 19
_CARD_GROUP = 4  # every card layout (4-4-4-4, 4-6-5, 4-4-4-4-3) opens with four digits


@dataclass(frozen=True, slots=True)
class Hit:
    """One personal value found in a text: where it is, its kind and its normal form (what
    the token is computed from, so two spellings of one value give one token)."""

    start: int
    end: int
    kind: str
    normal: str


def _ascii_digits(text: str) -> str:
    """Digits in any script as ASCII (``\\d`` matches Arabic-Indic or full-width digits too,
    and a card written in them is still a card)."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else str(unicodedata.decimal(c, c)) for c in text)


class Detector:
    """The validating detectors for one phone region (the region a national-format number
    such as ``07911 123456`` is read in; international ``+CC`` numbers are found anywhere)."""

    def __init__(self, region: str) -> None:
        self.region = region

    def find(self, text: str) -> list[Hit]:
        """Every personal value in ``text``, in order, none overlapping."""
        hits: list[Hit] = []
        spans = [(0, len(text))]
        detectors = [self._emails] if "@" in text else []
        if _ANY_DIGIT.search(text):  # most ticket text has none: skip three scans
            detectors += [self._ibans, self._cards, self._phones]
        for detector in detectors:
            rest: list[tuple[int, int]] = []
            for start, end in spans:
                at = start
                for hit in detector(text, start, end):
                    hits.append(hit)
                    if hit.start > at:
                        rest.append((at, hit.start))
                    at = hit.end
                if at < end:
                    rest.append((at, end))
            spans = rest
        hits.sort(key=lambda h: h.start)
        return hits

    # -- normal forms (also used for declared fields) -------------------------------------

    def phone_normal(self, value: str) -> str:
        """E.164 (``+447911123456``) when the number parses in the region; otherwise its
        digits (and a leading ``+``), so spacing and punctuation still do not matter."""
        try:
            number = phonenumbers.parse(value, self.region)
        except phonenumbers.NumberParseException:
            digits = "".join(c for c in _ascii_digits(value) if c.isdigit())
            return ("+" if value.strip().startswith("+") else "") + digits
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    # -- detectors: each yields hits inside text[start:end], in order ---------------------

    def _emails(self, text: str, start: int, end: int) -> Iterator[Hit]:
        for m in _EMAIL.finditer(text, start, end):
            yield Hit(m.start(), m.end(), "email", m.group().lower())

    def _ibans(self, text: str, start: int, end: int) -> Iterator[Hit]:
        at = start
        while (m := _IBAN.search(text, at, end)) is not None:
            hit = _longest_iban(m.group(), m.start())
            if hit is None:
                # An IBAN may start inside a candidate that failed ("ref AB12 GB82 WEST ...").
                at = _next_group(text, m.start(), m.end())
                continue
            yield hit
            at = hit.end

    def _cards(self, text: str, start: int, end: int) -> Iterator[Hit]:
        for run in _DIGIT_RUN.finditer(text, start, end):
            groups = list(_GROUP.finditer(run.group()))
            offset = run.start()
            i = 0
            while i < len(groups):
                found = None
                if len(groups[i].group()) < _CARD_GROUP:
                    i += 1  # "00 4222222222222": no card starts with a short group
                    continue
                digits = ""
                windows: list[tuple[int, str]] = []
                for j in range(i, len(groups)):
                    digits += groups[j].group()
                    if len(digits) > _CARD_MAX:
                        break
                    if len(digits) >= _CARD_MIN:
                        windows.append((j, digits))
                for j, number in reversed(windows):  # the longest valid window wins
                    ascii_number = _ascii_digits(number)
                    if luhn.is_valid(ascii_number):
                        found = Hit(
                            offset + groups[i].start(),
                            offset + groups[j].end(),
                            "card",
                            ascii_number,
                        )
                        break
                if found is None:
                    i += 1
                    continue
                yield found
                i = j + 1

    def _phones(self, text: str, start: int, end: int) -> Iterator[Hit]:
        # The matcher takes the longest number-like run as one candidate, punctuation and
        # all ("+33 6 12 34 56 78. 12/01/2026"), and drops it whole when it is not valid; no
        # phone number holds a punctuation mark followed by a space, so split there first.
        at = start
        for stop in [*(m.start() for m in _CLAUSE_END.finditer(text, start, end)), end]:
            piece = text[at:stop]
            if _may_hold_phone(piece):  # the matcher costs far more than this test
                yield from self._phones_in(piece, at)
            at = stop

    def _phones_in(self, piece: str, offset: int) -> Iterator[Hit]:
        at = 0
        for m in self._match(piece):
            yield from self._phones_glued(piece[at : m.start], offset + at)
            normal = phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164)
            yield Hit(offset + m.start, offset + m.end, "phone", normal)
            at = m.end
        yield from self._phones_glued(piece[at:], offset + at)

    def _match(self, text: str) -> Iterator[phonenumbers.PhoneNumberMatch]:
        yield from phonenumbers.PhoneNumberMatcher(
            text, self.region, leniency=phonenumbers.Leniency.VALID
        )

    def _phones_glued(self, gap: str, offset: int) -> Iterator[Hit]:
        """Numbers the matcher missed because another number stands beside them: it reads
        "ref 20261201 07911 123456" (or two numbers two spaces apart) as one candidate and
        drops it whole. Each run of number-like words it did not match is parsed again in
        windows of whole words, longest first from each word, keeping valid numbers only.
        Words holding ``/`` or ``:`` (dates, times) never take part."""
        for run in _NUMBER_RUN.finditer(gap):
            words = list(_NUMBER_WORD.finditer(run.group()))
            i = 0
            while i < len(words):
                hit = None
                for j in range(min(len(words), i + _GLUED_WORDS) - 1, i - 1, -1):
                    begin, end = words[i].start(), words[j].end()
                    window = run.group()[begin:end]
                    if not _PHONE_MIN <= sum(c.isdigit() for c in window) <= _PHONE_MAX:
                        continue
                    # The matcher again, on the window alone: its leniency checks (a national
                    # number needs its leading 0, no date shapes) apply here too.
                    match = next(self._match(window), None)
                    if match is not None and match.end - match.start == len(window):
                        normal = phonenumbers.format_number(
                            match.number, phonenumbers.PhoneNumberFormat.E164
                        )
                        at = offset + run.start()
                        hit = Hit(at + begin, at + end, "phone", normal)
                        break
                if hit is None:
                    i += 1
                    continue
                yield hit
                i = j + 1


def _may_hold_phone(text: str) -> bool:
    """Whether ``text`` has a run of at least seven digits (spaces, dashes, dots and brackets
    between them): no valid phone number is shorter (Niue's ``+683 4002`` is seven), and
    the amounts, dates and times of ticket text mostly are, so the matcher is spared them."""
    return any(
        sum(c.isdigit() for c in run.group()) >= _PHONE_MIN for run in _PHONE_RUN.finditer(text)
    )


def _longest_iban(candidate: str, offset: int) -> Hit | None:
    """The longest prefix of ``candidate`` that is a valid IBAN, as a hit, or None.

    The candidate regex is greedy ("GB82 WEST 1234 5698 7654 32 is mine" takes "32 is"), so
    prefixes are tried from the longest; a cheap mod-97 test over the prefix, kept running as
    characters are added, spares ``stdnum`` all but the plausible lengths.
    """
    positions = [k for k, c in enumerate(candidate) if c.isalnum()]
    compact = _ascii_digits("".join(candidate[k] for k in positions)).upper()
    head = int(_as_digits(compact[:4]))  # country and check digits, moved to the end
    head_len = len(_as_digits(compact[:4]))
    remainders: list[int] = []
    rem = 0
    for c in compact[4:]:
        for d in _as_digits(c):
            rem = (rem * 10 + int(d)) % 97
        remainders.append(rem)
    for n in range(min(len(compact), _IBAN_MAX), _IBAN_MIN - 1, -1):
        if (remainders[n - 5] * pow(10, head_len, 97) + head) % 97 != 1:
            continue
        if iban.is_valid(compact[:n], check_country=False):
            return Hit(offset, offset + positions[n - 1] + 1, "iban", compact[:n])
    return None


def _as_digits(text: str) -> str:
    """ISO 7064's letters-as-numbers (A=10 ... Z=35), as the mod-97 check reads them."""
    return "".join(str(int(c, 36)) for c in text)


def _next_group(text: str, start: int, end: int) -> int:
    """Where the next group of a failed IBAN candidate starts (after a space or dash), or
    the candidate's end: a new IBAN can only begin at a word boundary."""
    for k in range(start + 1, end):
        if text[k - 1] in " -":
            return k
    return end
