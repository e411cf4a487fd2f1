"""Property: whatever mix of good and broken records a file holds, every record comes out
exactly once, as a row or as a rejected record with the right rule and line, and reading
batch by batch from fresh sources resumed at each cursor gives the same as one read.

In = rows + rejected, always: the quality report's arithmetic rests on it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codara.sources import Batch, Rejected
from codara.sources._files import FileSource, FileSourceConfig

TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"), max_size=8)
TOKEN = st.text("abcxyz019", min_size=1, max_size=5)
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3(", b"\xe2\x82", b"\x80abc", b"caf\xe9"])
ENDING = st.sampled_from([b"\n", b"\r\n"])
Expected = tuple[bytes, dict[str, Any] | None, str | None]  # bytes, row or None, rule or None


@st.composite
def csv_record(draw: st.DrawFn, n: int) -> Expected:
    kind = draw(st.sampled_from(["good", "good", "good", "ragged", "bytes", "blank", "quote"]))
    end = draw(ENDING)
    if kind == "good":
        row = {"id": str(n), "name": draw(TEXT), "note": draw(TEXT)}
        out = io.StringIO()
        csv.writer(out, lineterminator=end.decode()).writerow(row.values())
        return out.getvalue().encode(), row, None
    if kind == "ragged":
        fields = draw(st.lists(TOKEN, min_size=1, max_size=5).filter(lambda f: len(f) != 3))
        return ",".join(fields).encode() + end, None, "ragged_row"
    if kind == "bytes":
        return f"{n},".encode() + draw(BAD_BYTES) + b",x" + end, None, "encoding"
    if kind == "blank":
        return end, None, "blank_line"
    return f'{n},"a"b,c'.encode() + end, None, "csv"


@st.composite
def jsonl_record(draw: st.DrawFn, n: int) -> Expected:
    kind = draw(st.sampled_from(["good", "good", "good", "json", "not_object", "bytes", "blank"]))
    end = draw(ENDING)
    if kind == "good":
        value = st.one_of(
            st.integers(-(2**63), 2**63 - 1), TEXT, st.booleans(), st.none(),
            st.lists(st.integers(0, 9), max_size=3),
        )  # fmt: skip
        row = {"n": n, **draw(st.dictionaries(TEXT, value, max_size=3))}
        return json.dumps(row, ensure_ascii=draw(st.booleans())).encode() + end, row, None
    if kind == "json":
        bad = draw(st.sampled_from(['{"a": ', "nope", "{'a': 1}", '{"a": 1} x', '{"a": NaN}']))
        return bad.encode() + end, None, "json"
    if kind == "not_object":
        other = draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), TEXT.map(repr)))
        return json.dumps(other).encode() + end, None, "not_object"
    if kind == "bytes":
        return b'{"a": "' + draw(BAD_BYTES) + b'"}' + end, None, "encoding"
    return draw(st.sampled_from(["", "  ", "\t"])).encode() + end, None, "blank_line"


@st.composite
def dirty_file(draw: st.DrawFn, fmt: str) -> tuple[bytes, list[Expected], int]:
    make = csv_record if fmt == "csv" else jsonl_record
    size = draw(st.integers(0, 25))
    records = [draw(make(n)) for n in range(size)]
    data = (b"id,name,note\n" if fmt == "csv" else b"") + b"".join(r[0] for r in records)
    if records and records[-1][2] != "blank_line" and draw(st.booleans()):
        data = data[:-1]  # no newline after the last record
    return data, records, draw(st.integers(1, 6))


async def read_all(source: FileSource, cursor: Any = None) -> list[Batch]:
    plan = source.plan("inbox/*")
    return [batch async for batch in source.batches(plan, cursor)]


async def read_resuming(root: Path, batch_rows: int) -> list[Batch]:
    """One batch per fresh source, each resumed from the previous batch's journaled cursor."""
    pieces, cursor = [], None
    while True:
        source = FileSource(
            "inbox", FileSourceConfig(root=root, paths=["inbox/*"], batch_rows=batch_rows)
        )
        batches = source.batches(source.plan("inbox/*"), cursor)
        batch = await anext(batches)
        await batches.aclose()
        pieces.append(batch)
        cursor = json.loads(json.dumps(batch.cursor))
        if cursor is None:
            return pieces


def check(fmt: str, data: bytes, records: list[Expected], batch_rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "inbox").mkdir()
        (root / "inbox" / f"dirty.{fmt}").write_bytes(data)
        config = FileSourceConfig(root=root, paths=["inbox/*"], batch_rows=batch_rows)
        batches = asyncio.run(read_all(FileSource("inbox", config)))
        rows = [row for b in batches for row in b.rows]
        rejected: list[Rejected] = [r for b in batches for r in b.rejected]

        assert sum(b.seen for b in batches) == len(records)  # in = rows + rejected
        assert all(b.seen <= batch_rows for b in batches)
        assert rows == [row for _, row, _ in records if row is not None]  # each once, in order
        line = 2 if fmt == "csv" else 1
        expected = []
        for raw, _, rule in records:
            if rule is not None:
                expected.append((rule, f"inbox/dirty.{fmt}:{line}"))
            line += raw.count(b"\n")
        assert [(r.rule, r.where) for r in rejected] == expected
        json.dumps([r.raw for r in rejected], allow_nan=False).encode()  # the journal can hold it

        resumed = asyncio.run(read_resuming(root, batch_rows))
        assert [r for b in resumed for r in b.rows] == rows
        assert [r for b in resumed for r in b.rejected] == rejected


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dirty_file("csv"))
def test_a_dirty_csv_loses_and_repeats_nothing(case: tuple[bytes, list[Expected], int]) -> None:
    check("csv", *case)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dirty_file("jsonl"))
def test_a_dirty_json_lines_file_loses_and_repeats_nothing(
    case: tuple[bytes, list[Expected], int],
) -> None:
    check("jsonl", *case)
