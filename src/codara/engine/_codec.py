"""JSON encoding of inputs, step results and errors for the journal."""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import typing
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from codara.errors import InputError, StoreError

__all__ = [
    "PASS_THROUGH",
    "decode",
    "decode_stored",
    "dump_error",
    "dumps",
    "dumps_lenient",
    "input_adapter",
    "result_adapter",
]

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


def decode_stored(text: str | None, what: str) -> Any:
    """``decode`` for a value read back from the store for a caller: a value that is not
    JSON (edited outside Codara) is a StoreError naming it, not a bare JSONDecodeError."""
    try:
        return decode(text)
    except orjson.JSONDecodeError as exc:
        raise StoreError(
            f"{what} in the store is not valid JSON: {exc}",
            hint="it was changed outside Codara; `codara audit verify` shows what else was",
        ) from exc


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


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn)):
        call = inspect.getattr_static(type(fn), "__call__", None)  # a callable object
        if inspect.isfunction(call):
            return call
    return fn


_NO_HINT = object()


_hints: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _return_hint(fn: Any) -> Any:
    """The declared return type of ``fn`` (through partials and callable objects), or
    ``_NO_HINT`` when there is none. Cached per underlying function."""
    target = _unwrap(fn)
    key = getattr(target, "__func__", target)  # a bound method: its function
    try:
        return _hints[key]
    except (KeyError, TypeError):
        pass
    tp = _compute_hint(target)
    try:
        if len(_hints) < 4096:
            _hints[key] = tp
    except TypeError:  # unhashable
        pass
    return tp


def _compute_hint(target: Any) -> Any:
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return _NO_HINT
    if "return" not in hints:
        return _NO_HINT
    tp = hints["return"]
    if typing.get_origin(tp) in (typing.Coroutine, collections.abc.Coroutine) or (
        typing.get_origin(tp) in (collections.abc.Awaitable, typing.Awaitable)
    ):
        tp = typing.get_args(tp)[-1]
    return tp


_adapters: dict[Any, TypeAdapter[Any] | None] = {}
PASS_THROUGH: TypeAdapter[Any] = TypeAdapter(Any)


def result_adapter(fn: Any, result_type: Any = None) -> TypeAdapter[Any] | None:
    """How a journaled result becomes the value a step returned: validated into
    ``result_type``, else into ``fn``'s declared return type. ``None`` when neither is known
    (the caller then insists on a plain JSON result); a pass-through adapter when the type is
    plain JSON already."""
    if result_type is None:
        try:
            return _by_fn[fn]  # the hot path: the same function, step after step
        except (KeyError, TypeError):
            pass
        adapter = _result_adapter(_return_hint(fn))
        try:
            if len(_by_fn) < 4096:
                _by_fn[fn] = adapter
        except TypeError:
            pass
        return adapter
    return _result_adapter(result_type)


# Weak: a closure or partial made per run must not be kept alive by the cache.
_by_fn: weakref.WeakKeyDictionary[Any, TypeAdapter[Any] | None] = weakref.WeakKeyDictionary()


def _result_adapter(tp: Any) -> TypeAdapter[Any] | None:
    if tp is _NO_HINT:
        return None
    try:
        cached = _adapters.get(tp, _NO_HINT)
    except TypeError:  # an unhashable annotation
        cached = _NO_HINT
    if cached is not _NO_HINT:
        return cached  # type: ignore[return-value]
    adapter = TypeAdapter(tp) if _needs_adapter(tp) else PASS_THROUGH
    try:
        if len(_adapters) < 4096:
            _adapters[tp] = adapter
    except TypeError:
        pass
    return adapter


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
