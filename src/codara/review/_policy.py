"""Declarative review policies, evaluated with CEL.

A workflow declares in ``codara.toml`` the shape of the values its policies look at
(``[workflows.<name>.policy_input]``) and an ordered list of policies
(``[[workflows.<name>.policies]]``), each a CEL condition (``when``) and an outcome: ``allow``,
``deny`` or ``ask`` (send to a human reviewer of ``role``). :func:`load_policies` validates and
compiles them, rejecting anything that would fail later; :meth:`WorkflowPolicies.evaluate`
turns one set of input values into a :class:`Decision`.

Semantics
---------
* Policies are evaluated in declaration order; the first whose condition is true decides.
* None fires: ``allow``. An ``allow`` (by default or by an ``allow`` policy) may then be
  turned into ``ask`` by ``[workflows.<name>.sampling]``: the choice hashes the workflow name
  and the caller's ``decision_key`` (e.g. ``f"{run_id}:{step}"``) with sha256, so it is the
  same on every replay and in every process, and raising the rate only adds keys.
* Inputs are coerced to the declared types before CEL sees them: an ``int`` given for a
  ``double`` field becomes a double (CEL does not compare ``150`` with ``100.0``); an ``int``
  field is saturated to the int64 range; a ``double`` too large for a float becomes infinity;
  text with unpaired surrogates has them replaced by U+FFFD. A field that is absent or None
  gets the zero value of its type (``0.0``, ``0``, ``""``, ``false``, or a table of zero
  values) and is listed in :attr:`Decision.defaults_used`. Keys not declared are ignored.
  A value that cannot be read as its type (text for a number, a number for a bool, a
  fractional number for an int) raises :class:`PolicyInputError`.
* If a condition fails at run time (division by zero, an overflow), the policy does not
  silently pass: the decision is ``ask`` to that policy's ``role``, or ``deny`` if it has
  none, with :attr:`Decision.error` and the reason saying it could not be evaluated.

Checks at load time
-------------------
Syntax (with line:column), every field name against the declared shape (with a
"did you mean"), every function name, and types: each operation in the condition is compiled
and evaluated on its own against three samples of the declared shape (zeros, small values,
other values), so a type error is reported with its position even inside a branch the
samples would not take (macro bodies are checked with their variable bound to elements of
their target); ``&&``/``||``/``?:`` must get true/false, both results of ``?:`` one type;
finally the whole condition must give true or false for at least one sample. A condition
that fails only for some values (``100 / count``) is accepted: at run time it fails safe.

cel-python 0.5.0 notes
----------------------
* One runner kind per process: ``CompiledRunner`` (transpiles to Python, about 5x faster than
  the interpreter). celpy keeps one shared parser whose tree class must match the runner;
  this module parses with its own (same grammar and options, and ``true``/``false`` keep
  their source positions, which celpy's lexer callback drops). If celpy has no shared parser
  yet, ours becomes it, so the process builds the grammar once. ``InterpretedRunner`` users
  created later keep working with it.
* ``CompiledRunner`` evaluates through module-level state in ``celpy.evaluation``, so
  evaluations take a process-wide lock.
* Ints and doubles do not mix (``1 < 2.5`` is an error, ``2.5 > 1`` happens to work), hence
  the coercion of inputs to the declared types and the load-time type checks.
* ``has(x)`` gives a Python bool that celpy's ``!`` and ``? :`` reject: the load-time check
  says to write ``has(x) == false``.
* An evaluation costs about 40-70 us per policy evaluated (celpy's activation set-up is most
  of it), plus about 15 us for reading the inputs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import numbers
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import celpy
import celpy.celparser
import celpy.evaluation
import lark
from celpy import celtypes
from celpy.evaluation import CELEvalError, TranspilerTree
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from codara.review._policy_schema import (
    TYPE_NAMES,
    OnTimeout,
    Outcome,
    PolicyError,
    PolicyInputError,
    PolicyProblem,
    PolicyRule,
    SamplingRule,
    check_shape,
    did_you_mean,
    digest,
    drop_computed_version,
    problems_from_validation,
    shape_digest_payload,
    shape_paths,
)

__all__ = [
    "Decision",
    "OnTimeout",
    "Outcome",
    "PolicyError",
    "PolicyInputError",
    "PolicyProblem",
    "PolicyRule",
    "SamplingRule",
    "WorkflowPolicies",
    "load_policies",
    "sample_point",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- CEL machinery

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_FUNCTIONS = frozenset(
    {name for name in celpy.evaluation.base_functions if _IDENT.fullmatch(name) and name[0] != "_"}
    | {"has", "dyn"}
    | _MACROS
)
_WRAPPERS = frozenset(
    {
        "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
        "unary", "member", "primary", "paren_expr",
    }
)  # fmt: skip
_BINARY_SYMBOLS = {
    "relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=",
    "relation_eq": "==", "relation_ne": "!=", "relation_in": "in", "addition_add": "+",
    "addition_sub": "-", "multiplication_mul": "*", "multiplication_div": "/",
    "multiplication_mod": "%",
}  # fmt: skip
_LOGIC_SYMBOLS = {"conditionalor": "||", "conditionaland": "&&"}
_BINARY_NODES = frozenset(
    {"relation", "addition", "multiplication", "conditionalor", "conditionaland", "unary"}
)
_CALL_NODES = frozenset(
    {"member_dot_arg", "ident_arg", "dot_ident_arg", "member_index", "list_lit", "map_lit"}
)

_state = threading.local()


class _QuietWhileChecking(logging.Filter):
    """Drop celpy's own ERROR record for an evaluation error that this module handles."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_state, "quiet", False)


def _bool_literal(token: lark.Token) -> lark.Token:
    """celpy's IDENT callback (``true``/``false`` are BOOL_LIT), keeping the position."""
    if token.value in ("true", "false"):
        return lark.Token.new_borrow_pos("BOOL_LIT", token.value, token)
    return token


class _Cel:
    """The process's CEL environment (CompiledRunner only), its parser and a lock."""

    _instance: _Cel | None = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.RLock()
        # Our own parser, with celpy's grammar and options, except that ``true``/``false``
        # keep their source positions (celpy's lexer callback drops them, which would leave
        # whole sub-expressions without a position). celpy keeps one shared parser, built by
        # the first Environment with that runner's tree class; when none exists yet, ours
        # becomes it, so that the Environment below does not build a second one.
        grammar = Path(celpy.celparser.__file__).with_name("cel.lark").read_text()
        self.parser = lark.Lark(
            grammar,
            parser="lalr",
            start="expr",
            g_regex_flags=re.M,
            lexer_callbacks={"IDENT": _bool_literal},
            propagate_positions=True,
            maybe_placeholders=False,
            priority="invert",
            tree_class=TranspilerTree,
        )
        if celpy.celparser.CELParser.CEL_PARSER is None:
            celpy.celparser.CELParser.CEL_PARSER = self.parser
        self.env = celpy.Environment(runner_class=celpy.CompiledRunner)
        self._compiled: dict[str, celpy.Runner] = {}
        logging.getLogger("celpy.Transpiler").addFilter(_QuietWhileChecking())

    @classmethod
    def get(cls) -> _Cel:
        if cls._instance is None:
            with cls._create_lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    def parse(self, text: str) -> TranspilerTree:
        """Parse CEL text; raises lark's ``UnexpectedInput`` on a syntax error."""
        with self.lock:
            return cast(TranspilerTree, self.parser.parse(text))

    def program(self, tree: TranspilerTree) -> celpy.Runner:
        with self.lock:
            return self.env.program(tree)

    def compile(self, text: str) -> celpy.Runner:
        """A program for CEL text, cached: loading policies compiles many small fragments,
        and reloading the same configuration compiles the same ones again."""
        with self.lock:
            runner = self._compiled.get(text)
            if runner is None:
                runner = self.program(self.parse(text))
                if len(self._compiled) >= 4096:
                    self._compiled.clear()
                self._compiled[text] = runner
            return runner

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.lock:
            _state.quiet = True
            try:
                yield
            finally:
                _state.quiet = False


def _cel_error(exc: BaseException) -> tuple[str, type[BaseException] | None, str]:
    """(celpy's message, the Python exception class behind it, its detail) of an error."""
    if not isinstance(exc, CELEvalError):
        return type(exc).__name__, type(exc), str(exc)
    args: tuple[Any, ...] = exc.args
    while (
        len(args) >= 3
        and isinstance(args[1], type)
        and issubclass(args[1], CELEvalError)
        and isinstance(args[2], tuple)
    ):
        args = args[2]
    message = str(args[0]) if args else type(exc).__name__
    kind = args[1] if len(args) > 1 and isinstance(args[1], type) else None
    detail = ""
    if len(args) > 2:
        inner = args[2]
        detail = str(inner[0]) if isinstance(inner, tuple) and inner else str(inner)
    return message, kind, detail


def _is_propagated(exc: BaseException) -> bool:
    """True when celpy tripped over an error value from a part of the expression (its ``? :``
    and macros raise a TypeError naming CELEvalError): the cause lies in that part."""
    return "CELEvalError" in _cel_error(exc)[2]


def _is_structural(exc: BaseException) -> bool:
    """True for errors that come from the condition's form (types, names), not from values."""
    message, kind, _ = _cel_error(exc)
    if message == "unbound function":
        return True
    if _is_propagated(exc):
        return False
    return kind is not None and issubclass(kind, (TypeError, AttributeError))


def _describe_error(exc: BaseException) -> str:
    message, kind, detail = _cel_error(exc)
    if _is_propagated(exc):
        return "a part of the condition failed"
    if kind is not None and issubclass(kind, ZeroDivisionError):
        return "division by zero"
    if message == "return error for overflow" and detail == "overflow":
        return "a number went out of range (overflow)"
    if kind is not None and issubclass(kind, (TypeError, AttributeError)):
        return f"values of the wrong type ({detail or message})"
    text = f"{message}: {detail}" if detail else message
    return text if len(text) <= 200 else text[:197] + "..."


_TYPE_WORDS: tuple[tuple[type, str], ...] = (
    (celtypes.BoolType, "true/false (bool)"),
    (bool, "true/false (bool)"),
    (celtypes.UintType, "an unsigned whole number (uint)"),
    (celtypes.IntType, "a whole number (int)"),
    (celtypes.DoubleType, "a number (double)"),
    (celtypes.StringType, "text (string)"),
    (celtypes.BytesType, "bytes"),
    (celtypes.ListType, "a list"),
    (celtypes.MapType, "a table (map)"),
    (celtypes.TimestampType, "a timestamp"),
    (celtypes.DurationType, "a duration"),
    (type(None), "null"),
)


def _kind_of(value: object) -> str:
    for cls, words in _TYPE_WORDS:
        if isinstance(value, cls):
            return words
    return type(value).__name__


def _is_bool(value: object) -> bool:
    return isinstance(value, (celtypes.BoolType, bool))


# --------------------------------------------------------------------------- input shape


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    path: str
    kind: str  # "double" | "int" | "string" | "bool" | "map"
    fields: tuple[_Field, ...] = ()


def _fields(shape: Mapping[str, Any], prefix: str = "") -> tuple[_Field, ...]:
    out = []
    for name, spec in shape.items():
        path = f"{prefix}{name}"
        if isinstance(spec, Mapping):
            out.append(_Field(name, path, "map", _fields(spec, path + ".")))
        else:
            out.append(_Field(name, path, str(spec)))
    return tuple(out)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_SAMPLE_VALUES: tuple[dict[str, Any], ...] = (
    {"double": 0.0, "int": 0, "string": "", "bool": False},
    {"double": 1.0, "int": 1, "string": "a", "bool": True},
    {"double": -2.5, "int": 7, "string": "Zürich 9", "bool": False},
)


def _sample(fields: tuple[_Field, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        f.name: _sample(f.fields, values) if f.kind == "map" else values[f.kind] for f in fields
    }


def _to_cel(value: Any) -> Any:
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    return celtypes.MapType({celtypes.StringType(k): _to_cel(v) for k, v in value.items()})


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


class _Reader:
    """Coerces caller values to the declared shape: CEL activation plus the journalled copy."""

    def __init__(self, workflow: str, fields: tuple[_Field, ...]) -> None:
        self.workflow = workflow
        self.fields = fields

    def read(
        self, values: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
        if not isinstance(values, Mapping):
            raise PolicyInputError(
                f"policy input for workflow '{self.workflow}' must be a mapping of field "
                f"names to values, not {type(values).__name__}",
                workflow=self.workflow,
                field="",
            )
        defaults: list[str] = []
        activation, seen = self._read(self.fields, values, defaults)
        return activation, seen, tuple(defaults)

    def _read(
        self, fields: tuple[_Field, ...], values: Mapping[str, Any], defaults: list[str] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read ``fields`` from ``values``; absent paths go to ``defaults`` (None: don't list)."""
        activation: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        for f in fields:
            raw = values.get(f.name)
            if f.kind == "map":
                inner = defaults
                if raw is None:
                    if defaults is not None:
                        defaults.append(f.path)
                    raw, inner = {}, None
                elif not isinstance(raw, Mapping):
                    raise self._wrong(f, raw, "a table (mapping) of its fields")
                sub_activation, sub_seen = self._read(f.fields, raw, inner)
                activation[f.name] = celtypes.MapType(
                    {celtypes.StringType(k): v for k, v in sub_activation.items()}
                )
                seen[f.name] = sub_seen
                continue
            if raw is None and defaults is not None:
                defaults.append(f.path)
            cel_value, json_value = self._scalar(f, raw)
            activation[f.name] = cel_value
            seen[f.name] = json_value
        return activation, seen

    def _scalar(self, f: _Field, raw: Any) -> tuple[Any, Any]:
        kind = f.kind
        if kind == "double":
            if raw is None:
                number = 0.0
            elif isinstance(raw, float):
                number = raw
            elif isinstance(raw, numbers.Real) and not isinstance(raw, bool):
                try:
                    number = float(raw)
                except OverflowError:
                    number = math.inf if cast(Any, raw) > 0 else -math.inf
            else:
                raise self._wrong(f, raw, "a number")
            return celtypes.DoubleType(number), _json_float(number)
        if kind == "int":
            if raw is None:
                whole = 0
            elif (isinstance(raw, numbers.Integral) and not isinstance(raw, bool)) or (
                isinstance(raw, numbers.Real)
                and not isinstance(raw, bool)
                and math.isfinite(raw)
                and float(raw).is_integer()
            ):
                whole = int(cast(Any, raw))
            else:
                raise self._wrong(f, raw, "a whole number")
            whole = min(max(whole, _INT64_MIN), _INT64_MAX)
            return celtypes.IntType(whole), whole
        if kind == "string":
            if raw is None:
                text = ""
            elif isinstance(raw, str):
                text = "".join((raw,))  # a plain str, also from a str subclass (StrEnum)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # unpaired surrogates: not text, not journalable
                    text = _SURROGATE.sub("\ufffd", text)
            else:
                raise self._wrong(f, raw, "text")
            return celtypes.StringType(text), text
        # bool
        if raw is None:
            flag = False
        elif isinstance(raw, bool):
            flag = raw
        else:
            raise self._wrong(f, raw, "true or false")
        return celtypes.BoolType(flag), flag

    def _wrong(self, f: _Field, raw: Any, expected: str) -> PolicyInputError:
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


# --------------------------------------------------------------------------- static checks


class _Found(Exception):
    def __init__(self, reason: str, line: int | None, column: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column


def _unwrap(node: lark.Tree[Any]) -> lark.Tree[Any]:
    while (
        node.data in _WRAPPERS
        and len(node.children) == 1
        and isinstance(node.children[0], lark.Tree)
    ):
        node = node.children[0]
    return node


def _where(node: lark.Tree[Any] | lark.Token) -> tuple[int | None, int | None]:
    if isinstance(node, lark.Token):
        return node.line, node.column
    meta = node.meta
    if getattr(meta, "empty", True):
        return None, None
    return getattr(meta, "line", None), getattr(meta, "column", None)


def _string_literal(node: lark.Tree[Any]) -> str | None:
    node = _unwrap(node)
    if node.data == "literal" and node.children:
        token = node.children[0]
        if isinstance(token, lark.Token) and token.type in ("STRING_LIT", "MLSTRING_LIT"):
            return str(celpy.evaluation.celstr(token))
    return None


class _StaticCheck:
    """Walks a parsed condition: names against the shape, function names, unsupported forms.

    Records the dotted input paths the condition reads (for the decision's reason) and the
    subtrees that must not be evaluated on their own (macro bodies, ``has()`` arguments).
    """

    def __init__(self, shape: Mapping[str, Any]) -> None:
        self.shape = shape
        self.paths: list[str] = []
        self.skip: set[int] = set()
        """ids of nodes whose subtrees are not evaluated on their own (``has()`` arguments,
        macro arguments); the type check descends into macro bodies with the variable bound."""
        self.macros: dict[int, tuple[str, list[lark.Tree[Any]]]] = {}
        """id of each macro call node -> (its variable, its body expressions)."""

    def run(self, tree: lark.Tree[Any]) -> None:
        self._visit(tree, frozenset())

    def _path(
        self, node: lark.Tree[Any], scope: frozenset[str]
    ) -> list[tuple[str, lark.Token | lark.Tree[Any]]] | None:
        node = _unwrap(node)
        if node.data in ("ident", "dot_ident"):
            token = node.children[0]
            assert isinstance(token, lark.Token)
            if node.data == "ident" and token.value in scope:
                return None
            return [(str(token.value), token)]
        if node.data == "member_dot":
            base_node, token = node.children
            base = self._path(cast(lark.Tree[Any], base_node), scope)
            if base is None:
                return None
            assert isinstance(token, lark.Token)
            return [*base, (str(token.value), token)]
        if node.data == "member_index":
            base_node, index = node.children
            key = _string_literal(cast(lark.Tree[Any], index))
            if key is None:
                return None
            base = self._path(cast(lark.Tree[Any], base_node), scope)
            if base is None:
                return None
            return [*base, (key, cast(lark.Tree[Any], index))]
        return None

    def _resolve(self, path: list[tuple[str, lark.Token | lark.Tree[Any]]]) -> None:
        first = path[0][0]
        if len(path) == 1 and first in TYPE_NAMES:
            return
        spec: Any = self.shape
        walked: list[str] = []
        for name, at in path:
            if isinstance(spec, Mapping):
                if name not in spec:
                    line, column = _where(at)
                    if not walked:
                        known = shape_paths(self.shape)
                        listing = ", ".join(known) if known else "none are declared"
                        raise _Found(
                            f"'{name}' is not a declared input of this workflow."
                            f"{did_you_mean(name, list(self.shape))} Declared inputs: {listing}",
                            line,
                            column,
                        )
                    parent = ".".join(walked)
                    raise _Found(
                        f"'{parent}' has no field '{name}'.{did_you_mean(name, list(spec))} "
                        f"Its fields: {', '.join(sorted(spec)) or 'none'}",
                        line,
                        column,
                    )
                spec = spec[name]
                walked.append(name)
            else:
                line, column = _where(at)
                parent = ".".join(walked)
                raise _Found(
                    f"'{parent}' is a single value ({spec}), it has no field '{name}'",
                    line,
                    column,
                )
        dotted = ".".join(walked)
        if dotted not in self.paths:
            self.paths.append(dotted)

    def _mark_skip(self, node: lark.Tree[Any]) -> None:
        self.skip.add(id(node))

    def _visit(self, node: lark.Tree[Any] | lark.Token, scope: frozenset[str]) -> None:
        if isinstance(node, lark.Token):
            return
        data = node.data
        if data in ("ident", "dot_ident", "member_dot", "member_index"):
            path = self._path(node, scope)
            if path is not None:
                self._resolve(path)
                return
            for child in node.children:
                self._visit(child, scope)
            return
        if data in ("ident_arg", "dot_ident_arg"):
            token = node.children[0]
            assert isinstance(token, lark.Token)
            args = node.children[1] if len(node.children) > 1 else None
            name = str(token.value)
            if name == "has" and isinstance(args, lark.Tree):
                self._mark_skip(args)
            elif name not in _FUNCTIONS or name in _MACROS:
                self._unknown_function(token)
            if args is not None:
                self._visit(args, scope)
            return
        if data == "member_dot_arg":
            target, token = node.children[0], node.children[1]
            args = node.children[2] if len(node.children) > 2 else None
            assert isinstance(token, lark.Token)
            self._visit(target, scope)
            name = str(token.value)
            if name in _MACROS:
                self._macro(node, name, token, args, scope)
                return
            if name not in _FUNCTIONS:
                self._unknown_function(token)
            if args is not None:
                self._visit(args, scope)
            return
        if data == "member_object":
            line, column = _where(node)
            raise _Found("building messages (Type{field: value}) is not supported", line, column)
        for child in node.children:
            self._visit(child, scope)

    def _macro(
        self,
        node: lark.Tree[Any],
        name: str,
        token: lark.Token,
        args: lark.Tree[Any] | lark.Token | None,
        scope: frozenset[str],
    ) -> None:
        exprs = list(args.children) if isinstance(args, lark.Tree) else []
        variable = _unwrap(cast(lark.Tree[Any], exprs[0])) if exprs else None
        if (
            variable is None
            or len(exprs) < 2
            or variable.data != "ident"
            or not isinstance(variable.children[0], lark.Token)
        ):
            raise _Found(
                f"{name}() takes a variable name and a condition, e.g. [1, 2].{name}(x, x > 1)",
                token.line,
                token.column,
            )
        assert isinstance(args, lark.Tree)
        self._mark_skip(args)
        bound = str(variable.children[0].value)
        self.macros[id(node)] = (bound, [cast(lark.Tree[Any], e) for e in exprs[1:]])
        inner = scope | {bound}
        for expr in exprs[1:]:
            self._visit(expr, inner)

    @staticmethod
    def _unknown_function(token: lark.Token) -> None:
        name = str(token.value)
        known = sorted(_FUNCTIONS - {"dyn"})
        raise _Found(
            f"'{name}' is not a function conditions can use.{did_you_mean(name, known)} "
            f"Functions: {', '.join(known)}",
            token.line,
            token.column,
        )


# --------------------------------------------------------------------------- type checks


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


class _TypeCheck:
    """Evaluates each operation of a condition on its own, against samples of the shape."""

    def __init__(self, cel: _Cel, text: str, samples: Sequence[dict[str, Any]]) -> None:
        self.cel = cel
        self.text = text
        self.samples = samples
        self._runners: dict[tuple[int, int], celpy.Runner | None] = {}

    def _snippet(self, node: lark.Tree[Any]) -> str:
        return self.text[node.meta.start_pos : node.meta.end_pos]

    def _runner(self, node: lark.Tree[Any]) -> celpy.Runner | None:
        key = (node.meta.start_pos, node.meta.end_pos)
        if key not in self._runners:
            try:
                runner: celpy.Runner | None = self.cel.compile(self._snippet(node))
            except Exception:  # a fragment that does not stand alone; the whole is checked later
                runner = None
            self._runners[key] = runner
        return self._runners[key]

    def value(self, node: lark.Tree[Any], sample: dict[str, Any]) -> tuple[bool, Any]:
        """(ok, value or exception) of one subtree on one sample."""
        runner = self._runner(node)
        if runner is None:
            return False, None
        try:
            with self.cel.running():
                return True, runner.evaluate(sample)
        except Exception as exc:
            return False, exc

    def run(
        self,
        tree: lark.Tree[Any],
        skip: set[int],
        macros: Mapping[int, tuple[str, list[lark.Tree[Any]]]],
    ) -> list[tuple[str, celpy.Runner]]:
        """Raise :class:`_Found` for the innermost operation that fails on types; return the
        operations as (text, program), innermost first, to find the cause of a run-time error."""
        seen: set[tuple[int, int]] = set()
        parts: list[tuple[str, celpy.Runner]] = []
        for node in self._operations(tree, skip):
            if id(node) in macros:
                self._check_macro_body(node, skip, macros)
            key = (node.meta.start_pos, node.meta.end_pos)
            if key in seen:
                continue
            seen.add(key)
            self._check_logic(node)  # operands first: the clearer message for && and ?:
            operands = self._operands(node)
            for sample in self.samples:
                ok, result = self.value(node, sample)
                if ok or not isinstance(result, Exception) or not _is_structural(result):
                    continue
                if all(self.value(operand, sample)[0] for operand in operands):
                    raise self._explain(node, sample, result)
                # else an operand failed on this sample's values: the cause is there
            runner = self._runner(node)
            if runner is not None:
                parts.append((" ".join(self._snippet(node).split()), runner))
        return parts

    def _check_macro_body(
        self,
        node: lark.Tree[Any],
        skip: set[int],
        macros: Mapping[int, tuple[str, list[lark.Tree[Any]]]],
    ) -> None:
        """Type-check a macro's body with its variable bound to elements of its target."""
        variable, body = macros[id(node)]
        target = cast(lark.Tree[Any], node.children[0])
        bound: list[dict[str, Any]] = []
        for sample in self.samples:
            ok, items = self.value(target, sample)
            if ok and isinstance(items, (celtypes.ListType, celtypes.MapType)):
                bound.extend({**sample, variable: item} for item in list(items)[:3])
        if not bound:
            return
        inner = _TypeCheck(self.cel, self.text, bound)
        inner._runners = self._runners
        for expr in body:
            inner.run(expr, skip, macros)

    @staticmethod
    def _operands(node: lark.Tree[Any]) -> list[lark.Tree[Any]]:
        """The sub-expressions an operation node evaluates (not macro bodies or has())."""
        children = [c for c in node.children if isinstance(c, lark.Tree)]
        data = node.data
        if data in ("relation", "addition", "multiplication"):
            return [cast(lark.Tree[Any], children[0].children[0]), children[1]]
        if data == "unary":
            return children[1:]
        if data in ("member_dot_arg", "ident_arg", "dot_ident_arg"):
            tokens = [c for c in node.children if isinstance(c, lark.Token)]
            name = str(tokens[0].value) if tokens else ""
            receiver = children[:1] if data == "member_dot_arg" else []
            args = children[1:] if data == "member_dot_arg" else children
            if name in _MACROS or name == "has":
                return receiver
            return receiver + [cast(lark.Tree[Any], a) for arg in args for a in arg.children]
        if data in ("list_lit", "map_lit"):
            return [cast(lark.Tree[Any], a) for arg in children for a in arg.children]
        return children  # && || ?: and indexing

    def _operations(self, node: lark.Tree[Any], skip: set[int]) -> Iterator[lark.Tree[Any]]:
        """Operation nodes, children before parents."""
        for child in node.children:
            if isinstance(child, lark.Tree) and id(child) not in skip:
                yield from self._operations(child, skip)
        if getattr(node.meta, "empty", True):
            return
        data, size = node.data, len(node.children)
        binary = data in _BINARY_NODES and size == 2
        if binary or (data == "expr" and size == 3) or data in _CALL_NODES:
            yield node

    def _operator_position(self, left: lark.Tree[Any], symbol: str) -> tuple[int, int]:
        offset = self.text.find(symbol, left.meta.end_pos)
        if offset < 0:
            offset = left.meta.end_pos
        return _line_column(self.text, offset)

    def _describe(self, node: lark.Tree[Any], sample: dict[str, Any]) -> str:
        ok, value = self.value(node, sample)
        snippet = " ".join(self._snippet(node).split())
        return f"{_kind_of(value)} `{snippet}`" if ok else f"`{snippet}`"

    def _explain(self, node: lark.Tree[Any], sample: dict[str, Any], exc: Exception) -> _Found:
        snippet = " ".join(self._snippet(node).split())
        message, _, detail = _cel_error(exc)
        data = node.data
        line: int | None
        column: int | None
        if data in ("relation", "addition", "multiplication") and len(node.children) == 2:
            operator, right = cast(list[lark.Tree[Any]], node.children)
            left = cast(lark.Tree[Any], operator.children[0])
            symbol = _BINARY_SYMBOLS.get(str(operator.data), "?")
            line, column = self._operator_position(left, symbol)
            if symbol == "in":
                reason = (
                    f"`{snippet}`: 'in' needs a list or table on its right and a value of "
                    f"the same type on its left, but gets {self._describe(left, sample)} "
                    f"and {self._describe(right, sample)}"
                )
                return _Found(reason, line, column)
            verb = "compare" if data == "relation" else "combine"
            reason = (
                f"`{snippet}`: '{symbol}' cannot {verb} {self._describe(left, sample)} with "
                f"{self._describe(right, sample)}; both sides must be the same type"
            )
            ok_l, lval = self.value(left, sample)
            ok_r, rval = self.value(right, sample)
            kinds = {type(lval), type(rval)} if ok_l and ok_r else set()
            if kinds == {celtypes.IntType, celtypes.DoubleType}:
                whole = left if isinstance(lval, celtypes.IntType) else right
                literal = _unwrap(whole)
                written = self._snippet(whole).strip()
                if literal.data == "literal":
                    reason += (
                        f". Whole numbers and decimals do not mix: write {written}.0 instead "
                        f"of {written}"
                    )
                else:
                    reason += (
                        f". Whole numbers and decimals do not mix: write "
                        f"double({self._snippet(whole).strip()})"
                    )
            return _Found(reason, line, column)
        if data == "unary" and len(node.children) == 2:
            operator, operand = cast(list[lark.Tree[Any]], node.children)
            ok, value = self.value(operand, sample)
            if ok and type(value) is bool:  # has() gives a Python bool, which celpy can't negate
                written = " ".join(self._snippet(operand).split())
                return _Found(
                    f"`{snippet}`: cel-python cannot apply '!' to has(...) directly; write "
                    f"`{written} == false` instead",
                    *_where(operator),
                )
            needs = "true/false" if operator.data == "unary_not" else "a number"
            symbol = "!" if operator.data == "unary_not" else "-"
            line, column = _where(operator)
            return _Found(
                f"`{snippet}`: '{symbol}' needs {needs}, but gets "
                f"{self._describe(operand, sample)}",
                line,
                column,
            )
        if data in ("member_dot_arg", "ident_arg", "dot_ident_arg"):
            name_at = 1 if data == "member_dot_arg" else 0
            token = cast(lark.Token, node.children[name_at])
            if token.value in _MACROS:
                return _Found(
                    f"`{snippet}`: the condition inside {token.value}() cannot be evaluated: "
                    "it mixes values of different types (for example a whole number and a "
                    "number); check both sides of each comparison",
                    token.line,
                    token.column,
                )
            args = node.children[name_at + 1] if len(node.children) > name_at + 1 else None
            parts = []
            if data == "member_dot_arg":
                parts.append(self._describe(cast(lark.Tree[Any], node.children[0]), sample))
            if isinstance(args, lark.Tree):
                parts.extend(self._describe(cast(lark.Tree[Any], a), sample) for a in args.children)
            given = " and ".join(parts) if parts else "no arguments"
            return _Found(
                f"`{snippet}`: {token.value}() cannot be used with {given}",
                token.line,
                token.column,
            )
        if data == "expr" and len(node.children) == 3:
            test = cast(lark.Tree[Any], node.children[0])
            ok, value = self.value(test, sample)
            if ok and type(value) is bool:  # has() gives a Python bool, which celpy rejects here
                written = " ".join(self._snippet(test).split())
                return _Found(
                    f"`{snippet}`: cel-python cannot use has(...) directly as the test of "
                    f"'? :'; write `({written} == true) ? ...` instead",
                    *_where(test),
                )
        line, column = _where(node)
        return _Found(
            f"`{snippet}` cannot be evaluated: {_describe_error(exc)}"
            + (f" ({message})" if not detail else ""),
            line,
            column,
        )

    def _check_logic(self, node: lark.Tree[Any]) -> None:
        """``&&``, ``||`` and ``?:`` need true/false operands, and the two branches of ``?:``
        one type: celpy insists on neither, so a mistake would only show on some inputs."""
        operands: list[tuple[lark.Tree[Any], str]] = []
        if node.data in _LOGIC_SYMBOLS and len(node.children) == 2:
            symbol = _LOGIC_SYMBOLS[str(node.data)]
            operands = [(cast(lark.Tree[Any], child), symbol) for child in node.children]
        elif node.data == "expr" and len(node.children) == 3:
            operands = [(cast(lark.Tree[Any], node.children[0]), "?")]
        for operand, symbol in operands:
            for sample in self.samples:
                ok, value = self.value(operand, sample)
                if ok and not _is_bool(value):
                    line, column = _where(operand)
                    snippet = " ".join(self._snippet(operand).split())
                    what = (
                        "the test before '?' must be true or false"
                        if symbol == "?"
                        else f"'{symbol}' joins conditions that are true or false"
                    )
                    raise _Found(f"{what}, but `{snippet}` is {_kind_of(value)}", line, column)
        if node.data == "expr" and len(node.children) == 3:
            yes, no = cast(list[lark.Tree[Any]], node.children[1:])
            for sample in self.samples:
                ok_yes, yes_value = self.value(yes, sample)
                ok_no, no_value = self.value(no, sample)
                if not (ok_yes and ok_no) or yes_value is None or no_value is None:
                    continue
                if _kind_of(yes_value) != _kind_of(no_value):
                    line, column = _where(yes)
                    raise _Found(
                        f"the two results of '? :' must have the same type, but "
                        f"`{' '.join(self._snippet(yes).split())}` is {_kind_of(yes_value)} and "
                        f"`{' '.join(self._snippet(no).split())}` is {_kind_of(no_value)}",
                        line,
                        column,
                    )


# --------------------------------------------------------------------------- compiling


def _syntax_problem(text: str, exc: lark.exceptions.UnexpectedInput) -> _Found:
    line, column = exc.line, exc.column
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        char = exc.char
        if char == "=":
            reason = "a single '=' is not a comparison: write '==' (or '!=', '<=', '>=')"
        elif char in "'\"":
            reason = f"text starting with {char} is never closed: add the closing {char}"
        elif char == "&" or char == "|":
            reason = f"write '{char}{char}' for {'and' if char == '&' else 'or'}"
        else:
            reason = f"the character {char!r} cannot be used here"
        return _Found(f"syntax error: {reason}", line, column)
    token = getattr(exc, "token", None)
    if token is None or token.type == "$END" or isinstance(exc, lark.exceptions.UnexpectedEOF):
        stripped = text.rstrip()
        if not stripped:
            return _Found("the condition is empty", 1, 1)
        line, column = _line_column(text, len(stripped))
        expected = getattr(exc, "expected", None) or set()
        missing = ""
        if expected == {"RPAR"}:
            missing = ": a closing ')' is missing"
        elif expected == {"RSQB"}:
            missing = ": a closing ']' is missing"
        elif expected == {"RBRACE"}:
            missing = ": a closing '}' is missing"
        else:
            missing = f": something is missing after '{stripped.split()[-1]}'"
        return _Found(f"syntax error: the condition ends too early{missing}", line, column)
    value = str(token.value)
    if value in ("and", "or", "not"):
        symbol = {"and": "&&", "or": "||", "not": "!"}[value]
        reason = f"write '{symbol}' instead of '{value}'"
    elif token.type in ("RPAR", "RSQB", "RBRACE"):
        reason = f"'{value}' closes something that was never opened"
    else:
        reason = (
            f"'{value}' is not expected here (a missing operator such as &&, ||, ==, <, "
            f"or a missing comma?)"
        )
    return _Found(f"syntax error: {reason}", token.line, token.column)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: PolicyRule
    runner: celpy.Runner
    paths: tuple[str, ...]
    """Dotted input paths the condition reads, in order of appearance."""
    names: tuple[str, ...]
    """Top-level inputs it reads: only these are loaded into its activation (celpy's cost
    of loading a variable is a good part of an evaluation)."""
    parts: tuple[tuple[str, celpy.Runner], ...]
    """The condition's operations, innermost first, to name the cause of a run-time error."""

    def cause(self, context: Mapping[str, Any], exc: Exception) -> str:
        """What went wrong, naming the innermost part of the condition that failed."""
        for text, runner in self.parts:
            try:
                runner.evaluate(dict(context))
            except Exception as inner:
                if not _is_propagated(inner):
                    return f"{_describe_error(inner)} in `{text}`"
        return _describe_error(exc)


def _compile_rule(
    cel: _Cel,
    rule: PolicyRule,
    shape: Mapping[str, Any],
    samples: Sequence[dict[str, Any]],
) -> _CompiledRule:
    """Parse, check and compile one rule's condition; raises :class:`_Found`."""
    text = rule.when
    try:
        tree = cel.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_problem(text, exc) from None
    except lark.exceptions.LarkError as exc:  # pragma: no cover - lexer/parser internals
        raise _Found(f"syntax error: {exc}", None, None) from None
    static = _StaticCheck(shape)
    static.run(tree)
    parts = _TypeCheck(cel, text, samples).run(tree, static.skip, static.macros)
    # Compile the runtime program from a fresh parse: the checks above left no marks, but a
    # separate tree keeps the runtime program independent of them.
    runner = cel.compile(text)
    names = tuple(dict.fromkeys(path.split(".")[0] for path in static.paths))
    compiled = _CompiledRule(rule, runner, tuple(static.paths), names, tuple(parts))
    failures: list[str] = []
    for sample in samples:
        try:
            with cel.running():
                result = runner.evaluate(sample)
        except Exception as exc:
            with cel.running():
                cause = compiled.cause(sample, exc)
            if _is_structural(exc):
                raise _Found(f"the condition cannot be evaluated: {cause}", None, None) from None
            failures.append(cause)
            continue
        if not _is_bool(result):
            raise _Found(
                f"the condition must give true or false, but it gives {_kind_of(result)}"
                " (e.g. write 'amount > 0.0' rather than 'amount')",
                1,
                1,
            )
    if len(failures) == len(samples):
        raise _Found(f"the condition fails for every test input: {failures[0]}", None, None)
    return compiled


def _compile_rules(
    workflow: str, rules: Sequence[PolicyRule], shape: Mapping[str, Any]
) -> tuple[tuple[_CompiledRule, ...], list[PolicyProblem]]:
    cel = _Cel.get()
    fields = _fields(shape)
    samples = [
        {k: _to_cel(v) for k, v in _sample(fields, values).items()} for values in _SAMPLE_VALUES
    ]
    compiled: list[_CompiledRule] = []
    problems: list[PolicyProblem] = []
    for rule in rules:
        try:
            compiled.append(_compile_rule(cel, rule, shape, samples))
        except _Found as found:
            problems.append(
                PolicyProblem(
                    workflow=workflow,
                    policy=rule.name,
                    setting="when",
                    reason=found.reason,
                    line=found.line,
                    column=found.column,
                    source=rule.when,
                )
            )
    return tuple(compiled), problems


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the policies decided for one set of inputs. ``inputs_seen`` is JSON-able."""

    outcome: Outcome
    policy: str | None
    """The policy that decided (fired, or failed to evaluate); None when none fired."""
    policy_version: str
    """Full sha256 of the deciding policy; of the whole policy set when ``policy`` is None."""
    reason: str
    role: str | None = None
    deadline: timedelta | None = None
    on_timeout: OnTimeout | None = None
    escalate_to: str | None = None
    escalation_deadline: timedelta | None = None
    approvals: int = 0
    """Distinct approvals needed; 0 unless the outcome is ``ask``."""
    priority: int | None = None
    sampled: bool = False
    """True when sampling turned an ``allow`` into an audit ``ask``."""
    inputs_seen: dict[str, Any] = field(default_factory=dict)
    """The coerced values the policies saw (non-finite doubles as "NaN", "Infinity", ...)."""
    defaults_used: tuple[str, ...] = ()
    """Input fields that were absent (or None) and took their zero value."""
    error: str | None = None
    """Set when the deciding policy could not be evaluated (the outcome is then fail-safe)."""
    policy_set_version: str = ""
    """sha256 of the workflow's whole policy set (all rules, sampling, input shape)."""

    @property
    def short_version(self) -> str:
        return self.policy_version[:12]

    def as_record(self) -> dict[str, Any]:
        """The decision as a JSON-able dict (durations in seconds) for the journal."""

        def seconds(value: timedelta | None) -> float | None:
            return None if value is None else value.total_seconds()

        return {
            "outcome": self.outcome,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "policy_set_version": self.policy_set_version,
            "reason": self.reason,
            "role": self.role,
            "deadline": seconds(self.deadline),
            "on_timeout": self.on_timeout,
            "escalate_to": self.escalate_to,
            "escalation_deadline": seconds(self.escalation_deadline),
            "approvals": self.approvals,
            "priority": self.priority,
            "sampled": self.sampled,
            "inputs_seen": self.inputs_seen,
            "defaults_used": list(self.defaults_used),
            "error": self.error,
        }


def _show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return value
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, int) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(seen: Mapping[str, Any], path: str) -> Any:
    value: Any = seen
    for part in path.split("."):
        value = value[part]
    return value


def sample_point(workflow: str, decision_key: str) -> float:
    """Where a decision key falls in [0, 1): sampled when below the rate (sha256, stable)."""
    data = f"codara.review.sampling\x00{workflow}\x00{decision_key}"
    digest_bytes = hashlib.sha256(data.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest_bytes[:8], "big") / 2**64


class WorkflowPolicies(BaseModel):
    """A workflow's validated, compiled review policies. Build with :func:`load_policies`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str
    rules: tuple[PolicyRule, ...] = ()
    sampling: SamplingRule | None = None
    reject_reasons: tuple[str, ...] = ()
    """Reasons a reviewer may pick when rejecting (shown by the review console)."""
    policy_input: dict[str, Any] = Field(default_factory=dict)
    """The declared input shape: field -> "double" | "int" | "string" | "bool" | table."""

    _compiled: tuple[_CompiledRule, ...] = PrivateAttr(default=())
    _reader: _Reader = PrivateAttr()
    _version: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _drop_version(cls, data: Any) -> Any:
        return drop_computed_version(data)

    @field_validator("policy_input")
    @classmethod
    def _valid_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        shape, faults = check_shape(value)
        if faults:
            raise ValueError("; ".join(f"{where}: {reason}" for where, reason in faults))
        return shape

    def model_post_init(self, context: Any, /) -> None:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        problems = [
            PolicyProblem(self.workflow, name, "name", "two policies share this name")
            for name in duplicates
        ]
        compiled, compile_problems = _compile_rules(self.workflow, self.rules, self.policy_input)
        problems.extend(compile_problems)
        if problems:
            raise PolicyError(self.workflow, problems)
        self._compiled = compiled
        self._reader = _Reader(self.workflow, _fields(self.policy_input))
        self._version = digest(
            {
                "workflow": self.workflow,
                "rules": [rule.version for rule in self.rules],
                "sampling": self.sampling.version if self.sampling else None,
                "reject_reasons": list(self.reject_reasons),
                "policy_input": shape_digest_payload(self.policy_input),
            }
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def version(self) -> str:
        """sha256 (hex) over every rule's version, sampling, reject reasons and input shape."""
        return self._version

    def evaluate(self, values: Mapping[str, Any], *, decision_key: str) -> Decision:
        """Decide for ``values`` (of the declared shape); see the module docs for semantics.

        ``decision_key`` identifies the decision for sampling (e.g. ``f"{run_id}:{step}"``):
        the same key always gets the same answer. Raises :class:`PolicyInputError` only for
        values that cannot be read as their declared type.
        """
        activation, seen, defaults = self._reader.read(values)
        fired: _CompiledRule | None = None
        failed: tuple[_CompiledRule, str] | None = None
        with _Cel.get().running():
            for compiled in self._compiled:
                context = {n: activation[n] for n in compiled.names}
                try:
                    result = compiled.runner.evaluate(context)
                except Exception as exc:
                    failed = (compiled, compiled.cause(context, exc))
                    break
                if not _is_bool(result):
                    failed = (compiled, f"it gave {_kind_of(result)} instead of true/false")
                    break
                if result:
                    fired = compiled
                    break
        if failed is not None:
            return self._fail_safe(failed[0], failed[1], seen, defaults)
        if fired is not None:
            decision = self._fired(fired, seen, defaults)
            if decision.outcome == "allow":
                return self._maybe_sample(decision, decision_key)
            return decision
        checked = ", ".join(rule.name for rule in self.rules)
        decision = Decision(
            outcome="allow",
            policy=None,
            policy_version=self._version,
            reason=f"no policy applied (checked: {checked})" if checked else "no policies",
            inputs_seen=seen,
            defaults_used=defaults,
            policy_set_version=self._version,
        )
        return self._maybe_sample(decision, decision_key)

    def _review_fields(self, rule: PolicyRule | SamplingRule) -> dict[str, Any]:
        return {
            "role": rule.role,
            "deadline": rule.deadline,
            "on_timeout": rule.on_timeout,
            "escalate_to": rule.escalate_to,
            "escalation_deadline": rule.escalation_deadline,
            "approvals": rule.approvals,
        }

    def _fired(
        self, compiled: _CompiledRule, seen: dict[str, Any], defaults: tuple[str, ...]
    ) -> Decision:
        rule = compiled.rule
        shown = ", ".join(f"{p}={_show_value(_lookup(seen, p))}" for p in compiled.paths)
        condition = " ".join(rule.when.split())
        reason = f"{rule.name}: {condition} was true" + (f" ({shown})" if shown else "")
        review = self._review_fields(rule) if rule.outcome == "ask" else {}
        return Decision(
            outcome=rule.outcome,
            policy=rule.name,
            policy_version=rule.version,
            reason=reason,
            priority=rule.priority,
            inputs_seen=seen,
            defaults_used=defaults,
            policy_set_version=self._version,
            **review,
        )

    def _fail_safe(
        self,
        compiled: _CompiledRule,
        error: str,
        seen: dict[str, Any],
        defaults: tuple[str, ...],
    ) -> Decision:
        rule = compiled.rule
        logger.warning(
            "workflow %r policy %r could not be evaluated (%s); failing safe",
            self.workflow,
            rule.name,
            error,
        )
        shown = ", ".join(f"{p}={_show_value(_lookup(seen, p))}" for p in compiled.paths)
        inputs = f" with {shown}" if shown else ""
        if rule.role is not None:
            return Decision(
                outcome="ask",
                policy=rule.name,
                policy_version=rule.version,
                reason=(
                    f"{rule.name}: the policy could not be evaluated{inputs} ({error}); "
                    f"sent to {rule.role} for review as a precaution"
                ),
                priority=rule.priority,
                inputs_seen=seen,
                defaults_used=defaults,
                error=error,
                policy_set_version=self._version,
                **self._review_fields(rule),
            )
        return Decision(
            outcome="deny",
            policy=rule.name,
            policy_version=rule.version,
            reason=(
                f"{rule.name}: the policy could not be evaluated{inputs} ({error}); "
                "denied as a precaution (the policy names no reviewer role)"
            ),
            priority=rule.priority,
            inputs_seen=seen,
            defaults_used=defaults,
            error=error,
            policy_set_version=self._version,
        )

    def _maybe_sample(self, decision: Decision, decision_key: str) -> Decision:
        sampling = self.sampling
        if sampling is None or sampling.rate <= 0.0:
            return decision
        if sample_point(self.workflow, decision_key) >= sampling.rate:
            return decision
        return Decision(
            outcome="ask",
            policy=decision.policy,
            policy_version=decision.policy_version,
            reason=(
                f"{decision.reason}; picked for audit review by sampling (rate {sampling.rate:.4g})"
            ),
            priority=decision.priority,
            sampled=True,
            inputs_seen=decision.inputs_seen,
            defaults_used=decision.defaults_used,
            policy_set_version=self._version,
            **self._review_fields(sampling),
        )


# --------------------------------------------------------------------------- loading

_WORKFLOW_KEYS = ("policies", "policy_input", "sampling", "reject_reasons")
_KEY_ALIASES = {
    "policy": "policies",
    "rules": "policies",
    "sample": "sampling",
    "inputs": "policy_input",
    "input": "policy_input",
    "policy_inputs": "policy_input",
    "reject_reason": "reject_reasons",
}


def _workflow_table(raw: Mapping[str, Any], workflow: str) -> object:
    if not any(key in raw for key in _WORKFLOW_KEYS):
        workflows = raw.get("workflows")
        if isinstance(workflows, Mapping):
            return workflows.get(workflow, {})
        if isinstance(raw.get(workflow), Mapping):
            return raw[workflow]
    return raw


def load_policies(raw: Mapping[str, Any], *, workflow: str) -> WorkflowPolicies:
    """Validate and compile a workflow's review policies.

    ``raw`` is the parsed ``codara.toml`` document, its ``[workflows]`` table, or the
    workflow's own table (``[workflows.<workflow>]``). Keys of that table other than
    ``policies``, ``policy_input``, ``sampling`` and ``reject_reasons`` belong to other
    settings and are ignored, unless they look like a misspelling of one of those. A workflow
    with no policies allows everything (subject to sampling).

    Raises :class:`PolicyError` listing every problem found.
    """
    problems: list[PolicyProblem] = []

    def problem(policy: str | None, setting: str | None, reason: str) -> None:
        problems.append(PolicyProblem(workflow, policy, setting, reason))

    table = _workflow_table(raw, workflow) if isinstance(raw, Mapping) else raw
    if not isinstance(table, Mapping):
        problem(None, None, f"[workflows.{workflow}] must be a table")
        raise PolicyError(workflow, problems)

    for key in table:
        if key in _WORKFLOW_KEYS or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, _WORKFLOW_KEYS, n=1, cutoff=0.75)
        guess = _KEY_ALIASES.get(key) or (close[0] if close else None)
        if guess is not None:
            problem(
                None, key, f"unknown key '{key}' in [workflows.{workflow}]; did you mean '{guess}'?"
            )

    shape, shape_faults = check_shape(table.get("policy_input", {}))
    for where, reason in shape_faults:
        problem(None, where, reason)

    rules: list[PolicyRule] = []
    raw_rules = table.get("policies", [])
    if isinstance(raw_rules, Mapping):
        problem(
            None,
            "policies",
            f"policies must be a list of tables: write [[workflows.{workflow}.policies]] "
            "(double brackets) above each policy",
        )
        raw_rules = []
    elif not isinstance(raw_rules, list):
        problem(None, "policies", "policies must be a list of tables")
        raw_rules = []
    seen_names: set[str] = set()
    for index, raw_rule in enumerate(raw_rules, 1):
        name = raw_rule.get("name") if isinstance(raw_rule, Mapping) else None
        label = name if isinstance(name, str) and name.strip() else f"policy #{index}"
        if not isinstance(raw_rule, Mapping):
            problem(label, None, "each policy must be a table of settings")
            continue
        try:
            rule = PolicyRule.model_validate(raw_rule)
        except ValidationError as exc:
            for setting, reason in problems_from_validation(exc, PolicyRule):
                problem(label, setting, reason)
            continue
        if rule.name in seen_names:
            problem(rule.name, "name", "two policies share this name; names must be unique")
            continue
        seen_names.add(rule.name)
        rules.append(rule)

    sampling: SamplingRule | None = None
    if "sampling" in table:
        try:
            sampling = SamplingRule.model_validate(table["sampling"])
        except ValidationError as exc:
            for setting, reason in problems_from_validation(exc, SamplingRule):
                problem(None, f"sampling.{setting}" if setting else "sampling", reason)

    reject_reasons = table.get("reject_reasons", [])
    if not isinstance(reject_reasons, list) or not all(
        isinstance(r, str) and r.strip() for r in reject_reasons
    ):
        problem(
            None, "reject_reasons", 'reject_reasons must be a list of texts, e.g. ["wrong_intent"]'
        )
        reject_reasons = []
    elif len(set(reject_reasons)) != len(reject_reasons):
        problem(None, "reject_reasons", "reject_reasons lists the same reason twice")

    if problems:
        if not shape_faults:  # report broken conditions too, in the same error
            problems.extend(_compile_rules(workflow, rules, shape)[1])
        raise PolicyError(workflow, problems)
    return WorkflowPolicies(
        workflow=workflow,
        rules=tuple(rules),
        sampling=sampling,
        reject_reasons=tuple(reject_reasons),
        policy_input=shape,
    )
