"""Stable tokens for personal values, and masking of texts, declared fields and records.

A token is ``<kind:hex12>``: the first 48 bits of HMAC-SHA256, keyed by the secret, over the
kind and the value's normal form. It is safe to show (without the key it says nothing about
the value, and with 48 bits two customers collide only among millions), stable across
processes for one key, and different under another. The normal form makes two spellings of
one value one token: an email lower-cased, an IBAN's letters and digits upper-cased, a card's
digits, a phone number in E.164 (read in the masker's region), a name or address with its
whitespace collapsed and its case folded (NFKC first).

Masking never re-masks a token (anything shaped ``<kind:hex12>`` is left as it is), and a text
is scanned until a pass finds nothing more, so masking what is masked changes nothing.

Work is bounded: a string is scanned up to ``max_scan`` characters (32 Ki by default;
tokens already in it do not count). Phone matching costs up to about 10 ms per KiB of
digit-heavy text, so one string costs at most a few hundred milliseconds, a ticket far less.
The rest of a longer string is not read: it is replaced by one ``<text:…>`` token of itself
(its original kept as a finding, like any other value), after backing the cut off to a space
so that no number or address is split between the part shown and the part hidden.
Conservative: a model loses the tail of a huge text, never a card number.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from codara.errors import ConfigError
from codara.privacy._keys import KEY_BYTES

if TYPE_CHECKING:
    from codara.privacy._detect import Detector

__all__ = ["KINDS", "TOKEN", "Finding", "KnownValues", "Masked", "Masker", "is_token", "kind_of"]

KINDS: Final = ("email", "phone", "iban", "card", "name", "address", "text")
"""The kinds a field may be declared as; ``text`` is free text, scanned by the detector."""

TOKEN: Final = re.compile(r"<(?:email|phone|iban|card|name|address|text):[0-9a-f]{12}>")
"""What a token looks like: never masked again."""

KnownValues = tuple[tuple[str, re.Pattern[str]], ...]
"""Declared values of a record to find again in its free text: (kind, pattern)."""

DEFAULT_MAX_SCAN: Final = 32 * 1024
_BACKOFF: Final = 256  # how far back a cut may move to fall between two words


def kind_of(token: str) -> str:
    """``card`` for ``<card:cf5b63d5ab01>`` (a token already checked by the caller)."""
    return token[1:].split(":", 1)[0]


def is_token(value: object) -> bool:
    """Whether ``value`` is exactly one token (a declared field already masked)."""
    return isinstance(value, str) and TOKEN.fullmatch(value) is not None


@dataclass(frozen=True)
class Finding:
    """One personal value masked: its kind, its token, where it was (a JSON path such as
    ``customer.email`` or ``items[0].note``; dictionary keys in it are masked too) and the
    original value, which is what the vault keeps and is left out of ``repr`` so that
    logging a finding does not log the value."""

    kind: str
    token: str
    original: str = field(repr=False)
    path: str = ""


@dataclass(frozen=True)
class Masked:
    """A masked copy (the input is never changed) and what was masked in it."""

    value: Any
    found: tuple[Finding, ...] = ()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(
            f"unknown personal data kind {kind!r}",
            hint=f"declare a field as one of: {', '.join(KINDS)}",
        )
    return kind


def _fold(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


class Masker:
    """Masks personal values with tokens keyed by ``secret`` (see
    :func:`~codara.privacy.secret_from_env`); ``region`` is where national phone numbers
    are read (``07911 123456`` is British under ``GB``)."""

    def __init__(
        self, secret: bytes, *, region: str = "GB", max_scan: int = DEFAULT_MAX_SCAN
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < KEY_BYTES:
            raise ConfigError(
                f"a masking secret must be at least {KEY_BYTES} bytes",
                hint="read it with codara.privacy.secret_from_env (CODARA_MASK_KEY)",
            )
        if max_scan < _BACKOFF * 4:
            raise ConfigError(f"max_scan must be at least {_BACKOFF * 4} characters")
        # Imported here, not at module level: phonenumbers and stdnum take about 300 ms to
        # import, which every CLI command would pay otherwise.
        import phonenumbers

        from codara.privacy._detect import Detector

        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"unknown phone region {region!r}",
                hint="use an ISO 3166 two-letter country code in capitals, such as GB or FR",
            )
        self._secret = secret
        self._detector: Detector = Detector(region)
        self.region = region
        self.max_scan = max_scan

    def __repr__(self) -> str:
        return f"Masker(region={self.region!r})"  # never the secret

    # -- tokens ----------------------------------------------------------------------------

    def token(self, kind: str, value: str) -> str:
        """The token of ``value`` as a ``kind``: the same for every spelling of one value."""
        _check_kind(kind)
        if is_token(value):
            return value
        return self._token(kind, self.normal(kind, value))

    def normal(self, kind: str, value: str) -> str:
        """The normal form a token is computed from (never shown: it is the value)."""
        if kind == "email":
            return value.strip().lower()
        if kind == "iban":
            from codara.privacy._detect import _ascii_digits

            return "".join(c for c in _ascii_digits(value) if c.isalnum()).upper()
        if kind == "card":
            from codara.privacy._detect import _ascii_digits

            return "".join(c for c in _ascii_digits(value) if c.isdigit())
        if kind == "phone":
            return self._detector.phone_normal(value)
        if kind in ("name", "address"):
            return _fold(value)
        return value

    def _token(self, kind: str, normal: str) -> str:
        message = kind.encode() + b"\0" + normal.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).hexdigest()
        return f"<{kind}:{digest[:12]}>"

    # -- the public masks ------------------------------------------------------------------

    def mask_text(self, text: str) -> Masked:
        """``text`` with every email, valid IBAN, Luhn-valid card number and valid phone
        number replaced by its token. Anything but a string is masked as :func:`redact`
        masks it, so odd input never raises."""
        found: list[Finding] = []
        if isinstance(text, str):
            return Masked(self.scan(text, "", found), tuple(found))
        from codara.privacy._redact import walk

        return Masked(walk(self, text, "", found, 0, ()), tuple(found))

    def mask_value(self, kind: str, value: Any) -> Masked:
        """A declared field's value: the whole value becomes one token (a list: one per
        element; an object, such as an address in parts: one for all of it). ``text`` is
        scanned instead, and ``None``, ``""`` and booleans are left as they are."""
        _check_kind(kind)
        found: list[Finding] = []
        return Masked(self.declared(kind, value, "", found, 0), tuple(found))

    def mask_record(self, record: Mapping[str, Any], fields: Mapping[str, str]) -> Masked:
        """A record with its declared fields tokenised and everything else scanned.

        ``fields`` maps dotted paths to kinds: ``customer.email``, ``items[].iban``. ``[]``
        says a list is expected; a list met anywhere on a path has the rest of the path
        applied to each element, with or without it. Keys cannot contain dots.

        Defence in depth: every string the paths do not declare (keys too) is scanned as
        free text, and a declared name or address that appears again in the record's other
        text (``"note": "Alice Smith called"``) is replaced by the same token, since no
        detector can find names on its own.
        """
        from codara.privacy._redact import known_values, parse_fields, walk_record

        tree = parse_fields(fields)
        known = known_values(record, tree)
        found: list[Finding] = []
        value = walk_record(self, record, tree, "", found, known)
        return Masked(value, tuple(found))

    # -- the machinery the walkers share ---------------------------------------------------

    def declared(
        self,
        kind: str,
        value: Any,
        path: str,
        found: list[Finding],
        depth: int,
        known: KnownValues = (),
    ) -> Any:
        """``value`` masked as a declared ``kind`` at ``path``, findings appended; a ``text``
        field is scanned, for ``known`` values of its record too."""
        from codara.privacy._redact import walk

        if kind == "text":
            return walk(self, value, path, found, depth, known)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, list | tuple):
            items = [self.declared(kind, v, f"{path}[{i}]", found, depth + 1)
                     for i, v in enumerate(value)]  # fmt: skip
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, str):
            original = value
        elif isinstance(value, Mapping):
            try:
                original = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
            except (TypeError, ValueError, RecursionError):
                original = repr(value)
        else:
            original = str(value)
        if not original.strip() or is_token(original):
            return value
        token = self.token(kind, original)
        found.append(Finding(kind, token, original, path))
        return token

    def scan(self, text: str, path: str, found: list[Finding], known: KnownValues = ()) -> str:
        """``text`` with what the detectors (and ``known``) find masked, to a fixed point."""
        head, tail = self._bound(text)
        out = head
        while True:
            before = len(found)
            out = self._pass(out, path, found, known)
            if len(found) == before:
                break
        if tail:
            token = self._token("text", tail)
            found.append(Finding("text", token, tail, path))
            out += token
        return out

    def _pass(self, text: str, path: str, found: list[Finding], known: KnownValues) -> str:
        parts: list[str] = []
        at = 0
        for m in TOKEN.finditer(text):
            parts.append(self._raw(text[at : m.start()], path, found, known))
            parts.append(m.group())
            at = m.end()
        parts.append(self._raw(text[at:], path, found, known))
        return "".join(parts)

    def _raw(self, raw: str, path: str, found: list[Finding], known: KnownValues) -> str:
        """One stretch of text between tokens, masked once."""
        if not raw:
            return raw
        for kind, pattern in known:

            def replace(m: re.Match[str], kind: str = kind) -> str:
                token = self.token(kind, m.group())
                found.append(Finding(kind, token, m.group(), path))
                return token

            raw = pattern.sub(replace, raw)
        out: list[str] = []
        at = 0
        for hit in self._detector.find(raw):
            token = self._token(hit.kind, hit.normal)
            found.append(Finding(hit.kind, token, raw[hit.start : hit.end], path))
            out.append(raw[at : hit.start])
            out.append(token)
            at = hit.end
        out.append(raw[at:])
        return "".join(out)

    def _bound(self, text: str) -> tuple[str, str]:
        """``text`` split where its untokenised characters reach ``max_scan``, moved back to
        a space (never into a token, nor more than 256 characters)."""
        if len(text) <= self.max_scan:
            return text, ""
        raw = 0
        at = 0
        cut = len(text)
        floor = 0
        for m in TOKEN.finditer(text):
            if raw + (m.start() - at) >= self.max_scan:
                break
            raw += m.start() - at
            at = m.end()
            floor = at
        if raw + (len(text) - at) <= self.max_scan:
            return text, ""
        cut = at + (self.max_scan - raw)
        floor = max(floor, cut - _BACKOFF)
        k = cut
        while k > floor and not text[k - 1].isspace():
            k -= 1
        while k > floor and (
            text[k - 1].isspace() or text[k - 1].isdigit() or text[k - 1] in "+-()."
        ):
            k -= 1
        if k > floor:
            cut = k
        return text[:cut], text[cut:]
