"""The connectors' common contract: batches hold JSON the journal can replay as read."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from pydantic import ValidationError

from codara.sources import Batch, Rejected, SourceConfig, json_value


def test_json_value_turns_driver_values_into_json_that_round_trips() -> None:
    when = dt.datetime(2026, 12, 2, 5, 10, tzinfo=dt.UTC)
    row = {
        "at": when,
        "day": dt.date(2026, 12, 2),
        "amount": Decimal("1234.50"),
        "blob": b"\x00\xff",
        "id": uuid.UUID(int=7),
        "nan": float("nan"),
        "ratio": 0.25,
        "tags": ("a", "b"),
        "nested": {1: Decimal("NaN")},
        "wait": dt.timedelta(minutes=2),
    }
    out = json_value(row)
    assert out == {
        "at": "2026-12-02T05:10:00+00:00",
        "day": "2026-12-02",
        "amount": "1234.50",  # a string: no float rounding of money
        "blob": "AP8=",
        "id": "00000000-0000-0000-0000-000000000007",
        "nan": None,
        "ratio": 0.25,
        "tags": ["a", "b"],
        "nested": {"1": None},
        "wait": 120.0,
    }
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_a_batch_counts_what_it_read_accepted_and_rejected() -> None:
    bad = Rejected(raw="a;b;c", reason="line 3 has 3 fields, the header has 2",
                   rule="ragged_row", where="inbox.csv:3")  # fmt: skip
    batch = Batch(rows=[{"a": 1}, {"a": 2}], rejected=[bad], cursor=42)
    assert batch.seen == 3


def test_source_config_refuses_unknown_keys_and_bad_limits() -> None:
    assert SourceConfig(kind="sql").batch_rows == 1000
    with pytest.raises(ValidationError, match="batch_rowz"):
        SourceConfig.model_validate({"kind": "sql", "batch_rowz": 10})
    with pytest.raises(ValidationError, match="greater than 0"):
        SourceConfig(kind="file", max_age=0)
    with pytest.raises(ValidationError, match="'refuse' or 'flag'"):
        SourceConfig.model_validate({"kind": "file", "on_stale": "ignore"})
