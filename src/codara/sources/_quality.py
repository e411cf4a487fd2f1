"""Quality: each record a connector accepted is checked against the source's model.

The model is a pydantic model (``record_model``): its fields, types, constraints and
validators are the rules. A record it refuses becomes a :class:`Rejected` with the rule
``schema.<field>`` (``schema`` for a rule of the whole record) and pydantic's message, so
``in = accepted + quarantined`` holds for every read: nothing is dropped silently. A field
the model does not know is refused too (rule ``unknown_field``) unless the contract is
``evolve``, which keeps it. What a refused record does to the read (``freeze`` fails it) is
the engine's business; this module only sorts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from codara.sources._base import JSON, Batch, Rejected, json_value

__all__ = ["Sorted", "sort_records"]


@dataclass(frozen=True, slots=True)
class Sorted:
    rows: list[dict[str, JSON]]
    rejected: list[Rejected] = field(default_factory=list)
    """The connector's rejects first, then the model's, each in reading order."""


def _where(index: int) -> str:
    return f"record {index + 1} of the batch"


def _refusal(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    rule = f"schema.{loc}" if loc else "schema"
    reason = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in errors[:5]
    )
    if len(errors) > 5:
        reason += f"; and {len(errors) - 5} more"
    return rule, reason


def sort_records(
    batch: Batch,
    model: type[BaseModel] | None,
    contract: str,
    *,
    positions: Sequence[str] | None = None,
) -> Sorted:
    """Split ``batch.rows`` into those ``model`` accepts (as the model dumps them, in JSON
    mode) and those it refuses; ``batch.rejected`` are kept in front. ``positions`` names
    each row's place in the source when the connector knows it."""
    if model is None:
        return Sorted(list(batch.rows), list(batch.rejected))
    known = set(model.model_fields)
    rows: list[dict[str, JSON]] = []
    rejected = list(batch.rejected)
    for index, row in enumerate(batch.rows):
        where = positions[index] if positions is not None else _where(index)
        extra = [k for k in row if k not in known]
        if extra and contract != "evolve":
            rejected.append(
                Rejected(
                    raw=row,
                    reason=f"fields the model {model.__name__} does not know: "
                    + ", ".join(sorted(extra)[:10]),
                    rule="unknown_field",
                    where=where,
                )
            )
            continue
        try:
            valid = model.model_validate({k: v for k, v in row.items() if k in known})
        except ValidationError as exc:
            rule, reason = _refusal(exc)
            rejected.append(Rejected(raw=row, reason=reason, rule=rule, where=where))
            continue
        out = json_value(valid.model_dump(mode="json"))
        assert isinstance(out, dict)
        if extra:
            out.update({k: row[k] for k in extra})
        rows.append(out)
    return Sorted(rows, rejected)
