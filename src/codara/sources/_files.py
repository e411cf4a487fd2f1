"""The file connector: CSV, JSON Lines and Parquet under one root directory.

Scope is a list of glob patterns relative to ``root``. :meth:`FileSource.plan` resolves a
requested pattern to the files it matches and refuses the whole request when any of them
is outside those globs, when the pattern is absolute or climbs with ``..``, or when a
symbolic link leads out of ``root`` or to a file the globs do not name (links are
resolved to real paths and both the link and its target must be in scope).

A read streams: text files through a buffered reader, one physical line at a time (a
line longer than ``max_record_bytes`` is skipped over, never held whole), Parquet one row
group at a time with ``iter_batches``. Each batch is read and parsed in a worker thread
(:func:`asyncio.to_thread`) so a slow disk or a large batch does not stall the event loop.

Nothing a file holds is dropped: every physical line (CSV: every record, which may span
lines in quotes) other than the header is either a row or a :class:`Rejected` with a rule:

===============  ===============================================================
``encoding``     bytes that are not the declared encoding (raw: decoded with
                 U+FFFD replacements)
``ragged_row``   a CSV record with more or fewer fields than the header
``csv``          a CSV record the parser refuses (a stray quote, a NUL byte, a
                 field over the csv module's 128 KiB limit)
``json``         a JSON Lines line that does not parse
``not_object``   a JSON Lines line that parses to something other than an object
``blank_line``   an empty line: counted, so records seen = rows + rejected holds
                 for every line of the file
``too_long``     a line over ``max_record_bytes`` (raw: its first 4096 bytes)
===============  ===============================================================

A header that is unreadable or does not match ``columns`` fails the read of that file
with a :class:`~codara.errors.SourceError`: it is not one record's fault.

CSV values stay strings (typing them is the source's quality model's job); Parquet values
are made JSON with :func:`~codara.sources.json_value`.
"""

from __future__ import annotations

import asyncio
import codecs
import fnmatch
import os
import stat
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import Field, ValidationError, field_validator, model_validator

from codara.errors import ConfigError, InputError, ScopeError, SourceError
from codara.sources._base import JSON, Batch, Plan, Source, SourceConfig
from codara.sources._filereader import FileState, Position, Reader, changed, version_of

__all__ = ["FileSource", "FileSourceConfig"]

Format: TypeAlias = Literal["csv", "jsonl", "parquet"]
_SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = frozenset("*?[")


# -- paths and globs -------------------------------------------------------------------------
def _segments(pattern: str) -> tuple[str, ...]:
    """``pattern`` split on ``/``, without empty and ``.`` segments."""
    return tuple(part for part in pattern.split("/") if part not in ("", "."))


def _problem(pattern: str) -> str | None:
    """Why ``pattern`` can never name a file under the root, or None."""
    if not pattern or not _segments(pattern):
        return "is empty"
    if "\x00" in pattern:
        return "contains a NUL byte"
    if "\\" in pattern:
        return "contains a backslash (separate directories with /)"
    if pattern.startswith("/") or (pattern[1:2] == ":" and pattern[2:3] in ("", "/")):
        return "is absolute (paths are relative to the source's root)"
    if ".." in _segments(pattern):
        return "climbs out with '..'"
    return None


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether ``path`` matches ``pattern``, segment by segment: ``*``, ``?`` and ``[...]``
    never cross a ``/`` and ``**`` stands for any number of directories (as in git).

    Not :mod:`glob` (it lists files, it does not match a path) nor :func:`fnmatch.fnmatch`
    (its ``*`` crosses ``/``); ``PurePath.full_match`` does this from Python 3.13 only.
    """
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and _match(rest, path[1:])


def _is_glob(segments: tuple[str, ...]) -> bool:
    return any(_GLOB_CHARS & set(part) for part in segments)


def _raise(error: OSError) -> None:
    """A folder a glob cannot list would hide its files: the plan fails instead (a folder
    that is not there, or is a file, holds nothing to hide)."""
    if isinstance(error, FileNotFoundError | NotADirectoryError):
        return
    raise SourceError(
        f"cannot list a folder of the file source: {error.strerror}",
        hint="check that the worker may read the source's folders",
    )


# -- the configuration -----------------------------------------------------------------------
class FileSourceConfig(SourceConfig):
    """``[sources.NAME]`` with ``kind = "file"``: a directory and the files a workflow may
    read in it."""

    kind: Literal["file"] = "file"
    root: Path
    """The directory the paths are relative to; it must exist when the configuration loads.
    A relative root is taken from the current directory; links in it are resolved."""
    paths: tuple[str, ...] = Field(min_length=1)
    """The scope: glob patterns relative to ``root`` (``inbox/*.csv``, ``exports/**/*.parquet``).
    ``*``, ``?`` and ``[...]`` match within one directory, ``**`` across directories."""
    format: Format | None = None
    """``csv``, ``jsonl`` or ``parquet``; unset, each file's suffix decides (``.csv``,
    ``.jsonl``/``.ndjson``, ``.parquet``/``.pq``)."""
    encoding: str = "utf-8"
    """The text files' encoding (one where a newline is the byte 0x0A: not UTF-16). A UTF-8
    byte order mark at the start of a file is skipped."""
    delimiter: str = ","
    """CSV field separator: one character."""
    header: bool = True
    """CSV: the first record names the fields. Without a header, ``columns`` must."""
    columns: tuple[str, ...] | None = None
    """The fields expected: a CSV header or a Parquet schema with other names fails the read
    of that file. Required for CSV without a header."""
    timestamp_field: str | None = None
    """A field holding each record's time (ISO 8601 or epoch seconds; naive times are UTC).
    Declared, ``newest`` is its maximum over the rows read; otherwise the files' newest
    modification time."""
    max_record_bytes: int = Field(default=16 << 20, ge=1024, le=1 << 30)
    """The longest line read; a longer one is quarantined (``too_long``) without being held
    in memory whole."""

    @field_validator("root")
    @classmethod
    def _root_is_a_directory(cls, root: Path) -> Path:
        real = Path(os.path.realpath(root))
        if not real.is_dir():
            what = "does not exist" if not real.exists() else "is not a directory"
            raise ConfigError(
                f"the file source's root {str(root)!r} {what}",
                hint="set root to an existing directory (a relative root is taken from the "
                "current directory) or create it",
            )
        return real

    @field_validator("paths")
    @classmethod
    def _paths_are_relative_globs(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in paths:
            if (problem := _problem(pattern)) is not None:
                raise ValueError(f"path pattern {pattern!r} {problem}")
            if any("**" in part and part != "**" for part in _segments(pattern)):
                raise ValueError(f"path pattern {pattern!r}: ** must be a whole segment")
        return paths

    @field_validator("encoding")
    @classmethod
    def _encoding_is_line_based(cls, encoding: str) -> str:
        try:
            info = codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}") from None
        try:
            sample = '\n\r,;"'  # the bytes lines and CSV records are split on
            ascii_safe = info.decode(sample.encode("ascii"))[0] == sample
        except (UnicodeError, TypeError):
            ascii_safe = False
        if not ascii_safe:
            raise ValueError(
                f"encoding {encoding!r} does not write a newline as the byte 0x0A (UTF-16 and "
                "UTF-32 do not); convert the files to UTF-8"
            )
        return "utf-8" if info.name == "utf-8-sig" else info.name

    @field_validator("delimiter")
    @classmethod
    def _delimiter_is_one_character(cls, delimiter: str) -> str:
        if len(delimiter) != 1 or delimiter in '\r\n"':
            raise ValueError(
                f"delimiter must be one character, not a quote or newline: {delimiter!r}"
            )
        return delimiter

    @field_validator("columns")
    @classmethod
    def _columns_are_distinct(cls, columns: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if columns is not None:
            if not columns or any(not c for c in columns):
                raise ValueError("columns must be non-empty names")
            if len(set(columns)) != len(columns):
                raise ValueError(f"columns repeat a name: {list(columns)}")
        return columns

    @model_validator(mode="after")
    def _consistent(self) -> FileSourceConfig:
        if self.format in (None, "csv") and not self.header and self.columns is None:
            raise ValueError(
                "a CSV source without a header needs columns = [...] to name its fields"
            )
        if self.format == "jsonl" and self.columns is not None:
            raise ValueError(
                "columns applies to CSV and Parquet; JSON Lines records carry their own keys "
                "(check them with the source's quality model)"
            )
        if (
            self.timestamp_field is not None
            and self.columns is not None
            and self.timestamp_field not in self.columns
        ):
            raise ValueError(f"timestamp_field {self.timestamp_field!r} is not one of the columns")
        return self

    @classmethod
    def load(cls, name: str, table: Mapping[str, Any]) -> FileSourceConfig:
        """``[sources.NAME]`` validated, every problem as one ConfigError naming the source."""
        where = f"[sources.{name}]"
        try:
            return cls.model_validate(dict(table))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'source'}: "
                + err["msg"].removeprefix("Value error, ")
                for err in exc.errors()
            )
            raise ConfigError(
                f"invalid {where}: {problems}",
                hint="see docs/reference/config.md for the file source's keys",
            ) from exc


# -- the source ------------------------------------------------------------------------------
class FileSource(Source):
    """Files under one root, read in batches, refused outside the declared globs."""

    kind = "file"
    config_model = FileSourceConfig
    config: FileSourceConfig

    def __init__(self, name: str, config: FileSourceConfig) -> None:
        super().__init__(name, config)
        self.config = config
        self._allowed = [_segments(pattern) for pattern in config.paths]

    def plan(self, target: str, /, **params: Any) -> Plan:
        """The files ``target`` (a path or a glob under the root) names, all in scope.

        A glob that matches nothing but is itself inside a declared glob gives an empty plan
        (an inbox with no file yet); a path that names no file is a SourceError.
        """
        if params:
            raise InputError(
                f"a file source takes no parameters, got {sorted(params)}",
                hint="name the files in the path pattern",
            )
        if not isinstance(target, str):
            raise InputError(f"a file source reads a path pattern, got {type(target).__name__}")
        if (problem := _problem(target)) is not None:
            raise ScopeError(f"path {target!r} {problem}", rule="path", hint=self._hint())
        segments = _segments(target)
        touched = self._glob(target, segments) if _is_glob(segments) else [self._path(segments)]
        for rel in touched:
            self._format(rel)
        return Plan(source=self.name, target=target, touched=tuple(sorted(touched)))

    async def batches(self, plan: Plan, cursor: JSON = None) -> AsyncGenerator[Batch, None]:
        """Read ``plan``'s files in order, from ``cursor`` (a position this source gave in a
        batch) or from the start. Each batch carries the files' version as the read began;
        the last batch has cursor None, and a read of no record still yields one batch."""
        if plan.source != self.name:
            raise InputError(f"a plan of source {plan.source!r} given to source {self.name!r}")
        files = await asyncio.to_thread(self._snapshot, plan.touched)
        version = version_of(files)
        start, newest = self._start(cursor, files, version)
        if self.config.timestamp_field is None:
            newest = max((f.mtime_ns for f in files), default=None)
            newest = None if newest is None else newest / 1e9
        reader = Reader(self.config, files, start, newest)
        try:
            more = True
            while more:
                rows, rejected, last, more, where = await asyncio.to_thread(
                    reader.take, self.config.batch_rows
                )
                after = self._cursor(files, last, version, reader.newest) if more else None
                yield Batch(rows, rejected, after, version=version, newest=reader.newest,
                            positions=where)  # fmt: skip
        finally:
            reader.close()

    # -- scope
    def _hint(self) -> str:
        return (
            f"source {self.name!r} may read: {', '.join(self.config.paths)} (relative to its root)"
        )

    def _in_scope(self, segments: tuple[str, ...]) -> bool:
        return any(_match(allowed, segments) for allowed in self._allowed)

    def _outside(self, target: str) -> ScopeError:
        return ScopeError(
            f"path {target!r} is outside the scope of source {self.name!r}",
            rule="path",
            hint=self._hint(),
        )

    def _resolve(self, rel: str) -> str:
        """The real path of ``rel`` once links are followed; refused unless both ``rel`` and
        the file it leads to are in scope under the root."""
        segments = _segments(rel)
        if _problem(rel) is not None or not self._in_scope(segments):
            raise self._outside(rel)
        root = str(self.config.root)
        real = os.path.realpath(os.path.join(root, *segments))
        if not real.startswith(root + os.sep):
            raise ScopeError(
                f"path {rel!r} is a link that leads out of the root of source {self.name!r}",
                rule="path",
                hint=self._hint(),
            )
        if not self._in_scope(tuple(Path(real).relative_to(root).parts)):
            raise ScopeError(
                f"path {rel!r} is a link to a file outside the scope of source {self.name!r}",
                rule="path",
                hint=self._hint(),
            )
        return real

    def _path(self, segments: tuple[str, ...]) -> str:
        rel = "/".join(segments)
        real = self._resolve(rel)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            raise SourceError(
                f"source {self.name!r} has no file {rel!r}",
                hint="check the name, or read a glob (inbox/*.csv) to accept no file",
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot read {rel!r}: {exc.strerror}") from exc
        if not stat.S_ISREG(mode):
            raise InputError(f"{rel!r} in source {self.name!r} is not a file")
        return rel

    def _glob(self, target: str, segments: tuple[str, ...]) -> list[str]:
        fixed = 0
        while not _GLOB_CHARS & set(segments[fixed]):
            fixed += 1
        root = str(self.config.root)
        deep = "**" in segments
        found: list[str] = []
        for top, dirs, names in os.walk(os.path.join(root, *segments[:fixed]), onerror=_raise):
            here = Path(top).relative_to(root).parts
            if not deep and len(here) >= len(segments) - 1:
                dirs.clear()
            for name in names:
                rel = (*here, name)
                if not _match(segments, rel):
                    continue
                if not self._in_scope(rel):
                    raise self._outside(target)
                try:
                    mode = os.stat(self._resolve("/".join(rel))).st_mode
                except FileNotFoundError:
                    continue  # a dangling link names no file
                if stat.S_ISREG(mode):
                    found.append("/".join(rel))
        if not found and not self._in_scope(segments):
            raise self._outside(target)
        return found

    def _format(self, rel: str) -> Format:
        if self.config.format is not None:
            return self.config.format
        suffix = os.path.splitext(rel)[1].lower()
        if suffix not in _SUFFIXES:
            raise InputError(
                f"cannot tell the format of {rel!r} from its suffix",
                hint='set format = "csv", "jsonl" or "parquet" in the source',
            )
        return _SUFFIXES[suffix]

    # -- reading
    def _snapshot(self, touched: tuple[str, ...]) -> list[FileState]:
        files = []
        for rel in touched:
            real = self._resolve(rel)
            try:
                info = os.stat(real)
            except OSError as exc:
                raise SourceError(
                    f"cannot read {rel!r}: {exc.strerror}",
                    hint="the file was there when the read was planned; plan it again",
                ) from exc
            if not stat.S_ISREG(info.st_mode):
                raise InputError(f"{rel!r} in source {self.name!r} is not a file")
            files.append(FileState(rel, real, self._format(rel), info.st_size, info.st_mtime_ns))
        return files

    def _start(
        self, cursor: JSON, files: list[FileState], version: str
    ) -> tuple[Position | None, float | None]:
        if cursor is None:
            return None, None
        bad = InputError(
            f"not a cursor of file source {self.name!r}: {cursor!r}",
            hint="pass None or a cursor from a batch of the same plan",
        )
        if not isinstance(cursor, dict):
            raise bad
        index = cursor.get("file")
        if type(index) is not int or not 0 <= index < len(files):
            raise bad
        if cursor.get("version") != version:
            raise changed(None)
        keys = ("row_group", "row") if files[index].format == "parquet" else ("offset", "line")
        a, b = (cursor.get(key) for key in keys)
        if type(a) is not int or type(b) is not int or a < 0 or b < 0:
            raise bad
        newest = cursor.get("newest")
        if newest is not None and not isinstance(newest, int | float):
            raise bad
        return (index, a, b), None if newest is None else float(newest)

    def _cursor(
        self, files: list[FileState], at: Position | None, version: str, newest: float | None
    ) -> JSON:
        assert at is not None  # a batch followed by more has at least one record
        index, a, b = at
        keys = ("row_group", "row") if files[index].format == "parquet" else ("offset", "line")
        cursor: dict[str, JSON] = {"file": index, keys[0]: a, keys[1]: b, "version": version}
        if self.config.timestamp_field is not None:
            cursor["newest"] = newest
        return cursor
