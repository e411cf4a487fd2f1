"""The process's CEL environment, parsing, and positions of faults within a condition.

cel-python 0.5.0 notes
----------------------
* One runner kind per process: ``CompiledRunner`` (transpiles to Python, about 5x faster than
  the interpreter). celpy keeps one shared parser whose tree class must match the runner;
  this module parses with its own (same grammar and options, and ``true``/``false`` keep
  their source positions, which celpy's lexer callback drops). If celpy has no shared parser
  yet, ours becomes it, so the process builds the grammar once. ``InterpretedRunner`` users
  created later keep working with it.
* ``CompiledRunner`` evaluates through module-level state in ``celpy.evaluation``, so
  evaluations take a process-wide lock (once per decision, not per policy).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import celpy
import celpy.celparser
import celpy.evaluation
import lark
from celpy.evaluation import TranspilerTree

__all__ = [
    "FUNCTIONS",
    "MACROS",
    "Cel",
    "Found",
    "line_column",
    "quiet",
    "string_literal",
    "syntax_problem",
    "unwrap",
    "where",
]

MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
"""CEL's macros: a variable and an expression evaluated for each element."""
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
FUNCTIONS = frozenset(
    {name for name in celpy.evaluation.base_functions if _IDENT.fullmatch(name) and name[0] != "_"}
    | {"has", "dyn"}
    | MACROS
)
"""The function names a condition may use."""

quiet = threading.local()
"""``quiet.on`` is True while this thread evaluates under :attr:`Cel.lock` and handles the
errors itself: celpy's own ERROR log record for them is dropped."""


class _QuietWhileEvaluating(logging.Filter):
    """Drop celpy's own ERROR record for an evaluation error that this package handles."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(quiet, "on", False)


def _bool_literal(token: lark.Token) -> lark.Token:
    """celpy's IDENT callback (``true``/``false`` are BOOL_LIT), keeping the position."""
    if token.value in ("true", "false"):
        return lark.Token.new_borrow_pos("BOOL_LIT", token.value, token)
    return token


class Cel:
    """The process's CEL environment (CompiledRunner only), its parser and a lock."""

    _instance: Cel | None = None
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
        logging.getLogger("celpy.Transpiler").addFilter(_QuietWhileEvaluating())

    @classmethod
    def get(cls) -> Cel:
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
        """Hold the lock and keep celpy quiet about the evaluation errors handled inside.

        For load-time checks; :class:`codara.review.policy._eval.Engine` does the same inline,
        once for all the policies of a decision.
        """
        with self.lock:
            quiet.on = True
            try:
                yield
            finally:
                quiet.on = False

    def evaluate(self, runner: celpy.Runner, context: dict[str, Any]) -> Any:
        """Evaluate one program (at load time), see :meth:`running`."""
        with self.running():
            return runner.evaluate(context)


# --------------------------------------------------------------------------- positions


class Found(Exception):
    """A fault in a condition, with its 1-based position when it has one."""

    def __init__(self, reason: str, line: int | None, column: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column


_WRAPPERS = frozenset(
    {
        "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
        "unary", "member", "primary", "paren_expr",
    }
)  # fmt: skip


def unwrap(node: lark.Tree[Any]) -> lark.Tree[Any]:
    """The node under single-child grammar wrappers (``expr`` -> ... -> ``literal``)."""
    while (
        node.data in _WRAPPERS
        and len(node.children) == 1
        and isinstance(node.children[0], lark.Tree)
    ):
        node = node.children[0]
    return node


def where(node: lark.Tree[Any] | lark.Token) -> tuple[int | None, int | None]:
    """(line, column) of a node or token, (None, None) when it has no position."""
    if isinstance(node, lark.Token):
        return node.line, node.column
    meta = node.meta
    if getattr(meta, "empty", True):
        return None, None
    return getattr(meta, "line", None), getattr(meta, "column", None)


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a 0-based offset in ``text``."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def string_literal(node: lark.Tree[Any]) -> str | None:
    """The value of a string literal node, None for anything else."""
    node = unwrap(node)
    if node.data == "literal" and node.children:
        token = node.children[0]
        if isinstance(token, lark.Token) and token.type in ("STRING_LIT", "MLSTRING_LIT"):
            return str(celpy.evaluation.celstr(token))
    return None


_CLOSERS = {"RPAR": "')'", "RSQB": "']'", "RBRACE": "'}'"}


def syntax_problem(text: str, exc: lark.exceptions.UnexpectedInput) -> Found:
    """A syntax error from lark, explained with its position."""
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
        return Found(f"syntax error: {reason}", line, column)
    token = getattr(exc, "token", None)
    if token is None or token.type == "$END" or isinstance(exc, lark.exceptions.UnexpectedEOF):
        stripped = text.rstrip()
        if not stripped:
            return Found("the condition is empty", 1, 1)
        line, column = line_column(text, len(stripped))
        expected = getattr(exc, "expected", None) or set()
        missing = f": something is missing after '{stripped.split()[-1]}'"
        for terminal, closer in _CLOSERS.items():
            if expected == {terminal}:
                missing = f": a closing {closer} is missing"
        return Found(f"syntax error: the condition ends too early{missing}", line, column)
    value = str(token.value)
    if value in ("and", "or", "not"):
        symbol = {"and": "&&", "or": "||", "not": "!"}[value]
        reason = f"write '{symbol}' instead of '{value}'"
    elif token.type in _CLOSERS:
        reason = f"'{value}' closes something that was never opened"
    else:
        reason = (
            f"'{value}' is not expected here (a missing operator such as &&, ||, ==, <, "
            f"or a missing comma?)"
        )
    return Found(f"syntax error: {reason}", token.line, token.column)
