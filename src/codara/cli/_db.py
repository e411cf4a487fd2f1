"""``codara db upgrade|status`` and ``codara audit verify``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.text import Text

from codara.errors import NotFoundError, SchemaOutOfDateError
from codara.store import DatabaseURL, SchemaState, parse_url, schema_state, upgrade
from codara.trace import AuditReport

from ._loader import load_cli_settings, open_app, options
from ._output import audit_dict, err_console, guard, out_console, print_json

__all__ = ["EXIT_AUDIT_FAILED", "audit_app", "db_app"]

EXIT_AUDIT_FAILED = 20

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

db_app = typer.Typer(
    help="Codara's own database: schema status and upgrades.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
audit_app = typer.Typer(
    help="Check the tamper-evident journal.", no_args_is_help=True, rich_markup_mode=None
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
    opts = options(ctx, json_out)

    def body() -> tuple[DatabaseURL, SchemaState]:
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


@audit_app.command("verify")
def verify_command(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Argument(help="Check only this run (default: every run).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the hash chain of every run's journal (or one run's).

    Exit codes: 0 when every chain is intact; 20 when problems were found (each is
    printed: the run, the row and what is wrong); the error's code when the check could
    not run (e.g. 6 for an unknown run id, 8 for an unreachable database).
    """
    opts = options(ctx, json_out)

    async def body() -> tuple[AuditReport, dict[tuple[str, int], str]]:
        async with open_app(opts, workflows=False) as app:
            if run_id is not None and await app.store.get_run(run_id) is None:
                raise NotFoundError(
                    f"no run with id {run_id!r}", hint="list runs with `codara runs list`"
                )
            report = await app.verify(run_id)
            names: dict[tuple[str, int], str] = {}
            for rid in {p.run_id for p in report.problems if p.seq is not None}:
                for row in await app.store.journal(rid):
                    names[(rid, row.seq)] = f"{row.kind} {row.name!r}"
            return report, names

    report, names = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(audit_dict(report, names))
    else:
        console = out_console()
        console.print(f"checked {report.runs_checked} run(s), {report.rows_checked} journal row(s)")
        for p in report.problems:
            where = f"run {p.run_id}"
            if p.seq is not None:
                where += f" row #{p.seq}"
                if (p.run_id, p.seq) in names:
                    where += f" ({names[(p.run_id, p.seq)]})"
            console.print(Text.assemble(("problem: ", "bold red"), where, ": ", p.problem))
        if report.ok:
            console.print(Text("every journal chain is intact", style="green"))
        else:
            console.print(
                Text(f"{len(report.problems)} problem(s) found: the journal was altered", "red")
            )
    if not report.ok:
        raise typer.Exit(EXIT_AUDIT_FAILED)
