"""Checking a JSON value against the JSON Schema pydantic generated for a workflow's input.

The ``jsonschema`` package is not a dependency, so this is a validator for the subset of JSON
Schema (2020-12) that pydantic emits for input types:

- ``type``, ``enum``, ``const``;
- ``properties``, ``required``, ``additionalProperties``;
- ``items``, ``prefixItems``, ``minItems``, ``maxItems``;
- ``anyOf``, ``oneOf`` (checked as ``anyOf``), ``allOf``, and local ``$ref`` to ``$defs``;
- ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``;
- ``minLength``, ``maxLength``, ``pattern``.

Anything else (``format``, ``uniqueItems``, ``patternProperties``, ``if``/``then``, ``not``,
remote references) is not checked here; the worker validates the input with pydantic again
when the run executes.

JSON Schema is stricter than pydantic's lax mode: ``"5"`` is not an ``integer`` here even
though pydantic would coerce it.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["schema_problems"]

_MAX_PROBLEMS = 10


def schema_problems(value: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty when it is valid)."""
    problems: list[str] = []
    _check(value, schema, schema, "", problems, depth=0)
    return problems[:_MAX_PROBLEMS]


def _where(path: str) -> str:
    return path or "input"


def _join(path: str, part: object) -> str:
    return f"{path}.{part}" if path else str(part)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, dict)
    return True  # an unknown type name: not ours to refuse


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any] | None:
    if not ref.startswith("#"):
        return None  # a remote reference: not checked
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _passes(value: Any, schema: Any, root: dict[str, Any], depth: int) -> bool:
    problems: list[str] = []
    _check(value, schema, root, "", problems, depth)
    return not problems


def _check(
    value: Any,
    schema: Any,
    root: dict[str, Any],
    path: str,
    problems: list[str],
    depth: int,
) -> None:
    if schema is False:
        problems.append(f"{_where(path)}: no value is allowed here")
        return
    if not isinstance(schema, dict) or depth > 64:
        return  # True, or a schema nested deeper than any input type declares
    where = _where(path)
    if "$ref" in schema:
        target = _resolve(str(schema["$ref"]), root)
        if target is not None:
            _check(value, target, root, path, problems, depth + 1)
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: must be {schema['const']!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"][:10])
        problems.append(f"{where}: {value!r} is not one of {allowed}")
        return
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_type_ok(value, k) for k in names):
            problems.append(f"{where}: expected {' or '.join(names)}, got {_json_type(value)}")
            return
    for key in ("anyOf", "oneOf"):
        if key in schema:
            shapes = [s for s in schema[key] if not (value is not None and s == {"type": "null"})]
            if len(shapes) == 1:  # Optional[X] given a value: say what is wrong with it as X
                _check(value, shapes[0], root, path, problems, depth + 1)
            elif not any(_passes(value, s, root, depth + 1) for s in shapes):
                problems.append(f"{where}: {_short(value)} matches none of the allowed shapes")
                return
    for sub in schema.get("allOf", ()):
        _check(value, sub, root, path, problems, depth + 1)
    if isinstance(value, dict):
        _check_object(value, schema, root, path, problems, depth)
    elif isinstance(value, list | tuple):
        _check_array(list(value), schema, root, path, problems, depth)
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']} characters")
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                if re.search(pattern, value) is None:
                    problems.append(f"{where}: does not match the pattern {pattern!r}")
            except re.error:
                pass  # a pattern Python cannot compile: not checked here
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, where, problems)


def _check_object(
    value: dict[str, Any],
    schema: dict[str, Any],
    root: dict[str, Any],
    path: str,
    problems: list[str],
    depth: int,
) -> None:
    props: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            problems.append(f"{_join(path, name)}: required")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in props:
            _check(item, props[name], root, _join(path, name), problems, depth + 1)
        elif extra is False:
            problems.append(f"{_join(path, name)}: not a field of this input")
        elif isinstance(extra, dict):
            _check(item, extra, root, _join(path, name), problems, depth + 1)


def _check_array(
    value: list[Any],
    schema: dict[str, Any],
    root: dict[str, Any],
    path: str,
    problems: list[str],
    depth: int,
) -> None:
    where = _where(path)
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"{where}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{where}: more than {schema['maxItems']} items")
    prefix: list[Any] = schema.get("prefixItems", [])
    for i, sub in enumerate(prefix[: len(value)]):
        _check(value[i], sub, root, _join(path, i), problems, depth + 1)
    items = schema.get("items")
    if items is not None:
        for i in range(len(prefix), len(value)):
            if items is False:
                problems.append(f"{where}: more than {len(prefix)} items")
                break
            _check(value[i], items, root, _join(path, i), problems, depth + 1)


def _check_number(value: float, schema: dict[str, Any], where: str, problems: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where}: less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{where}: greater than {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        problems.append(f"{where}: must be greater than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        problems.append(f"{where}: must be less than {schema['exclusiveMaximum']}")
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        ratio = value / step
        if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9):
            problems.append(f"{where}: not a multiple of {step}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
