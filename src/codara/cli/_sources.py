"""``codara sources list|check`` and ``codara quarantine list|show|retry|drop``."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from codara.errors import InputError, ScopeError

from ._loader import load_cli_settings, open_app, options
from ._output import err_console, fmt_limit, fmt_time, guard, out_console, print_json, truncate

if TYPE_CHECKING:  # imported by the commands that use them (fast --help)
    from codara.engine._quarantine import QuarantinedRecord, Retried
    from codara.sources import Plan, Sources

__all__ = ["privacy_app", "quarantine_app", "sources_app"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

sources_app = typer.Typer(
    help="The data sources codara.toml declares: list them, test a read against a scope.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
quarantine_app = typer.Typer(
    help="Records a read could not accept: list, show, retry once fixed, or drop.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _sources(opts: Any) -> Sources:
    from codara.sources import load_sources

    settings = load_cli_settings(opts)
    return load_sources(settings.section("sources"), settings.source_file or "the configuration")


@sources_app.command("list")
def list_sources_command(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """The declared sources: kind, batch size, freshness limit, model and contract."""
    opts = options(ctx, json_out)
    sources = guard(opts.json, lambda: _sources(opts))
    listed: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": c.kind,
            "batch_rows": c.batch_rows,
            "max_age": c.max_age,
            "on_stale": c.on_stale,
            "record_model": c.record_model,
            "contract": c.contract,
        }
        for name, c in sorted(sources.configs.items())
    ]
    if opts.json:
        print_json({"sources": listed})
        return
    if not listed:
        err_console().print("no sources are declared (add [sources.NAME] to codara.toml)")
        return
    from rich.table import Table

    table = Table("source", "kind", "batch", "max age", "on stale", "model", "contract")
    for s in listed:
        table.add_row(
            s["name"], s["kind"], str(s["batch_rows"]),
            fmt_limit(s["max_age"]), s["on_stale"],
            s["record_model"] or "-", s["contract"],
        )  # fmt: skip
    out_console().print(table)


def _parse_params(values: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param {item!r}: expected NAME=VALUE", hint="e.g. --param id=42")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw  # not JSON: the text itself
    return params


@sources_app.command("check", no_args_is_help=True)
def check_command(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The source's name in codara.toml.")],
    target: Annotated[
        str | None,
        typer.Argument(help="What to read: an endpoint path, a path pattern (or use --sql)."),
    ] = None,
    sql: Annotated[
        str | None, typer.Option("--sql", help="A query to check (SQL sources).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="A bound parameter NAME=VALUE (VALUE as JSON)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Say whether the source's scope allows a read, why not, and what it would touch.

    Nothing is read: only the check a workflow's read passes first. Exit 0 when allowed,
    15 when refused."""
    opts = options(ctx, json_out)

    def body() -> tuple[Plan | None, ScopeError | None]:
        if (target is None) == (sql is None):
            raise InputError(
                "give what to check: a TARGET or --sql (one of them)",
                hint='e.g. codara sources check crm --sql "SELECT id FROM customers"',
            )
        what = sql if sql is not None else target
        assert what is not None
        connector = _sources(opts).get(source)
        try:
            return connector.plan(what, **_parse_params(param or [])), None
        except ScopeError as exc:
            return None, exc

    plan, refused = guard(opts.json, body)
    if refused is not None:
        if opts.json:
            print_json({"allowed": False, "source": source, "rule": refused.rule,
                        "reason": refused.message})  # fmt: skip
        else:
            err_console().print(f"refused ({refused.rule}): {refused.message}")
        raise typer.Exit(refused.exit_code)
    assert plan is not None
    if opts.json:
        print_json({"allowed": True, "source": source, "target": plan.target,
                    "params": dict(plan.params), "touches": list(plan.touched)})  # fmt: skip
        return
    console = out_console()
    console.print(f"allowed: {truncate(plan.target)}")
    for item in plan.touched:
        console.print(f"  touches {item}")


# -- codara quarantine ----------------------------------------------------------------------------
def _record_dict(r: QuarantinedRecord) -> dict[str, Any]:
    return r.to_dict()


@quarantine_app.command("list")
def list_quarantine_command(
    ctx: typer.Context,
    status: Annotated[
        str, typer.Option("--status", "-s", help="open, released, dropped, or all.")
    ] = "open",
    source: Annotated[str | None, typer.Option("--source", help="Only this source's.")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only records refused by it.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """The newest quarantined records (open ones by default)."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> list[QuarantinedRecord]:
        from codara.engine._quarantine import list_records

        async with open_app(opts, workflows=False) as app:
            return await list_records(
                app.store, status=None if status == "all" else status, source=source,
                rule=rule, limit=limit,
            )  # fmt: skip

    records = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"records": [_record_dict(r) for r in records]})
        return
    if not records:
        err_console().print("nothing in quarantine" + (" matches" if source or rule else ""))
        return
    from rich.table import Table

    table = Table("id", "at", "source", "where", "rule", "reason", "status")
    for r in records:
        table.add_row(r.id, fmt_time(r.at), r.source, r.position, r.rule, truncate(r.reason, 60),
                      r.status)  # fmt: skip
    out_console().print(table)


RecordArg = Annotated[str, typer.Argument(help="The record's id (see `codara quarantine list`).")]


@quarantine_app.command("show", no_args_is_help=True)
def show_quarantine_command(
    ctx: typer.Context, record_id: RecordArg, json_out: JsonOpt = False
) -> None:
    """One quarantined record: where it came from, why it was refused, what it holds."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> QuarantinedRecord:
        from codara.engine._quarantine import get

        async with open_app(opts, workflows=False) as app:
            return await get(app.store, record_id)

    record = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(_record_dict(record))
        return
    console = out_console()
    for key in ("id", "status", "source", "position", "rule", "reason", "run_id", "workflow"):
        console.print(f"{key:>9}: {getattr(record, key)}", markup=False, highlight=False)
    console.print(f"{'at':>9}: {fmt_time(record.at)}")
    if record.resolved_by:
        console.print(f"{'resolved':>9}: {fmt_time(record.resolved_at)} by {record.resolved_by}")
    console.print(f"{'record':>9}: {json.dumps(record.record, ensure_ascii=False)}",
                  markup=False, highlight=False)  # fmt: skip


def _by(value: str | None) -> str:
    return value or getpass.getuser()


@quarantine_app.command("retry", no_args_is_help=True)
def retry_command(
    ctx: typer.Context,
    record_id: RecordArg,
    record_file: Annotated[
        Path | None,
        typer.Option("--record-file", help="A corrected copy of the record (JSON) to check."),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who retries (default: OS user).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the record again against its source's current model; release it if it passes
    (starting the source's release_to workflow with it). Exit 0 released, 4 still refused."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> Retried:
        from codara.engine._quarantine import retry

        corrected = None
        if record_file is not None:
            try:
                corrected = json.loads(record_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(
                    f"--record-file {record_file}: {exc}", hint="give a JSON object"
                ) from exc
        async with open_app(opts, workflows=False) as app:
            return await retry(app._client(), app.sources, record_id, by=_by(by),
                               corrected=corrected)  # fmt: skip

    done = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"released": done.released, "run_id": done.run_id,
                    "record": _record_dict(done.record)})  # fmt: skip
    elif done.released:
        started = f"; started run {done.run_id}" if done.run_id else ""
        err_console().print(f"released {record_id}{started}")
    else:
        err_console().print(f"still refused: {done.record.reason}")
    if not done.released:
        raise typer.Exit(InputError.exit_code)


@quarantine_app.command("drop", no_args_is_help=True)
def drop_command(
    ctx: typer.Context,
    record_id: RecordArg,
    by: Annotated[str | None, typer.Option("--by", help="Who drops it (default: OS user).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Close an open record on purpose (it stays listed as dropped, with who did it)."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> QuarantinedRecord:
        from codara.engine._quarantine import drop

        async with open_app(opts, workflows=False) as app:
            return await drop(app.store, record_id, by=_by(by))

    record = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(_record_dict(record))
    else:
        err_console().print(f"dropped {record_id}")


# -- codara privacy ---------------------------------------------------------------------------
privacy_app = typer.Typer(
    help="Personal data: erase a person's originals from the vault (right to erasure).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@privacy_app.command("erase", no_args_is_help=True)
def erase_command(
    ctx: typer.Context,
    subject: Annotated[
        str,
        typer.Option(
            "--subject",
            help="The personal value (an email, IBAN, card or phone number, a name); '-' reads "
            "it from standard input, which keeps it out of the shell's history.",
        ),
    ],
    by: Annotated[str | None, typer.Option("--by", help="Who erases (default: OS user).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete the vault's originals of SUBJECT: its tokens stay in journals, reviews and
    quarantine, but nothing can turn them back into the value, and the audit trail (which
    hashes tokens only) stays intact. The erasure is recorded, without the value."""
    import asyncio
    import sys

    opts = options(ctx, json_out)

    async def body() -> list[str]:
        from codara.engine._privacy import erase, privacy

        value = sys.stdin.readline().strip() if subject == "-" else subject
        if not value:
            raise InputError("the subject is empty", hint="give the personal value to erase")
        async with open_app(opts, workflows=False) as app:
            return await erase(app.store, privacy(), value, by=_by(by))

    erased = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"erased": erased})
    elif erased:
        err_console().print(f"erased {len(erased)} vault entr{'y' if len(erased) == 1 else 'ies'}")
    else:
        err_console().print("nothing of that subject is in the vault")
