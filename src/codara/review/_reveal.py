"""Which reviewer roles may see the original behind a token, from ``[privacy] reveal``.

A review shows tokens (``<card:cf5b63d5ab01>``), never personal values. Some decisions need
the real value: a fraud reviewer compares the card number with the issuer's list. The
deployment says which roles may reveal which kinds:

.. code-block:: toml

    [privacy]
    reveal = { fraud = ["card", "iban"] }

Nobody else may, admins included (a role listed here is the only way). Each reveal is one
deliberate request for one token of an open item the reviewer may decide, with a purpose;
it is recorded in the item's hash-chained history and in ``codara_unmask_events``
(:meth:`Reviews.reveal <codara.review.Reviews.reveal>`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from codara.errors import ConfigError
from codara.privacy import KINDS, TOKEN, kind_of
from codara.review._items import Principal

__all__ = ["PURPOSE_MAX", "RevealRules", "Revealed", "kind_of", "tokens_in"]

_ROLE = re.compile(r"^[a-z0-9_-]{1,50}$")
PURPOSE_MAX = 500
"""Longest purpose a reviewer may give for a reveal, in characters."""


@dataclass(frozen=True)
class Revealed:
    """One original a reviewer asked to see (never stored, never logged)."""

    token: str
    kind: str
    value: str


@dataclass(frozen=True)
class RevealRules:
    """role -> the kinds of personal value its holders may reveal in a review."""

    by_role: Mapping[str, frozenset[str]]

    @classmethod
    def none(cls) -> RevealRules:
        return cls({})

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str) -> RevealRules:
        """``[privacy]`` of ``where`` (a file name, for messages), validated."""
        unknown = sorted(set(section) - {"reveal"})
        if unknown:
            raise ConfigError(
                f"[privacy] in {where} has unknown key(s): {', '.join(unknown)}",
                hint="[privacy] has one key, reveal = { ROLE = [KIND, ...] } (docs/privacy.md)",
            )
        reveal = section.get("reveal", {})
        if not isinstance(reveal, Mapping):
            raise ConfigError(
                f"[privacy] reveal in {where} must be a table of role = [kinds]",
                hint='for example: reveal = { fraud = ["card", "iban"] }',
            )
        rules: dict[str, frozenset[str]] = {}
        for role, kinds in reveal.items():
            if not isinstance(role, str) or not _ROLE.match(role):
                raise ConfigError(
                    f"[privacy] reveal in {where}: {role!r} is not a role name",
                    hint="roles are 1-50 lower-case letters, digits, '_' or '-'",
                )
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise ConfigError(
                    f"[privacy] reveal.{role} in {where} must be a list of kinds",
                    hint=f"kinds: {', '.join(KINDS)}",
                )
            bad = sorted(set(kinds) - set(KINDS))
            if bad:
                raise ConfigError(
                    f"[privacy] reveal.{role} in {where}: unknown kind(s) {', '.join(bad)}",
                    hint=f"kinds: {', '.join(KINDS)}",
                )
            rules[role] = frozenset(kinds)
        return cls(rules)

    def kinds_for(self, who: Principal) -> frozenset[str]:
        """The kinds ``who`` may reveal: the union over their roles."""
        return frozenset().union(*(self.by_role.get(r, frozenset()) for r in who.roles))


def tokens_in(texts: Iterable[str | None]) -> list[str]:
    """The distinct tokens in ``texts`` (JSON or plain), in order of first appearance."""
    seen: dict[str, None] = {}
    for text in texts:
        if text:
            for m in TOKEN.finditer(text):
                seen.setdefault(m.group(0), None)
    return list(seen)
