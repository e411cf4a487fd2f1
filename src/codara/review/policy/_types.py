"""Load-time type check of a condition.

celpy has no type checker, so each operation in the condition is compiled and evaluated on its
own against three samples of the declared shape (zeros, small values, other values); a type
error is reported with its position even inside a branch the samples would not take (macro
bodies are checked with their variable bound to elements of their target). ``&&``/``||``/``?:``
must get true/false, and both results of ``?:`` one type: celpy insists on neither, so a
mistake would otherwise only show on some inputs.

cel-python 0.5.0 quirks this explains: ints and doubles do not mix (``1 < 2.5`` is an error,
``2.5 > 1`` happens to work); ``has(x)`` gives a Python bool that celpy's ``!`` and ``? :``
reject, so the check says to write ``has(x) == false``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import celpy
import lark
from celpy import celtypes

from codara.review.policy._eval import cel_error, describe_error, is_bool, is_structural, kind_of
from codara.review.policy._parse import MACROS, Cel, Found, line_column, unwrap, where

__all__ = ["TypeCheck"]

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


class TypeCheck:
    """Evaluates each operation of a condition on its own, against samples of the shape."""

    def __init__(self, cel: Cel, text: str, samples: Sequence[dict[str, Any]]) -> None:
        self.cel = cel
        self.text = text
        self.samples = samples
        self._runners: dict[tuple[int, int], celpy.Runner | None] = {}

    def _snippet(self, node: lark.Tree[Any]) -> str:
        return self.text[node.meta.start_pos : node.meta.end_pos]

    def _flat(self, node: lark.Tree[Any]) -> str:
        """The node's text on one line, for messages."""
        return " ".join(self._snippet(node).split())

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
            return True, self.cel.evaluate(runner, sample)
        except Exception as exc:
            return False, exc

    def run(
        self,
        tree: lark.Tree[Any],
        skip: set[int],
        macros: Mapping[int, tuple[str, list[lark.Tree[Any]]]],
    ) -> list[tuple[str, celpy.Runner]]:
        """Raise :class:`Found` for the innermost operation that fails on types; return the
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
                if ok or not isinstance(result, Exception) or not is_structural(result):
                    continue
                if all(self.value(operand, sample)[0] for operand in operands):
                    raise self._explain(node, sample, result)
                # else an operand failed on this sample's values: the cause is there
            runner = self._runner(node)
            if runner is not None:
                parts.append((self._flat(node), runner))
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
        inner = TypeCheck(self.cel, self.text, bound)
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
            if name in MACROS or name == "has":
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
        return line_column(self.text, offset)

    def _describe(self, node: lark.Tree[Any], sample: dict[str, Any]) -> str:
        ok, value = self.value(node, sample)
        snippet = self._flat(node)
        return f"{kind_of(value)} `{snippet}`" if ok else f"`{snippet}`"

    def _explain(self, node: lark.Tree[Any], sample: dict[str, Any], exc: Exception) -> Found:
        snippet = self._flat(node)
        message, _, detail = cel_error(exc)
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
                return Found(reason, line, column)
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
                literal = unwrap(whole)
                written = self._snippet(whole).strip()
                if literal.data == "literal":
                    reason += (
                        f". Whole numbers and decimals do not mix: write {written}.0 instead "
                        f"of {written}"
                    )
                else:
                    reason += f". Whole numbers and decimals do not mix: write double({written})"
            return Found(reason, line, column)
        if data == "unary" and len(node.children) == 2:
            operator, operand = cast(list[lark.Tree[Any]], node.children)
            ok, value = self.value(operand, sample)
            if ok and type(value) is bool:  # has() gives a Python bool, which celpy can't negate
                written = self._flat(operand)
                return Found(
                    f"`{snippet}`: cel-python cannot apply '!' to has(...) directly; write "
                    f"`{written} == false` instead",
                    *where(operator),
                )
            needs = "true/false" if operator.data == "unary_not" else "a number"
            symbol = "!" if operator.data == "unary_not" else "-"
            line, column = where(operator)
            return Found(
                f"`{snippet}`: '{symbol}' needs {needs}, but gets "
                f"{self._describe(operand, sample)}",
                line,
                column,
            )
        if data in ("member_dot_arg", "ident_arg", "dot_ident_arg"):
            name_at = 1 if data == "member_dot_arg" else 0
            token = cast(lark.Token, node.children[name_at])
            if token.value in MACROS:
                return Found(
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
            return Found(
                f"`{snippet}`: {token.value}() cannot be used with {given}",
                token.line,
                token.column,
            )
        if data == "expr" and len(node.children) == 3:
            test = cast(lark.Tree[Any], node.children[0])
            ok, value = self.value(test, sample)
            if ok and type(value) is bool:  # has() gives a Python bool, which celpy rejects here
                written = self._flat(test)
                return Found(
                    f"`{snippet}`: cel-python cannot use has(...) directly as the test of "
                    f"'? :'; write `({written} == true) ? ...` instead",
                    *where(test),
                )
        line, column = where(node)
        return Found(
            f"`{snippet}` cannot be evaluated: {describe_error(exc)}"
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
                if ok and not is_bool(value):
                    line, column = where(operand)
                    snippet = self._flat(operand)
                    what = (
                        "the test before '?' must be true or false"
                        if symbol == "?"
                        else f"'{symbol}' joins conditions that are true or false"
                    )
                    raise Found(f"{what}, but `{snippet}` is {kind_of(value)}", line, column)
        if node.data == "expr" and len(node.children) == 3:
            yes, no = cast(list[lark.Tree[Any]], node.children[1:])
            for sample in self.samples:
                ok_yes, yes_value = self.value(yes, sample)
                ok_no, no_value = self.value(no, sample)
                if not (ok_yes and ok_no) or yes_value is None or no_value is None:
                    continue
                if kind_of(yes_value) != kind_of(no_value):
                    line, column = where(yes)
                    raise Found(
                        f"the two results of '? :' must have the same type, but "
                        f"`{self._flat(yes)}` is {kind_of(yes_value)} and "
                        f"`{self._flat(no)}` is {kind_of(no_value)}",
                        line,
                        column,
                    )
