"""JSON encoding of inputs, step results and errors for the journal."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from codara.errors import InputError

__all__ = ["decode", "dump_error", "dumps", "dumps_lenient", "input_adapter", "return_adapter"]

_PLAIN = (type(None), bool, int, float, str, list, dict, Any)


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """Encode a value for the journal; raises TypeError for what JSON cannot hold."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _lenient(obj: Any) -> Any:
    try:
        return _default(obj)
    except TypeError:
        return f"<{type(obj).__name__}>"


def dumps_lenient(value: Any) -> str:
    """Encode for display only (a step's arguments): never fails, marks what it cannot hold."""
    return orjson.dumps(value, default=_lenient, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def decode(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def dump_error(exc: BaseException) -> str:
    return dumps(
        {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc)[:2000],
            "non_retryable": bool(getattr(exc, "non_retryable", False)),
        }
    )


def _needs_adapter(tp: Any) -> bool:
    if tp is inspect.Parameter.empty or tp in _PLAIN:
        return False
    # list[str], dict[str, Any]: JSON gives them back as they were
    plain = typing.get_origin(tp) in (list, dict) and all(a in _PLAIN for a in typing.get_args(tp))
    return not plain


@lru_cache(maxsize=4096)
def return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """A validator that turns a journaled result back into the type ``fn`` returns."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    tp = hints.get("return", inspect.Parameter.empty)
    if inspect.iscoroutinefunction(fn) and typing.get_origin(tp) is typing.Coroutine:
        tp = typing.get_args(tp)[-1]
    if not _needs_adapter(tp):
        return None
    return TypeAdapter(tp)


def input_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    """A validator for a workflow's input: the annotation of its second parameter."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    tp = hints.get(params[1].name, inspect.Parameter.empty)
    return TypeAdapter(tp) if _needs_adapter(tp) else None


def validate_input(adapter: TypeAdapter[Any] | None, value: Any, workflow: str) -> Any:
    if adapter is None:
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(
            f"input for workflow {workflow!r} is invalid: {problems}",
            hint="pass input of the shape the workflow's second parameter declares",
        ) from exc


def is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)
