"""Load-time checks of a workflow's policy conditions, and compiling them.

Each ``when`` is parsed (syntax errors with line:column, :mod:`~codara.review.policy._parse`),
its names are checked against the declared input shape (with a "did you mean") and CEL's
functions (:class:`NameCheck`), each of its operations is type-checked on samples of the
shape (:mod:`~codara.review.policy._types`), and finally the whole condition must give true or
false for at least one sample. A condition that fails only for some values (``100 / count``)
is accepted: at run time it fails safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import lark

from codara.review.policy._errors import PolicyProblem, did_you_mean
from codara.review.policy._eval import CompiledRule, is_bool, is_structural, kind_of
from codara.review.policy._input import TYPE_NAMES, InputField, samples, shape_paths
from codara.review.policy._parse import (
    FUNCTIONS,
    MACROS,
    Cel,
    Found,
    string_literal,
    syntax_problem,
    unwrap,
    where,
)
from codara.review.policy._schema import PolicyRule
from codara.review.policy._types import TypeCheck

__all__ = ["NameCheck", "compile_rules"]


class NameCheck:
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
        node = unwrap(node)
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
            key = string_literal(cast(lark.Tree[Any], index))
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
                    line, column = where(at)
                    if not walked:
                        known = shape_paths(self.shape)
                        listing = ", ".join(known) if known else "none are declared"
                        raise Found(
                            f"'{name}' is not a declared input of this workflow."
                            f"{did_you_mean(name, list(self.shape))} Declared inputs: {listing}",
                            line,
                            column,
                        )
                    parent = ".".join(walked)
                    raise Found(
                        f"'{parent}' has no field '{name}'.{did_you_mean(name, list(spec))} "
                        f"Its fields: {', '.join(sorted(spec)) or 'none'}",
                        line,
                        column,
                    )
                spec = spec[name]
                walked.append(name)
            else:
                line, column = where(at)
                parent = ".".join(walked)
                raise Found(
                    f"'{parent}' is a single value ({spec}), it has no field '{name}'",
                    line,
                    column,
                )
        dotted = ".".join(walked)
        if dotted not in self.paths:
            self.paths.append(dotted)

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
                self.skip.add(id(args))
            elif name not in FUNCTIONS or name in MACROS:
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
            if name in MACROS:
                self._macro(node, name, token, args, scope)
                return
            if name not in FUNCTIONS:
                self._unknown_function(token)
            if args is not None:
                self._visit(args, scope)
            return
        if data == "member_object":
            line, column = where(node)
            raise Found("building messages (Type{field: value}) is not supported", line, column)
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
        variable = unwrap(cast(lark.Tree[Any], exprs[0])) if exprs else None
        if (
            variable is None
            or len(exprs) < 2
            or variable.data != "ident"
            or not isinstance(variable.children[0], lark.Token)
        ):
            raise Found(
                f"{name}() takes a variable name and a condition, e.g. [1, 2].{name}(x, x > 1)",
                token.line,
                token.column,
            )
        assert isinstance(args, lark.Tree)
        self.skip.add(id(args))
        bound = str(variable.children[0].value)
        self.macros[id(node)] = (bound, [cast(lark.Tree[Any], e) for e in exprs[1:]])
        inner = scope | {bound}
        for expr in exprs[1:]:
            self._visit(expr, inner)

    @staticmethod
    def _unknown_function(token: lark.Token) -> None:
        name = str(token.value)
        known = sorted(FUNCTIONS - {"dyn"})
        raise Found(
            f"'{name}' is not a function conditions can use.{did_you_mean(name, known)} "
            f"Functions: {', '.join(known)}",
            token.line,
            token.column,
        )


# --------------------------------------------------------------------------- compiling


def _compile_rule(
    cel: Cel, rule: PolicyRule, shape: Mapping[str, Any], checks: Sequence[dict[str, Any]]
) -> CompiledRule:
    """Parse, check and compile one rule's condition; raises :class:`Found`."""
    text = rule.when
    try:
        tree = cel.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise syntax_problem(text, exc) from None
    except lark.exceptions.LarkError as exc:  # pragma: no cover - lexer/parser internals
        raise Found(f"syntax error: {exc}", None, None) from None
    names = NameCheck(shape)
    names.run(tree)
    parts = TypeCheck(cel, text, checks).run(tree, names.skip, names.macros)
    # The runtime program comes from its own parse of the text (cached by text): the tree
    # above served the checks only.
    compiled = CompiledRule(rule, cel.compile(text), tuple(names.paths), tuple(parts))
    failures: list[str] = []
    for sample in checks:
        try:
            result = cel.evaluate(compiled.runner, sample)
        except Exception as exc:
            with cel.running():
                cause = compiled.cause(sample, exc)
            if is_structural(exc):
                raise Found(f"the condition cannot be evaluated: {cause}", None, None) from None
            failures.append(cause)
            continue
        if not is_bool(result):
            raise Found(
                f"the condition must give true or false, but it gives {kind_of(result)}"
                " (e.g. write 'amount > 0.0' rather than 'amount')",
                1,
                1,
            )
    if len(failures) == len(checks):
        raise Found(f"the condition fails for every test input: {failures[0]}", None, None)
    return compiled


def compile_rules(
    workflow: str,
    rules: Sequence[PolicyRule],
    shape: Mapping[str, Any],
    fields: tuple[InputField, ...],
) -> tuple[tuple[CompiledRule, ...], list[PolicyProblem]]:
    """The compiled rules, and a problem for each rule whose condition cannot be used.

    ``fields`` are those of ``shape`` (:func:`~codara.review.policy._input.fields_of`).
    """
    cel = Cel.get()
    checks = samples(fields)
    compiled: list[CompiledRule] = []
    problems: list[PolicyProblem] = []
    for rule in rules:
        try:
            compiled.append(_compile_rule(cel, rule, shape, checks))
        except Found as found:
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
