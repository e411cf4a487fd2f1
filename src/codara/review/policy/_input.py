"""The declared input shape of a workflow's policies, and reading caller values into it.

``[workflows.<name>.policy_input]`` maps field names to ``"double"``, ``"int"``, ``"string"``,
``"bool"`` or a nested table of the same. :func:`check_shape` validates it; a :class:`Reader`
coerces the values handed to an evaluation into CEL values (the activation) and a JSON-able
copy (the decision's ``inputs_seen``) in one pass.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from celpy import celtypes

from codara.review.policy._errors import PolicyInputError, show

__all__ = [
    "TYPE_NAMES",
    "InputField",
    "Reader",
    "check_shape",
    "fields_of",
    "samples",
    "shape_paths",
]

FIELD_TYPES = ("double", "int", "string", "bool")

# Words a field of the input shape may not be called: CEL keywords and reserved words, and
# the type names CEL conditions use as values (``type(x) == int``).
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"}
)
RESERVED_NAMES = TYPE_NAMES | frozenset(
    {
        "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
        "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
        "void", "while",
    }
)  # fmt: skip
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# Type names people reach for, and the declared type that means the same thing.
_TYPE_ALIASES = {
    "float": "double",
    "number": "double",
    "decimal": "double",
    "integer": "int",
    "long": "int",
    "str": "string",
    "text": "string",
    "boolean": "bool",
}


def check_shape(
    raw: object, prefix: str = "policy_input"
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate a declared input shape; returns (shape, [(setting, reason), ...]).

    The shape returned is made of plain dicts and type names, so it hashes (as JSON) and
    compares by value.
    """
    faults: list[tuple[str, str]] = []
    if not isinstance(raw, Mapping):
        faults.append(
            (prefix, f'{prefix} must be a table of field = "type" entries, not {show(raw)}')
        )
        return {}, faults
    shape: dict[str, Any] = {}
    for name, spec in raw.items():
        where = f"{prefix}.{name}"
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            faults.append(
                (
                    where,
                    f"field name {show(name)} cannot be used in conditions: use letters, digits "
                    "and _, starting with a letter",
                )
            )
            continue
        if name in RESERVED_NAMES:
            faults.append(
                (where, f"'{name}' is a reserved word in conditions; pick another field name")
            )
            continue
        if isinstance(spec, Mapping):
            nested, nested_faults = check_shape(spec, where)
            faults.extend(nested_faults)
            shape[name] = nested
        elif isinstance(spec, str) and spec in FIELD_TYPES:
            shape[name] = spec
        else:
            alias = _TYPE_ALIASES.get(spec.strip().lower()) if isinstance(spec, str) else None
            hint = f' Write "{alias}".' if alias else ""
            faults.append(
                (
                    where,
                    f"{show(spec)} is not a type a condition can use.{hint} Types: "
                    '"double" (number), "int" (whole number), "string" (text), "bool" '
                    "(true/false), or a table of fields",
                )
            )
    return shape, faults


def shape_paths(shape: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf field of a shape as a dotted path, sorted."""
    out: list[str] = []
    for name, spec in shape.items():
        path = f"{prefix}{name}"
        if isinstance(spec, Mapping):
            out.extend(shape_paths(spec, path + ".") or [path])
        else:
            out.append(path)
    return sorted(out)


# --------------------------------------------------------------------------- coercion


class _Wrong(Exception):
    """A value that cannot be read as its field's type; ``expected`` says what would do."""

    def __init__(self, expected: str) -> None:
        self.expected = expected


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")

# celtypes' constructors convert and check their argument in Python (IntType's builds a
# functools.wraps wrapper on every call, about 10 us); the values here are already of the
# base type and in range, so the base type's __new__ builds the same objects at a fraction
# of the cost. The zero values and booleans are immutable, so they are shared.
_cel_double = partial(float.__new__, celtypes.DoubleType)
_cel_int = partial(int.__new__, celtypes.IntType)
_cel_string = partial(str.__new__, celtypes.StringType)
_ZERO_DOUBLE, _ZERO_INT, _EMPTY = _cel_double(0.0), _cel_int(0), _cel_string("")
_TRUE, _FALSE = celtypes.BoolType(True), celtypes.BoolType(False)


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _double(raw: Any) -> tuple[Any, Any]:
    if raw is None:
        return _ZERO_DOUBLE, 0.0
    if isinstance(raw, float):
        number = raw
    elif isinstance(raw, numbers.Real) and not isinstance(raw, bool):
        try:
            number = float(raw)
        except OverflowError:
            number = math.inf if cast(Any, raw) > 0 else -math.inf
    else:
        raise _Wrong("a number")
    return _cel_double(number), _json_float(number)


def _int(raw: Any) -> tuple[Any, Any]:
    if raw is None:
        return _ZERO_INT, 0
    if type(raw) is int:
        whole = raw
    elif (isinstance(raw, numbers.Integral) and not isinstance(raw, bool)) or (
        isinstance(raw, numbers.Real)
        and not isinstance(raw, bool)
        and math.isfinite(raw)
        and float(raw).is_integer()
    ):
        whole = int(cast(Any, raw))
    else:
        raise _Wrong("a whole number")
    if not _INT64_MIN <= whole <= _INT64_MAX:
        whole = _INT64_MIN if whole < 0 else _INT64_MAX
    return _cel_int(whole), whole


def _string(raw: Any) -> tuple[Any, Any]:
    if raw is None:
        return _EMPTY, ""
    if not isinstance(raw, str):
        raise _Wrong("text")
    text = "".join((raw,))  # a plain str, also from a str subclass (StrEnum)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # unpaired surrogates: not text, not journalable
            text = _SURROGATE.sub("\ufffd", text)
    return _cel_string(text), text


def _bool(raw: Any) -> tuple[Any, Any]:
    if raw is None or raw is False:
        return _FALSE, False
    if raw is True:
        return _TRUE, True
    raise _Wrong("true or false")


_COERCE: dict[str, Callable[[Any], tuple[Any, Any]]] = {
    "double": _double,
    "int": _int,
    "string": _string,
    "bool": _bool,
}


@dataclass(frozen=True, slots=True)
class InputField:
    """One declared field: a scalar (``coerce`` set) or a table of ``fields``."""

    name: str
    key: str
    """The key in the activation: the name, as a CEL string inside a table."""
    path: str
    kind: str  # "double" | "int" | "string" | "bool" | "map"
    fields: tuple[InputField, ...] = ()
    coerce: Callable[[Any], tuple[Any, Any]] | None = None
    """Raw value (None when absent) -> (CEL value, JSON value); raises :class:`_Wrong`."""


def fields_of(shape: Mapping[str, Any], prefix: str = "") -> tuple[InputField, ...]:
    """The fields of a validated shape, in declaration order."""
    out = []
    for name, spec in shape.items():
        path = f"{prefix}{name}"
        key = celtypes.StringType(name) if prefix else name
        if isinstance(spec, Mapping):
            out.append(InputField(name, key, path, "map", fields_of(spec, path + ".")))
        else:
            out.append(InputField(name, key, path, str(spec), coerce=_COERCE[str(spec)]))
    return tuple(out)


class Reader:
    """Coerces caller values to the declared shape: CEL activation plus the journalled copy."""

    __slots__ = ("fields", "workflow")

    def __init__(self, workflow: str, fields: tuple[InputField, ...]) -> None:
        self.workflow = workflow
        self.fields = fields

    def read(
        self, values: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
        """(activation, inputs seen, paths that took their zero value) for ``values``."""
        if not isinstance(values, Mapping):
            raise PolicyInputError(
                f"policy input for workflow '{self.workflow}' must be a mapping of field "
                f"names to values, not {type(values).__name__}",
                workflow=self.workflow,
                field="",
            )
        defaults: list[str] = []
        activation: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        self._read(self.fields, values, defaults, activation, seen)
        return activation, seen, tuple(defaults)

    def _read(
        self,
        fields: tuple[InputField, ...],
        values: Mapping[str, Any],
        defaults: list[str] | None,
        activation: dict[Any, Any],
        seen: dict[str, Any],
    ) -> None:
        """Read ``fields`` from ``values`` into ``activation`` and ``seen``; absent paths go
        to ``defaults`` (None: don't list them, inside a table that is itself absent)."""
        for f in fields:
            raw = values.get(f.name)
            if raw is None and defaults is not None:
                defaults.append(f.path)
            coerce = f.coerce
            if coerce is not None:
                try:
                    activation[f.key], seen[f.name] = coerce(raw)
                except _Wrong as wrong:
                    raise self._wrong(f, raw, wrong.expected) from None
                continue
            inner = defaults
            if raw is None:
                raw, inner = {}, None
            elif not isinstance(raw, Mapping):
                raise self._wrong(f, raw, "a table (mapping) of its fields")
            table = celtypes.MapType()
            sub_seen: dict[str, Any] = {}
            self._read(f.fields, raw, inner, table, sub_seen)
            activation[f.key] = table
            seen[f.name] = sub_seen

    def _wrong(self, f: InputField, raw: Any, expected: str) -> PolicyInputError:
        shown = repr(raw)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return PolicyInputError(
            f"policy input '{f.path}' for workflow '{self.workflow}' must be {expected} "
            f"(declared as {f.kind} in [workflows.{self.workflow}.policy_input]), "
            f"not {type(raw).__name__} {shown}",
            workflow=self.workflow,
            field=f.path,
            hint="pass a value of the declared type, or leave the field out to use its "
            'zero value (0, 0.0, "", false)',
        )


_SAMPLE_VALUES: tuple[dict[str, Any], ...] = (
    {"double": 0.0, "int": 0, "string": "", "bool": False},
    {"double": 1.0, "int": 1, "string": "a", "bool": True},
    {"double": -2.5, "int": 7, "string": "Zürich 9", "bool": False},
)


def samples(fields: tuple[InputField, ...]) -> list[dict[str, Any]]:
    """Three activations of the shape (zeros, small values, other values) for the checks."""

    def fill(fields: tuple[InputField, ...], values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            f.name: fill(f.fields, values) if f.coerce is None else values[f.kind] for f in fields
        }

    reader = Reader("", fields)
    return [reader.read(fill(fields, values))[0] for values in _SAMPLE_VALUES]
