"""``codara db upgrade|status`` and ``codara audit verify|anchor``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from codara.errors import InputError, NotFoundError, SchemaOutOfDateError

from ._loader import load_cli_settings, open_app, options
from ._output import audit_dict, err_console, guard, out_console, print_json

if TYPE_CHECKING:  # the store and the trace are imported by the command that uses them
    from codara.store import DatabaseURL, SchemaState
    from codara.trace import Anchor, AuditReport

__all__ = ["EXIT_AUDIT_FAILED", "audit_app", "db_app"]

EXIT_AUDIT_FAILED = 20

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

db_app = typer.Typer(
    help="Codara's own database: schema status and upgrades.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
audit_app = typer.Typer(
    help="Check the tamper-evident audit trail (journals, review decisions, chain heads).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

UNKEYED_WARNING = (
    "WARNING: CODARA_AUDIT_KEY is not set: the chain is unkeyed (plain SHA-256), so a "
    "consistent rewrite by someone with write access to the database cannot be detected "
    "(except against an anchor kept outside it)"
)


def _state_dict(url: DatabaseURL, state: SchemaState) -> dict[str, Any]:
    return {
        "database": url.redacted(),
        "current": state.current,
        "head": state.head,
        "up_to_date": state.up_to_date,
        "has_tables": state.has_tables,
    }


@db_app.command("upgrade")
def upgrade_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Create or migrate Codara's tables to the newest schema (safe to run again)."""
    opts = options(ctx, json_out)

    def body() -> tuple[DatabaseURL, SchemaState, SchemaState]:
        from codara.store import parse_url, schema_state, upgrade

        url = parse_url(load_cli_settings(opts).store.url)
        before = schema_state(url)
        if before.up_to_date:
            return url, before, before
        return url, before, upgrade(url)

    url, before, after = guard(opts.json, body)
    if opts.json:
        print_json({**_state_dict(url, after), "previous": before.current})
    elif before.up_to_date:
        err_console().print(f"{url.redacted()}: schema already at {after.current} (newest)")
    else:
        err_console().print(
            f"{url.redacted()}: schema upgraded from {before.current or 'empty'} to {after.current}"
        )


@db_app.command("status")
def status_command(
    ctx: typer.Context,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help=f"Exit with code {SchemaOutOfDateError.exit_code} unless the schema is the "
            "newest (for deploy scripts).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show the database's schema revision and the newest one this Codara knows."""
    from rich.text import Text

    opts = options(ctx, json_out)

    def body() -> tuple[DatabaseURL, SchemaState]:
        from codara.store import parse_url, schema_state

        url = parse_url(load_cli_settings(opts).store.url)
        return url, schema_state(url)

    url, state = guard(opts.json, body)
    if opts.json:
        print_json(_state_dict(url, state))
    else:
        if state.up_to_date:
            verdict = Text("up to date", style="green")
        elif state.current is None and state.has_tables:
            verdict = Text("tables without a revision record: see `codara db upgrade`", "red")
        else:
            verdict = Text("out of date: run `codara db upgrade`", style="yellow")
        console = out_console()
        console.print(f"database  {url.redacted()}")
        console.print(f"current   {state.current or ('unknown' if state.has_tables else 'empty')}")
        console.print(f"newest    {state.head}")
        console.print(Text.assemble("status    ", verdict))
    if check and not state.up_to_date:
        raise typer.Exit(SchemaOutOfDateError.exit_code)


def _read_anchor_file(path: Path) -> Anchor:
    from codara.trace import chain_key, read_anchor

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read the anchor file {path}: {exc.strerror}",
            hint="pass the file `codara audit anchor --out FILE` wrote",
        ) from exc
    return read_anchor(text, chain_key(), str(path))


@audit_app.command("verify")
def verify_command(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Argument(help="Check only this run and its reviews (default: all).")
    ] = None,
    anchor_file: Annotated[
        Path | None,
        typer.Option(
            "--anchor",
            help="An anchor written earlier by `codara audit anchor`: also check that the "
            "chain heads still hold it (catches a rewrite or truncation before it).",
        ),
    ] = None,
    require_key: Annotated[
        bool,
        typer.Option(
            "--require-key",
            help="Treat every unkeyed hash as a problem (for a store that had "
            "CODARA_AUDIT_KEY from its first run): catches a rewrite without the key even "
            "without an anchor.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check every hash chain: each run's journal, each review's events, the chain heads.

    Also cross-checks each run's status, output and error against its final result row and
    its recorded end, and finds deleted runs. Exit codes: 0 when everything is intact; 20
    when problems were found (each is printed: the run or review, the row and what is
    wrong); the error's code when the check could not run (e.g. 6 for an unknown run id, 8
    for an unreachable database, 3 for a signed anchor without CODARA_AUDIT_KEY).
    """
    import asyncio

    from rich.text import Text

    opts = options(ctx, json_out)

    async def body() -> tuple[AuditReport, dict[tuple[str, int], str]]:
        anchor = _read_anchor_file(anchor_file) if anchor_file is not None else None
        async with open_app(opts, workflows=False) as app:
            if run_id is not None and await app.store.get_run(run_id) is None:
                raise NotFoundError(
                    f"no run with id {run_id!r}", hint="list runs with `codara runs list`"
                )
            report = await app.verify(run_id, anchor=anchor, require_key=require_key)
            names: dict[tuple[str, int], str] = {}
            for rid in {p.run_id for p in report.problems if p.seq is not None}:
                for row in await app.store.journal(rid):
                    names[(rid, row.seq)] = f"{row.kind} {row.name!r}"
            return report, names

    report, names = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        data = audit_dict(report, names)
        if not report.keyed:
            data["warning"] = UNKEYED_WARNING
        print_json(data)
    else:
        console = out_console()
        if not report.keyed:
            console.print(Text(UNKEYED_WARNING, style="bold yellow"))
        elif report.unkeyed_hashes:
            console.print(
                Text(
                    f"note: {report.unkeyed_hashes} hash(es) are unkeyed (written before "
                    "CODARA_AUDIT_KEY was set): those rows are checked with plain SHA-256",
                    style="yellow",
                )
            )
        console.print(
            f"checked {report.runs_checked} run(s), {report.rows_checked} journal row(s), "
            f"{report.reviews_checked} review(s) with {report.events_checked} event(s), "
            f"{report.heads_checked} chain head(s)"
            + (", against the anchor" if report.anchor_checked else "")
        )
        for p in report.problems:
            if p.review_id is not None:
                where = f"review {p.review_id}" + (f" (run {p.run_id})" if p.run_id else "")
            elif p.run_id:
                where = f"run {p.run_id}"
            else:
                where = "chain heads"
            if p.seq is not None:
                where += f" row #{p.seq}"
                if (p.run_id, p.seq) in names:
                    where += f" ({names[(p.run_id, p.seq)]})"
            console.print(Text.assemble(("problem: ", "bold red"), where, ": ", p.problem))
        if report.ok:
            console.print(Text("every journal chain is intact", style="green"))
        else:
            console.print(
                Text(f"{len(report.problems)} problem(s) found: the audit trail was altered", "red")
            )
    if not report.ok:
        raise typer.Exit(EXIT_AUDIT_FAILED)


@audit_app.command("anchor")
def anchor_command(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the anchor to this file (default: stdout)."),
    ] = None,
) -> None:
    """Write the newest chain head (its seq and hash; HMAC-signed when CODARA_AUDIT_KEY is
    set) as JSON, for safekeeping outside the database. Later, `codara audit verify --anchor
    FILE` proves nothing before it was rewritten or cut off."""
    import asyncio

    from rich.text import Text

    opts = options(ctx, False)

    async def make() -> dict[str, Any]:
        from codara.trace import chain_key, make_anchor

        async with open_app(opts, workflows=False) as app:
            return await make_anchor(app.store, chain_key(), time.time())

    def body() -> tuple[dict[str, Any], str]:
        doc = asyncio.run(make())
        text = json.dumps(doc, indent=2) + "\n"
        if out is not None:
            try:
                out.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise InputError(
                    f"cannot write the anchor file {out}: {exc.strerror}",
                    hint="check the folder exists and is writable",
                ) from exc
        return doc, text

    doc, text = guard(opts.json, body)
    if out is None:
        out_console().file.write(text)
        return
    err_console().print(f"anchor: chain head #{doc['seq']} written to {out}")
    if doc["signature"] is None:
        err_console().print(Text(UNKEYED_WARNING, style="bold yellow"))
