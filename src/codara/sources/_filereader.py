"""Reading a file source's files: the blocking part, run in worker threads.

:class:`Reader` walks a plan's files from a :data:`Position` and hands out records a batch
at a time; :class:`Lines` gives a text file's physical lines with the byte offset after
each, so a cursor resumes exactly after the last record of a batch. See
:mod:`codara.sources._files` for the rules a record can be rejected by.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, TypeAlias

from codara.errors import InputError, SourceError
from codara.sources._base import JSON, Rejected, json_value

if TYPE_CHECKING:
    from codara.sources._files import FileSourceConfig, Format

__all__ = ["FileState", "Position", "Reader", "changed", "version_of"]

_READ_BUFFER = 1 << 20
"""Bytes read from disk at a time for text files (the buffered reader's chunk)."""
_RAW_PREFIX = 4096
"""Bytes of an over-long line kept as its quarantined ``raw``."""


@dataclass(frozen=True, slots=True)
class FileState:
    """One file of a plan as it was when the read began."""

    rel: str
    real: str
    format: Format
    size: int
    mtime_ns: int


Position: TypeAlias = tuple[int, int, int]
"""Where the next record starts: (file, byte offset, line) for text, (file, row group, row)
for Parquet."""
_Record: TypeAlias = tuple["dict[str, JSON] | Rejected", Position]


def _file_error(message: str, hint: str) -> SourceError:
    """A file that cannot be read as declared: retrying reads the same bytes."""
    error = SourceError(message, hint=hint)
    error.non_retryable = True
    return error


def _epoch(value: JSON) -> float | None:
    """A timestamp field's value in epoch seconds, or None when it is not a time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    return None


class Lines:
    """The physical lines of a text file from a byte offset, decoded one at a time.

    The csv module pulls exactly the lines of one record from this iterator, so after each
    record ``offset`` and ``line`` say where the next one starts and ``texts``, ``bad`` and
    ``too_long`` describe the record just read.
    """

    def __init__(self, fh: IO[bytes], offset: int, line: int, encoding: str, limit: int) -> None:
        self._fh = fh
        self._encoding = encoding
        self._limit = limit
        self._bom = encoding == "utf-8" and offset == 0
        self.offset = offset
        self.line = line
        self.begin()

    def begin(self) -> None:
        """Start a record at the current line."""
        self.start = self.line
        self.texts: list[str] = []
        self.bad: UnicodeDecodeError | None = None
        self.too_long: int | None = None

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        raw = self._fh.readline(self._limit + 1)
        if not raw:
            raise StopIteration
        size = len(raw)
        long_line = size > self._limit
        if long_line:  # skip the rest of the line without holding it
            prefix, tail = raw[:_RAW_PREFIX], raw
            while not tail.endswith(b"\n"):
                tail = self._fh.readline(_READ_BUFFER)
                if not tail:
                    break
                size += len(tail)
                if len(prefix) < _RAW_PREFIX:
                    prefix += tail[: _RAW_PREFIX - len(prefix)]
            raw = prefix
        if self._bom:
            self._bom = False
            raw = raw.removeprefix(codecs.BOM_UTF8)
        self.offset += size
        self.line += 1
        if long_line:  # its record is refused whatever the csv parser makes of it
            self.too_long = size
            self.texts.append(raw.decode(self._encoding, errors="replace"))
            return "\n"
        try:
            text = raw.decode(self._encoding)
        except UnicodeDecodeError as exc:
            self.bad = self.bad or exc
            text = raw.decode(self._encoding, errors="replace")
        self.texts.append(text)
        return text

    def raw(self) -> str:
        """The record's text without its final line break."""
        return "".join(self.texts).removesuffix("\n").removesuffix("\r")


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


class Reader:
    """The records of a plan's files from a position, taken a batch at a time.

    Its methods block (they read the disk): the source calls :meth:`take` through
    :func:`asyncio.to_thread`, one batch per call, never two at once.
    """

    def __init__(
        self,
        config: FileSourceConfig,
        files: list[FileState],
        start: Position | None,
        newest: float | None,
    ) -> None:
        self._config = config
        self._files = files
        self._records = self._all(start)
        self._peeked: _Record | None = None
        self._prev = start  # where the next record taken starts (None: the first file's top)
        self.newest = newest
        """With a timestamp field: its largest value read so far, across resumes."""

    def _where(self, index: int) -> str:
        """Where the record that starts at ``self._prev`` (in file ``index``) is."""
        file = self._files[index]
        prev = self._prev if self._prev is not None and self._prev[0] == index else None
        if file.format == "parquet":
            group, row = (prev[1], prev[2]) if prev is not None else (0, 0)
            return f"{file.rel}: row group {group}, row {row}"
        if prev is not None:
            return f"{file.rel}:{prev[2]}"
        first = 2 if file.format == "csv" and self._config.header else 1
        return f"{file.rel}:{first}"

    def take(
        self, n: int
    ) -> tuple[list[dict[str, JSON]], list[Rejected], Position | None, bool, list[str]]:
        """The next ``n`` records (rows and rejected), the position after the last one,
        whether any record follows (one is read ahead to know), and where each row is."""
        items: list[_Record] = []
        if self._peeked is not None:
            items.append(self._peeked)
            self._peeked = None
        while len(items) < n and (item := next(self._records, None)) is not None:
            items.append(item)
        if len(items) == n:
            self._peeked = next(self._records, None)
        rows: list[dict[str, JSON]] = []
        rejected: list[Rejected] = []
        positions: list[str] = []
        field = self._config.timestamp_field
        for record, after in items:
            if isinstance(record, Rejected):
                rejected.append(record)
                self._prev = after
                continue
            positions.append(self._where(after[0]))  # a record's next position is in its file
            self._prev = after
            rows.append(record)
            if field is not None and (when := _epoch(record.get(field))) is not None:
                self.newest = when if self.newest is None else max(self.newest, when)
        last = items[-1][1] if items else None
        return rows, rejected, last, self._peeked is not None, positions

    def close(self) -> None:
        try:
            self._records.close()
        except ValueError:  # a cancelled take still runs in its thread; the file closes with it
            pass

    def _all(self, start: Position | None) -> Generator[_Record, None, None]:
        first = 0 if start is None else start[0]
        for index in range(first, len(self._files)):
            file = self._files[index]
            at = start if start is not None and index == first else None
            try:
                now = os.stat(file.real)
                if (now.st_size, now.st_mtime_ns) != (file.size, file.mtime_ns):
                    raise changed(file.rel)
                if file.format == "parquet":
                    yield from self._parquet(index, file, at)
                    continue
                with open(file.real, "rb", buffering=_READ_BUFFER) as fh:
                    if file.format == "csv":
                        yield from self._csv(index, file, fh, at)
                    else:
                        yield from self._jsonl(index, file, fh, at)
            except OSError as exc:
                raise SourceError(
                    f"cannot read {file.rel}: {exc.strerror or exc}",
                    hint="check that the file is still there and readable by the worker",
                ) from exc

    def _lines(self, fh: IO[bytes], offset: int, line: int) -> Lines:
        fh.seek(offset)
        return Lines(fh, offset, line, self._config.encoding, self._config.max_record_bytes)

    def _unreadable(self, lines: Lines, where: str) -> Rejected | None:
        """The record just read refused for its bytes (too long, not the encoding), or None."""
        n = lines.start
        if lines.too_long is not None:
            return Rejected(
                raw=lines.raw(),
                reason=f"line {n} is {lines.too_long} bytes, longer than max_record_bytes "
                f"({self._config.max_record_bytes})",
                rule="too_long",
                where=where,
            )
        if lines.bad is not None:
            return Rejected(
                raw=lines.raw(),
                reason=f"line {n} is not valid {self._config.encoding}: {lines.bad.reason} "
                f"(byte {lines.bad.start + 1} of the line)",
                rule="encoding",
                where=where,
            )
        return None

    # -- JSON Lines
    def _jsonl(
        self, index: int, file: FileState, fh: IO[bytes], at: Position | None
    ) -> Iterator[_Record]:
        lines = self._lines(fh, *(at[1:] if at else (0, 1)))
        for text in lines:
            yield (
                self._json_record(lines, text, f"{file.rel}:{lines.start}"),
                (
                    index,
                    lines.offset,
                    lines.line,
                ),
            )
            lines.begin()

    def _json_record(self, lines: Lines, text: str, where: str) -> dict[str, JSON] | Rejected:
        if (refused := self._unreadable(lines, where)) is not None:
            return refused
        n, raw = lines.start, lines.raw()
        if not text.strip():
            return Rejected(raw=raw, reason=f"line {n} is blank", rule="blank_line", where=where)
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
            if "\\u" in text:  # an escaped lone surrogate parses but is not text
                json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                why = f"{exc.msg} at column {exc.colno}"
            elif isinstance(exc, UnicodeEncodeError):
                why = "it escapes a lone surrogate (\\ud800-\\udfff), which is not text"
            else:
                why = str(exc) if isinstance(exc, ValueError) else "it is nested too deeply"
            return Rejected(
                raw=raw, reason=f"line {n} is not JSON: {why}", rule="json", where=where
            )
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            return Rejected(
                raw=raw,
                reason=f"line {n} is {kind}, not an object",
                rule="not_object",
                where=where,
            )
        return {key: json_value(item) for key, item in value.items()}

    # -- CSV
    def _reader(self, lines: Lines) -> Iterator[list[str]]:
        return csv.reader(lines, delimiter=self._config.delimiter, strict=True)

    def _csv(
        self, index: int, file: FileState, fh: IO[bytes], at: Position | None
    ) -> Iterator[_Record]:
        config = self._config
        lines = self._lines(fh, 0, 1)
        reader = self._reader(lines)
        columns = config.columns
        if config.header:
            columns = self._header(file, lines, reader)
            if columns is None:
                return  # an empty file: no header, no records
        assert columns is not None  # the config refuses no header without columns
        if at is not None:
            if at[1] < lines.offset:
                raise InputError(f"the cursor points into the header of {file.rel}")
            lines = self._lines(fh, at[1], at[2])
            reader = self._reader(lines)
        against = "the header has" if config.header else "the declared columns have"
        while True:
            lines.begin()
            where = f"{file.rel}:{lines.start}"
            record: dict[str, JSON] | Rejected
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                record = self._unreadable(lines, where) or Rejected(
                    raw=lines.raw(),
                    reason=f"line {lines.start} is not valid CSV: {exc}",
                    rule="csv",
                    where=where,
                )
            else:
                record = self._csv_record(lines, fields, columns, where, against)
            yield record, (index, lines.offset, lines.line)

    def _csv_record(
        self,
        lines: Lines,
        fields: list[str],
        columns: tuple[str, ...],
        where: str,
        against: str,
    ) -> dict[str, JSON] | Rejected:
        if (refused := self._unreadable(lines, where)) is not None:
            return refused
        n = lines.start
        if not fields:
            return Rejected(raw=lines.raw(), reason=f"line {n} is blank", rule="blank_line",
                            where=where)  # fmt: skip
        if len(fields) != len(columns):
            return Rejected(
                raw=lines.raw(),
                reason=f"line {n} has {len(fields)} fields, {against} {len(columns)}",
                rule="ragged_row",
                where=where,
            )
        return dict(zip(columns, fields, strict=True))

    def _header(
        self, file: FileState, lines: Lines, reader: Iterator[list[str]]
    ) -> tuple[str, ...] | None:
        config = self._config
        hint = (
            "make the file's first line name its fields as the source's columns do, or fix columns"
        )
        try:
            names = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise _file_error(f"the header of {file.rel} is not valid CSV: {exc}", hint) from exc
        if lines.too_long is not None or lines.bad is not None:
            raise _file_error(
                f"the header of {file.rel} is not valid {config.encoding} or too long",
                "check the source's encoding (a file from Excel may be cp1252)",
            )
        if not names or any(not name for name in names):
            raise _file_error(f"the header of {file.rel} has an empty field name", hint)
        if len(set(names)) != len(names):
            raise _file_error(f"the header of {file.rel} repeats a field name: {names}", hint)
        if config.columns is not None and set(names) != set(config.columns):
            missing = [c for c in config.columns if c not in names]
            extra = [c for c in names if c not in config.columns]
            raise _file_error(
                f"the header of {file.rel} does not match the source's columns: "
                f"missing {missing}, unexpected {extra}",
                hint,
            )
        if config.timestamp_field is not None and config.timestamp_field not in names:
            raise _file_error(
                f"the header of {file.rel} has no timestamp_field {config.timestamp_field!r}",
                hint,
            )
        return tuple(names)

    # -- Parquet
    def _parquet(self, index: int, file: FileState, at: Position | None) -> Iterator[_Record]:
        import pyarrow as pa  # here, not at the top: the CLI starts without loading Arrow
        import pyarrow.parquet as pq

        config = self._config
        hint = "check that the file is a complete Parquet file (a partial upload is not)"
        try:
            parquet = pq.ParquetFile(file.real)
        except (pa.ArrowException, OSError) as exc:
            raise _file_error(f"{file.rel} is not a readable Parquet file: {exc}", hint) from exc
        try:
            names = parquet.schema_arrow.names
            if len(set(names)) != len(names):
                raise _file_error(f"{file.rel} repeats a column name: {names}", hint)
            if config.columns is not None and set(names) != set(config.columns):
                missing = [c for c in config.columns if c not in names]
                extra = [c for c in names if c not in config.columns]
                raise _file_error(
                    f"the columns of {file.rel} do not match the source's columns: "
                    f"missing {missing}, unexpected {extra}",
                    "fix the source's columns or the file",
                )
            first, skip = at[1:] if at else (0, 0)
            for group in range(first, parquet.metadata.num_row_groups):
                total = parquet.metadata.row_group(group).num_rows
                row = 0
                try:
                    parts = parquet.iter_batches(
                        batch_size=config.batch_rows, row_groups=[group], use_threads=False
                    )
                    for part in parts:
                        if skip >= part.num_rows:  # resuming: before the cursor, not emitted
                            skip -= part.num_rows
                            row += part.num_rows
                            continue
                        if skip:
                            part, row, skip = part.slice(skip), row + skip, 0
                        for values in part.to_pylist():
                            row += 1
                            at_next = (index, group, row) if row < total else (index, group + 1, 0)
                            yield {k: json_value(v) for k, v in values.items()}, at_next
                except pa.ArrowException as exc:
                    raise _file_error(
                        f"row group {group} of {file.rel} cannot be read: {exc}", hint
                    ) from exc
                skip = 0
        finally:
            parquet.close()


def changed(rel: str | None) -> SourceError:
    """The files under a read are not those it began with (``rel``: the one seen to differ)."""
    what = f"{rel} changed" if rel else "the files of this read changed"
    return _file_error(
        f"{what} (size or modification time) since the read began; going on would skip or "
        "repeat records",
        "start the read again as a new operation to read the files as they are now",
    )


def version_of(files: list[FileState]) -> str:
    """A digest of the files' names, sizes and modification times."""
    facts = json.dumps([[f.rel, f.size, f.mtime_ns] for f in files])
    return hashlib.sha256(facts.encode()).hexdigest()[:32]
