"""Reading files: streamed in batches, resumable at every cursor, dirty records quarantined.

Every test reads real files from a temporary directory through the real connector.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codara.errors import InputError, SourceError
from codara.sources import Batch, Plan, Rejected
from codara.sources._files import FileSource, FileSourceConfig

DIRTY_CSV = (
    b"id,text\n"
    b"1,hello\n"
    b'2,"two\nlines"\n'
    b"3,a,b\n"  # too many fields
    b"\n"  # blank
    b"4,caf\xe9\n"  # latin-1 in a utf-8 file
    b'5,"bad"quote\n'
    b"6\n"  # too few
    b"7,last"  # no final newline
)


def make(root: Path, *paths: str, **keys: Any) -> FileSource:
    return FileSource("inbox", FileSourceConfig(root=root, paths=paths or ("**",), **keys))


async def read(source: FileSource, plan: Plan, cursor: Any = None) -> list[Batch]:
    return [batch async for batch in source.batches(plan, cursor)]


def rows_and_rejected(batches: list[Batch]) -> tuple[list[Any], list[Rejected]]:
    return [r for b in batches for r in b.rows], [r for b in batches for r in b.rejected]


async def test_dirty_csv_rows_are_rejected_with_rule_and_line_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    (tmp_path / "inbox.csv").write_bytes(DIRTY_CSV)
    source = make(tmp_path, batch_rows=3)
    batches = await read(source, source.plan("inbox.csv"))
    rows, rejected = rows_and_rejected(batches)
    assert rows == [
        {"id": "1", "text": "hello"},
        {"id": "2", "text": "two\nlines"},
        {"id": "7", "text": "last"},
    ]
    assert [(r.rule, r.where, r.raw) for r in rejected] == [
        ("ragged_row", "inbox.csv:5", "3,a,b"),
        ("blank_line", "inbox.csv:6", ""),
        ("encoding", "inbox.csv:7", "4,caf\ufffd"),
        ("csv", "inbox.csv:8", '5,"bad"quote'),
        ("ragged_row", "inbox.csv:9", "6"),
    ]
    assert rejected[0].reason == "line 5 has 3 fields, the header has 2"
    assert rejected[2].reason == (
        "line 7 is not valid utf-8: invalid continuation byte (byte 6 of the line)"
    )
    assert sum(b.seen for b in batches) == 8  # every line but the header: in = rows + rejected
    assert [b.seen for b in batches] == [3, 3, 2]
    assert batches[-1].cursor is None
    assert all(b.cursor is not None for b in batches[:-1])


async def test_the_record_right_after_the_header_is_placed_on_line_2(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b'"i\nd",text\n1,2,3\n')  # a header over two lines
    source = make(tmp_path)
    (batch,) = await read(source, source.plan("a.csv"))
    assert [r.where for r in batch.rejected] == ["a.csv:3"]


async def test_dirty_json_lines_are_rejected_with_rule_and_line(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(
        b'{"id": 1, "at": "2026-12-02T05:00:00Z"}\n'
        b"[1, 2]\n"
        b"not json\n"
        b"   \n"
        b'{"id": "caf\xe9"}\n'
        b'{"id": "\\ud800"}\n'
        b"NaN\n"
        b'"just a string"\r\n'
        b'{"id": 2, "big": 123456789012345678901234567890, "inf": 1e999}\r\n'
    )
    source = make(tmp_path, batch_rows=100)
    (batch,) = await read(source, source.plan("events.jsonl"))
    assert batch.rows == [
        {"id": 1, "at": "2026-12-02T05:00:00Z"},
        {"id": 2, "big": 123456789012345678901234567890, "inf": None},
    ]
    assert [(r.rule, r.where) for r in batch.rejected] == [
        ("not_object", "events.jsonl:2"),
        ("json", "events.jsonl:3"),
        ("blank_line", "events.jsonl:4"),
        ("encoding", "events.jsonl:5"),
        ("json", "events.jsonl:6"),  # a lone surrogate would break the journal later
        ("json", "events.jsonl:7"),
        ("not_object", "events.jsonl:8"),
    ]
    assert batch.rejected[0].reason == "line 2 is an array, not an object"
    assert batch.rejected[1].reason == "line 3 is not JSON: Expecting value at column 1"
    assert batch.rejected[6].raw == '"just a string"'  # raw without its line break
    json.dumps([r.raw for r in batch.rejected], allow_nan=False).encode()  # journal-safe


async def test_an_over_long_line_is_quarantined_without_being_held(tmp_path: Path) -> None:
    (tmp_path / "big.jsonl").write_bytes(b'{"a": 1}\n' + b"x" * 50_000 + b'\n{"a": 2}\n')
    source = make(tmp_path, max_record_bytes=2048)
    (batch,) = await read(source, source.plan("big.jsonl"))
    assert batch.rows == [{"a": 1}, {"a": 2}]
    (long,) = batch.rejected
    assert (long.rule, long.where, long.raw) == ("too_long", "big.jsonl:2", "x" * 4096)
    assert long.reason == "line 2 is 50001 bytes, longer than max_record_bytes (2048)"


@pytest.mark.parametrize(
    ("content", "keys", "message"),
    [
        (
            b"id,txt\n1,a\n",
            {"columns": ["id", "text"]},
            r"missing \['text'\], unexpected \['txt'\]",
        ),
        (b"id,id\n1,a\n", {}, "repeats a field name"),
        (b"id,\n1,a\n", {}, "empty field name"),
        (b"id,t\xe9xt\n1,a\n", {}, "is not valid utf-8"),
        (b'id,"te"xt\n1,a\n', {}, "is not valid CSV"),
        (b"id,text\n1,a\n", {"timestamp_field": "at"}, "has no timestamp_field 'at'"),
    ],
)
async def test_a_header_that_does_not_fit_fails_the_file_not_a_row(
    tmp_path: Path, content: bytes, keys: dict[str, Any], message: str
) -> None:
    (tmp_path / "a.csv").write_bytes(content)
    source = make(tmp_path, **keys)
    with pytest.raises(SourceError, match=message) as info:
        await read(source, source.plan("a.csv"))
    assert info.value.non_retryable  # the same bytes fail again
    assert "a.csv" in str(info.value)


async def test_csv_options_header_less_delimiter_bom_latin1_and_columns_in_any_order(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain.csv").write_bytes(b"1;caf\xe9\n2;th\xe9\n")
    source = make(tmp_path, header=False, columns=["id", "name"], delimiter=";",
                  encoding="latin-1")  # fmt: skip
    (batch,) = await read(source, source.plan("plain.csv"))
    assert batch.rows == [{"id": "1", "name": "café"}, {"id": "2", "name": "thé"}]
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfname,id\r\nx,1\r\n")
    source = make(tmp_path, columns=["id", "name"])
    (batch,) = await read(source, source.plan("excel.csv"))
    assert batch.rows == [{"name": "x", "id": "1"}]
    (tmp_path / "empty.csv").write_bytes(b"")
    (batch,) = await read(source, source.plan("empty.csv"))
    assert (batch.rows, batch.rejected, batch.cursor) == ([], [], None)


async def test_an_empty_plan_still_yields_one_batch_with_a_version(tmp_path: Path) -> None:
    source = make(tmp_path, "inbox/*.csv")
    (batch,) = await read(source, source.plan("inbox/*.csv"))
    assert batch.rows == []
    assert batch.cursor is None
    assert batch.newest is None
    assert batch.version is not None


def write_parquet(path: Path, rows: int, group: int) -> None:
    table = pa.table(
        {
            "id": list(range(rows)),
            "amount": [Decimal(f"{i}.50") for i in range(rows)],
            "at": [
                dt.datetime(2026, 12, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i) for i in range(rows)
            ],
            "blob": [bytes([i % 256]) for i in range(rows)],
            "tags": [["a", str(i)] for i in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=group)


async def test_parquet_streams_by_row_group_with_values_made_json(tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", rows=10, group=4)
    source = make(tmp_path, batch_rows=3, timestamp_field="at")
    batches = await read(source, source.plan("t.parquet"))
    rows, rejected = rows_and_rejected(batches)
    assert rejected == []
    assert len(rows) == 10
    assert rows[9] == {"id": 9, "amount": "9.50", "at": "2026-12-01T09:00:00+00:00",
                       "blob": "CQ==", "tags": ["a", "9"]}  # fmt: skip
    version = batches[0].version
    assert [b.cursor for b in batches] == [
        {"file": 0, "row_group": 0, "row": 3, "version": version, "newest": batches[0].newest},
        {"file": 0, "row_group": 1, "row": 2, "version": version, "newest": batches[1].newest},
        {"file": 0, "row_group": 2, "row": 1, "version": version, "newest": batches[2].newest},
        None,
    ]
    # a batch that ends a row group points at the next one, which a resume need not open
    (first, *_) = await read(make(tmp_path, batch_rows=4), source.plan("t.parquet"))
    assert first.cursor == {"file": 0, "row_group": 1, "row": 0, "version": version}
    # newest is the timestamp field's largest value so far: it grows to the read's maximum
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    assert batches[0].newest == start + 2 * 3600
    assert batches[-1].newest == start + 9 * 3600
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match=r"bad.parquet is not a readable Parquet file"):
        await read(source, source.plan("bad.parquet"))
    source = make(tmp_path, columns=["id", "amount"])
    with pytest.raises(SourceError, match=r"unexpected \['at', 'blob', 'tags'\]"):
        await read(source, source.plan("t.parquet"))


def mixed_files(root: Path) -> None:
    (root / "inbox").mkdir()
    (root / "inbox" / "1.csv").write_bytes(DIRTY_CSV)
    (root / "inbox" / "2.jsonl").write_bytes(b'{"n": 1}\n\nbad\n{"n": 2}\n[]\n{"n": 3}')
    (root / "inbox" / "3.csv").write_bytes(b"id,text\n")  # a header and no record
    write_parquet(root / "inbox" / "4.parquet", rows=11, group=4)
    (root / "inbox" / "5.csv").write_bytes(b"id,text\n8,x\n9,y,z\n")


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 5, 1000])
async def test_resuming_from_every_cursor_in_a_fresh_source_reads_each_record_once(
    tmp_path: Path, batch_rows: int
) -> None:
    mixed_files(tmp_path)
    whole = make(tmp_path, "inbox/*", batch_rows=1_000_000)
    plan = whole.plan("inbox/*")
    (everything,) = await read(whole, plan)
    assert everything.seen == 8 + 6 + 0 + 11 + 2
    pieces: list[Batch] = []
    cursor = None
    while True:
        fresh = make(tmp_path, "inbox/*", batch_rows=batch_rows)  # as after a crash
        batches = fresh.batches(plan, cursor)
        batch = await anext(batches)
        await batches.aclose()
        assert batch.seen == batch_rows or batch.cursor is None
        assert batch.version == everything.version
        assert batch.newest == everything.newest
        pieces.append(batch)
        cursor = json.loads(json.dumps(batch.cursor))  # as the journal keeps it
        if cursor is None:
            break
    assert rows_and_rejected(pieces) == (everything.rows, everything.rejected)


async def test_version_and_newest_follow_the_files_and_a_changed_file_stops_a_resume(
    tmp_path: Path,
) -> None:
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_bytes(b"id\n1\n2\n3\n")
    os.utime(tmp_path / "a.csv", ns=(1_700_000_000_000_000_000,) * 2)
    os.utime(tmp_path / "b.csv", ns=(1_750_000_000_500_000_000,) * 2)
    source = make(tmp_path, batch_rows=2)
    plan = source.plan("*.csv")
    first = await read(source, plan)
    assert {b.newest for b in first} == {1_750_000_000.5}
    assert len({b.version for b in first}) == 1
    (tmp_path / "b.csv").write_bytes(b"id\n1\n2\n3\n")  # same bytes, a new time
    os.utime(tmp_path / "b.csv", ns=(1_750_000_001_000_000_000,) * 2)
    again = await read(source, plan)
    assert again[0].version != first[0].version
    with pytest.raises(
        SourceError, match=r"the files of this read changed .* since the read began"
    ) as info:
        await read(source, plan, first[0].cursor)
    assert info.value.non_retryable
    # a file that changes while the read is under way stops it when the reader reaches it
    source = make(tmp_path, batch_rows=2)
    plan = source.plan("*.csv")
    batches = source.batches(plan)
    await anext(batches)
    (tmp_path / "b.csv").write_bytes(b"id\n1\n2\n3\n4\n")
    with pytest.raises(SourceError, match=r"^b\.csv changed"):
        await anext(batches)
    now = (await read(source, plan))[0].version
    for bad in ({"file": 7, "offset": 0, "line": 1}, "x", {"file": 0, "offset": -1, "line": 1}):
        with pytest.raises(InputError, match="not a cursor of file source 'inbox'"):
            await read(source, plan, {**bad, "version": now} if isinstance(bad, dict) else bad)
    with pytest.raises(InputError, match="a plan of source 'other'"):
        await read(source, Plan(source="other", target="*.csv", touched=("a.csv",)))


async def test_csv_timestamps_give_newest_and_carry_it_across_a_resume(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "id,at\n1,2026-12-02T05:00:00+01:00\n2,1796190000\n3,not a time\n4,2026-12-01\n"
    )
    source = make(tmp_path, batch_rows=2, timestamp_field="at")
    plan = source.plan("t.csv")
    batches = await read(source, plan)
    assert [b.newest for b in batches] == [1796190000.0, 1796190000.0]
    (resumed,) = await read(source, plan, batches[0].cursor)
    assert resumed.newest == 1796190000.0  # from before the cursor: the cursor carries it


async def test_reading_leaves_the_event_loop_free_between_chunks(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(50)))
    source = make(tmp_path, batch_rows=5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    seen = []
    async for _ in source.batches(source.plan("a.jsonl")):
        seen.append(ticks)
    task.cancel()
    # each batch is read in a thread while the loop runs other tasks: the ticker moves on
    # between any two batches (a read on the loop would starve it until the end)
    assert len(seen) == 10
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert seen[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_a_large_file_is_streamed_not_loaded(tmp_path: Path, fmt: str) -> None:
    path, rows_n = tmp_path / f"big.{fmt}", 115_000
    text = "x" * 180
    with path.open("w") as out:
        if fmt == "csv":
            out.write("id,text\n")
            out.writelines(f"{i},{text}\n" for i in range(rows_n))
        else:
            out.writelines(f'{{"id": {i}, "text": "{text}"}}\n' for i in range(rows_n))
    size = path.stat().st_size
    assert size > 20_000_000
    source = make(tmp_path, batch_rows=1000)
    plan = source.plan(path.name)
    count = 0
    tracemalloc.start()
    try:
        async for batch in source.batches(plan):
            count += batch.seen
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == rows_n
    print(f"{fmt}: file {size / 1e6:.1f} MB, peak traced {peak / 1e6:.2f} MB")
    assert peak < size / 5  # batches of 1000 rows and a 1 MiB read buffer, not the file


PARQUET_PEAK = """
import asyncio, json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa, pyarrow.parquet  # before tracing: the import is not the read
from codara.sources._files import FileSource, FileSourceConfig
path = Path(sys.argv[1])
source = FileSource("x", FileSourceConfig(root=path.parent, paths=["*"], batch_rows=1000))
async def main():
    return sum([b.seen async for b in source.batches(source.plan(path.name))])
tracemalloc.start()
seen = asyncio.run(main())
print(json.dumps({"seen": seen, "python": tracemalloc.get_traced_memory()[1],
                  "arrow": pa.default_memory_pool().max_memory()}))
"""


@pytest.mark.slow
def test_a_large_parquet_file_is_streamed_by_row_group(tmp_path: Path) -> None:
    """Arrow's buffers are outside tracemalloc: its memory pool's peak, taken in a fresh
    process that only reads, counts them."""
    path, rows_n = tmp_path / "big.parquet", 130_000
    text = [os.urandom(75).hex() for _ in range(rows_n)]  # random: it does not compress away
    pq.write_table(pa.table({"id": range(rows_n), "text": text}), path, row_group_size=5_000)
    size = path.stat().st_size
    assert size > 20_000_000
    out = subprocess.run([sys.executable, "-c", PARQUET_PEAK, str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    peak = json.loads(out.stdout)
    assert peak["seen"] == rows_n
    print(f"parquet: file {size / 1e6:.1f} MB, peak traced {peak['python'] / 1e6:.2f} MB, "
          f"arrow pool peak {peak['arrow'] / 1e6:.2f} MB")  # fmt: skip
    assert peak["python"] + peak["arrow"] < size / 4  # a row group at a time, not the file


def test_importing_the_file_source_does_not_load_pyarrow() -> None:
    code = "import sys, codara.sources._files; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
