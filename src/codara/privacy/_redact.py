"""The one walk every export path passes (:func:`redact`), and the record walk beside it.

:func:`redact` is for what leaves the engine: journal rows, log records, span attributes,
API bodies. It does not know which fields are personal, so it scans every string it meets
as free text: dictionary keys and values, list, tuple and set items, the text of bytes, and
JSON held in a string (``'{"note": "mail a@b.com"}'``, parsed, masked and written back
compactly; left byte for byte as it was when nothing in it is personal). Integers of seven
digits or more (and integral floats and Decimals) are scanned as their digits, since a card
or phone number stored as a number is still one; other objects by their ``str``, replaced by
the masked string only if something was found. Nesting deeper than 64 levels (or a cycle) is
cut off and replaced by a placeholder, so a hostile structure cannot exhaust the stack.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from codara.errors import ConfigError
from codara.privacy._masker import KINDS, Finding, KnownValues, is_token

_NO_NUMBERS: contextvars.ContextVar[bool] = contextvars.ContextVar("_NO_NUMBERS", default=False)

if TYPE_CHECKING:
    from codara.privacy._masker import Masker

__all__ = ["DEEP", "known_patterns", "redact", "redact_found"]

MAX_DEPTH: Final = 64
DEEP: Final = "[nested too deep to scan: not shown]"
_BIG: Final = 10**6  # numbers from seven digits on may be a phone or card number
_PATH_SEGMENT: Final = re.compile(r"[^.\[\]]+(?:\[\])*")

FieldTree: TypeAlias = dict[str, "str | FieldTree"]


def redact(value: Any, masker: Masker) -> Any:
    """A copy of ``value`` with every personal value masked: the function every export
    path (journal, logs, spans, API) passes. Idempotent; never raises on odd input."""
    return walk(masker, value, "", [], 0, ())


def redact_found(
    value: Any, masker: Masker, *, numbers: bool = True, known: KnownValues = ()
) -> tuple[Any, list[Finding]]:
    """:func:`redact`, with what it masked (for the vault). ``numbers=False`` leaves JSON
    numbers as they are: for values whose numbers are amounts, ids and times (a run's
    input), where a card number would be a string. ``known``: values no detector finds (a
    name) to mask wherever they appear (:func:`known_patterns`)."""
    found: list[Finding] = []
    if numbers:
        return walk(masker, value, "", found, 0, known), found
    token = _NO_NUMBERS.set(True)
    try:
        return walk(masker, value, "", found, 0, known), found
    finally:
        _NO_NUMBERS.reset(token)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _put(out: dict[Any, Any], key: Any, value: Any) -> None:
    """Two keys may mask to one token (``A@x.com`` and ``a@x.com``): keep both values."""
    if key in out:
        n = 2
        while f"{key}#{n}" in out:
            n += 1
        key = f"{key}#{n}"
    out[key] = value


def walk(
    masker: Masker, value: Any, path: str, found: list[Finding], depth: int, known: KnownValues
) -> Any:
    """``value`` with every string in it scanned, at ``path``; findings appended."""
    if depth > MAX_DEPTH:
        return DEEP
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _string(masker, value, path, found, depth, known)
    if isinstance(value, int | float | Decimal):
        return value if _NO_NUMBERS.get() else _number(masker, value, path, found)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = walk(masker, k, _child(path, "<key>"), found, depth + 1, known)
            _put(out, key, walk(masker, v, _child(path, str(key)), found, depth + 1, known))
        return out
    if isinstance(value, list | tuple):
        items = [walk(masker, v, f"{path}[{i}]", found, depth + 1, known)
                 for i, v in enumerate(value)]  # fmt: skip
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, set | frozenset):
        try:
            members = {walk(masker, v, f"{path}[]", found, depth + 1, known) for v in value}
        except TypeError:  # a masked member that cannot be hashed: a list is what JSON has
            return [walk(masker, v, f"{path}[]", found, depth + 1, known) for v in value]
        return members if isinstance(value, set) else frozenset(members)
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
        masked = _string(masker, text, path, found, depth, known)
        return value if masked == text else masked
    try:
        text = str(value)
    except Exception:  # an object whose __str__ fails says nothing we could leak
        return value
    before = len(found)
    masked = masker.scan(text, path, found, known)
    return value if len(found) == before else masked


def _string(
    masker: Masker, text: str, path: str, found: list[Finding], depth: int, known: KnownValues
) -> str:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[") and not is_token(stripped.rstrip()):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            pass
        else:
            before = len(found)
            masked = walk(masker, parsed, path, found, depth + 1, known)
            if len(found) == before and masked == parsed:
                return text
            try:
                return json.dumps(masked, ensure_ascii=False, separators=(",", ":"))
            except (ValueError, TypeError, RecursionError):
                pass  # scanned as text below
    return masker.scan(text, path, found, known)


def _number(masker: Masker, value: int | float | Decimal, path: str, found: list[Finding]) -> Any:
    try:
        whole = int(value)
        if whole != value or -_BIG < whole < _BIG:
            return value
    except (ValueError, OverflowError, ArithmeticError):  # inf, nan
        return value
    digits = str(abs(whole))
    if len(digits) > 64:
        return value  # no card or phone number is this long
    before = len(found)
    masked = masker.scan(digits, path, found)
    return value if len(found) == before else masked


# -- records with declared fields ------------------------------------------------------------


def parse_fields(fields: Mapping[str, str]) -> FieldTree:
    """The declared paths as a tree of keys (``[]`` dropped: lists are walked through)."""
    tree: FieldTree = {}
    for path, kind in fields.items():
        if kind not in KINDS:
            raise ConfigError(
                f"field {path!r} is declared as {kind!r}, which is not a kind of personal data",
                hint=f"use one of: {', '.join(KINDS)}",
            )
        segments = path.split(".")
        if not path or not all(_PATH_SEGMENT.fullmatch(s) for s in segments):
            raise ConfigError(
                f"{path!r} is not a field path",
                hint="write keys separated by dots, with [] after a list: customer.email, "
                "items[].iban",
            )
        node = tree
        keys = [s.replace("[]", "") for s in segments]
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            have = node.get(key)
            if last:
                if isinstance(have, dict) or (isinstance(have, str) and have != kind):
                    raise ConfigError(f"field {path!r} is declared twice, or inside another one")
                node[key] = kind
            else:
                if isinstance(have, str):
                    raise ConfigError(f"field {path!r} lies inside {'.'.join(keys[: i + 1])!r}, "
                                      "which is declared whole")  # fmt: skip
                child = have if isinstance(have, dict) else {}
                node[key] = child
                node = child
    return tree


def walk_record(
    masker: Masker,
    value: Any,
    node: str | FieldTree,
    path: str,
    found: list[Finding],
    known: KnownValues,
    depth: int = 0,
) -> Any:
    """``value`` at a node of the field tree: declared leaves tokenised, the rest scanned."""
    if depth > MAX_DEPTH:
        return DEEP
    if isinstance(node, str):
        return masker.declared(node, value, path, found, depth, known)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and k in node:
                _put(out, k, walk_record(masker, v, node[k], _child(path, k), found, known,
                                         depth + 1))  # fmt: skip
            else:
                key = walk(masker, k, _child(path, "<key>"), found, depth + 1, known)
                _put(out, key, walk(masker, v, _child(path, str(key)), found, depth + 1, known))
        return out
    if isinstance(value, list | tuple):
        items = [walk_record(masker, v, node, f"{path}[{i}]", found, known, depth + 1)
                 for i, v in enumerate(value)]  # fmt: skip
        return items if isinstance(value, list) else tuple(items)
    return walk(masker, value, path, found, depth, known)


def known_values(record: Any, tree: FieldTree) -> KnownValues:
    """Patterns for the record's declared names and addresses, to find them again in its
    free text: whole values only, any case, any whitespace between the words."""
    values: dict[str, set[str]] = {"name": set(), "address": set()}

    def collect(value: Any, node: str | FieldTree, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(node, str):
            if node in values and isinstance(value, str) and not is_token(value):
                words = value.split()
                if words and len("".join(words)) >= 2:
                    values[node].add(" ".join(words))
            elif node in values and isinstance(value, list | tuple):
                for v in value:
                    collect(v, node, depth + 1)
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(k, str) and k in node:
                    collect(v, node[k], depth + 1)
        elif isinstance(value, list | tuple):
            for v in value:
                collect(v, node, depth + 1)

    collect(record, tree, 0)
    return known_patterns(values)


def known_patterns(values: Mapping[str, Iterable[str]]) -> KnownValues:
    """Patterns that find ``values`` (kind -> texts) again: whole values only, any case, any
    whitespace between the words; texts of fewer than two characters are left out."""
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for kind, texts in values.items():
        kept = {" ".join(t.split()) for t in texts if len("".join(t.split())) >= 2}
        if kept:
            alternatives = sorted(kept, key=len, reverse=True)  # longest first
            body = "|".join(r"\s+".join(map(re.escape, t.split())) for t in alternatives)
            patterns.append((kind, re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)))
    return tuple(patterns)
