"""What the CLI prints: rich tables and trees for people, JSON for scripts, and errors.

Data goes to stdout, everything else (errors, progress, status lines) to stderr, so that
``codara run wf > out.json`` captures only the output. With ``--json`` an error is a JSON
object on stdout too: ``{"error": {"code", "message", "hint"}}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from codara.errors import (
    CodaraError,
    ConflictError,
    RunError,
    StoreError,
    UserError,
    WorkflowCodeError,
)

if TYPE_CHECKING:  # rich and the records load when something is printed (fast --help)
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    from codara.store import JournalRecord, RunRecord
    from codara.trace import AuditReport

__all__ = [
    "EXIT_INTERRUPTED",
    "TRUNCATE",
    "audit_dict",
    "debug_enabled",
    "err_console",
    "error_dict",
    "fmt_duration",
    "fmt_limit",
    "fmt_time",
    "guard",
    "journal_dict",
    "journal_tree",
    "log_to_stderr",
    "out_console",
    "print_codara_error",
    "print_json",
    "print_unexpected",
    "run_dict",
    "run_header",
    "runs_table",
    "status_text",
    "truncate",
]

T = TypeVar("T")
TRUNCATE = 80
EXIT_INTERRUPTED = 130
_STATUS_STYLE = {
    "completed": "green",
    "ok": "green",
    "failed": "red",
    "error": "red",
    "cancelled": "magenta",
    "cancelling": "magenta",
    "running": "cyan",
    "queued": "blue",
    "waiting": "yellow",
    "sleeping": "yellow",
}


def debug_enabled() -> bool:
    return os.environ.get("CODARA_DEBUG", "") not in ("", "0", "false", "no")


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width: int | None = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 160  # piped or captured: do not squeeze tables into 80 columns
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def out_console() -> Console:
    """A console on the current stdout (looked up on each call: tests swap it)."""
    return _console(stderr=False)


def err_console() -> Console:
    return _console(stderr=True)


# -- plain values ------------------------------------------------------------------------------
def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else (no colours, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def truncate(text: str | None, limit: int | None = TRUNCATE) -> str:
    if text is None:
        return ""
    flat = text.replace("\n", "\\n")
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def fmt_limit(seconds: float | None) -> str:
    """A configured length of time in the largest unit it is a whole number of: ``30 days``,
    ``6 h``, ``15 min``, ``45 s`` (``-`` for none)."""
    if seconds is None:
        return "-"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {'day' if unit == 'days' and n == 1 else unit}"
    return f"{seconds:g} s"


def status_text(status: str) -> Text:
    from rich.text import Text

    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_dict(run: RunRecord) -> dict[str, Any]:
    """A run for ``--json``: every column, with input/output/error decoded from JSON."""
    data = run.as_dict()
    for key in ("input", "output", "error"):
        data[key] = _decoded(data[key])
    return data


def journal_dict(row: JournalRecord) -> dict[str, Any]:
    data = {name: getattr(row, name) for name in row.__dataclass_fields__}
    for key in ("input", "output", "error"):
        data[key] = _decoded(data[key])
    return data


# -- logging ------------------------------------------------------------------------------------
@contextmanager
def log_to_stderr(level: str) -> Iterator[None]:
    """Codara's log records on stderr, one line per event (rich when stderr is a terminal).

    The previous logging state is restored afterwards (commands also run in-process in tests).
    """
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, markup=False, console=err_console())
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    from codara.engine._privacy import RedactingFilter

    handler.addFilter(RedactingFilter())  # personal values are written as their tokens
    logger = logging.getLogger("codara")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# -- errors ------------------------------------------------------------------------------------
_DEFAULT_HINTS: tuple[tuple[type[CodaraError], str], ...] = (
    (ConflictError, "look at the run's current state with `codara runs show RUN_ID`"),
    (RunError, "see the run's journal with `codara runs show RUN_ID`"),
    (WorkflowCodeError, "fix the workflow code, or give the changed code a new version"),
    (StoreError, "check the database URL and that the database is up and migrated"),
    (UserError, "see `codara --help` and docs/reference/config.md"),
)


def error_dict(exc: CodaraError) -> dict[str, str | None]:
    """``{"code", "message", "hint"}``; an error raised without a hint gets a general one."""
    data = exc.to_dict()
    if not data.get("hint"):
        data["hint"] = next((h for cls, h in _DEFAULT_HINTS if isinstance(exc, cls)), None)
    return data


def print_codara_error(exc: CodaraError, *, as_json: bool) -> None:
    from rich.text import Text

    data = error_dict(exc)
    if as_json:
        print_json({"error": data})
        return
    console = err_console()
    console.print(Text.assemble(("error: ", "bold red"), (exc.message, "red")), soft_wrap=True)
    if data["hint"]:
        console.print(Text.assemble(("hint: ", "bold yellow"), data["hint"]), soft_wrap=True)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)


def print_unexpected(exc: BaseException, *, as_json: bool) -> None:
    from rich.text import Text

    message = f"unexpected {type(exc).__name__}: {exc}"
    hint = (
        "this is a bug in Codara or in the workflow code; "
        "set CODARA_DEBUG=1 to see the traceback and report it"
    )
    if as_json:
        print_json({"error": {"code": "internal_error", "message": message, "hint": hint}})
    else:
        console = err_console()
        console.print(Text.assemble(("error: ", "bold red"), (message, "red")), soft_wrap=True)
        if not debug_enabled():
            console.print(Text.assemble(("hint: ", "bold yellow"), hint), soft_wrap=True)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)


# -- runs --------------------------------------------------------------------------------------
def runs_table(runs: Iterable[RunRecord]) -> Table:
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("workflow@version", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("attempts", justify="right")
    for run in runs:
        table.add_row(
            run.id,
            f"{run.workflow}@{run.version}",
            status_text(run.status),
            fmt_time(run.created_at),
            fmt_time(run.updated_at),
            str(run.attempts),
        )
    return table


def run_header(run: RunRecord, *, full: bool = False) -> Table:
    from rich.table import Table
    from rich.text import Text

    limit = None if full else TRUNCATE
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("run", run.id)
    grid.add_row("workflow", f"{run.workflow}@{run.version}")
    grid.add_row("status", status_text(run.status))
    if run.waiting_for:
        grid.add_row("waiting for", run.waiting_for)
    grid.add_row("attempts", str(run.attempts))
    grid.add_row("created", fmt_time(run.created_at))
    grid.add_row("updated", fmt_time(run.updated_at))
    if run.finished_at is not None:
        grid.add_row("finished", fmt_time(run.finished_at))
    grid.add_row("input", truncate(run.input, limit))
    if run.output is not None:
        grid.add_row("output", truncate(run.output, limit))
    if run.error is not None:
        grid.add_row("error", Text(truncate(run.error, limit), style="red"))
    return grid


def journal_tree(run: RunRecord, rows: Iterable[JournalRecord], *, full: bool = False) -> Tree:
    """The journal, one node per row: ``#seq kind name status duration``."""
    from rich.text import Text
    from rich.tree import Tree

    from codara.engine._read import read_summary

    limit = None if full else TRUNCATE
    tree = Tree(Text.assemble(("journal of ", "bold"), run.id))
    count = 0
    for row in rows:
        count += 1
        label = Text.assemble(
            (f"#{row.seq} ", "dim"),
            (row.kind, "bold"),
            " ",
            row.name,
            " ",
            status_text(row.status),
            " ",
            (fmt_duration(row.finished_at - row.started_at), "dim"),
        )
        if row.attempts > 1:
            label.append(f" ({row.attempts} attempts)", style="yellow")
        node = tree.add(label)
        data = read_summary(row)  # the data a read used, in one line
        if data is not None:
            node.add(Text.assemble(("data: ", "bold"), (data, "cyan")))
        for key, value, style in (
            ("input", row.input, "dim"),
            ("output", row.output, ""),
            ("error", row.error, "red"),
        ):
            if value is not None:
                node.add(Text.assemble((f"{key}: ", "bold"), (truncate(value, limit), style)))
    if count == 0:
        tree.add(Text("(no rows yet)", style="dim"))
    return tree


def audit_dict(report: AuditReport, names: Mapping[tuple[str, int], str]) -> dict[str, Any]:
    problems: list[dict[str, Any]] = []
    for p in report.problems:
        item: dict[str, Any] = {
            "run_id": p.run_id or None,
            "seq": p.seq,
            "row": names.get((p.run_id, p.seq)) if p.seq is not None else None,
            "problem": p.problem,
        }
        if p.review_id is not None:
            item["review_id"] = p.review_id
        problems.append(item)
    return {
        "ok": report.ok,
        "keyed": report.keyed,
        "runs_checked": report.runs_checked,
        "rows_checked": report.rows_checked,
        "reviews_checked": report.reviews_checked,
        "events_checked": report.events_checked,
        "heads_checked": report.heads_checked,
        "unkeyed_hashes": report.unkeyed_hashes,
        "anchor_checked": report.anchor_checked,
        "problems": problems,
    }


def guard(as_json: bool, fn: Callable[[], T]) -> T:
    """Run a command body; map every failure to a message and an exit code.

    A :class:`CodaraError` prints ``error:`` / ``hint:`` (or the JSON error) and exits with
    its ``exit_code``; anything else is unexpected: a short message and exit 1 (with the
    traceback when ``CODARA_DEBUG=1``).
    """
    try:
        return fn()
    except CodaraError as exc:
        print_codara_error(exc, as_json=as_json)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        from rich.text import Text

        err_console().print(Text("interrupted", style="yellow"))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        print_unexpected(exc, as_json=as_json)
        raise typer.Exit(1) from None
