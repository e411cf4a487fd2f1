"""``codara run``, ``codara runs list|show|cancel|retry|fork`` and ``codara signal``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from codara.errors import ConflictError, InputError, RunError

from ._loader import check_inputs, load_input_file, open_app, options, parse_json
from ._output import (
    err_console,
    guard,
    journal_dict,
    journal_tree,
    log_to_stderr,
    out_console,
    print_codara_error,
    print_json,
    run_dict,
    run_header,
    runs_table,
    status_text,
    truncate,
)

if TYPE_CHECKING:  # the engine is imported by the command that uses it (fast --help)
    from codara.engine import App
    from codara.store import RunRecord

__all__ = ["EXIT_NOT_FINISHED", "run_command", "runs_app", "signal_command"]

EXIT_NOT_FINISHED = 21
FINISHED = ("completed", "failed", "cancelled")
STATUSES = ("queued", "running", "sleeping", "waiting", "cancelling", *FINISHED)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
RunIdArg = Annotated[str, typer.Argument(help="The run's id (see `codara runs list`).")]

runs_app = typer.Typer(
    help="Inspect, cancel, retry and fork runs.", no_args_is_help=True, rich_markup_mode=None
)


# -- codara run --------------------------------------------------------------------------------
def run_command(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="Name of the workflow to run.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="The run's input as JSON.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input-file",
            "-f",
            help="Read the input from a file: .csv starts one run per row (a dict of the "
            "row; the first line is the header), .jsonl one run per line, anything else is "
            "one JSON document.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Execute the run here until it finishes and print its output (default), or "
            "only enqueue it for a worker and print its id.",
        ),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            help="With --wait: seconds to wait for timers, signals and other workers. A run "
            f"not finished by then stays saved (a worker carries on); exit code "
            f"{EXIT_NOT_FINISHED}.",
        ),
    ] = 300.0,
    json_out: JsonOpt = False,
) -> None:
    """Start a run of the latest version of WORKFLOW.

    Exit codes: 0 finished, 13 a run failed, 21 not finished within --timeout, and the
    error's code for anything else (see `codara --help`).
    """
    import asyncio

    opts = options(ctx, json_out)

    def body() -> int:
        if input is not None and input_file is not None:
            raise InputError(
                "give the input with --input or --input-file, not both",
                hint="drop one of them",
            )
        app = open_app(opts, workflows=True, migrate="create-if-empty")
        wf = app.latest(workflow)  # an unknown name fails before the store is touched
        if input_file is not None:
            inputs = load_input_file(input_file, wf)
        elif input is not None:
            inputs = [("--input", parse_json(input, "--input"))]
        else:
            inputs = [("the input (none was given: use --input)", None)]
        check_inputs(wf, inputs)
        with log_to_stderr("error"):  # a failed run is reported below, not logged twice
            return asyncio.run(_run(app, wf.name, [v for _, v in inputs], wait, timeout, opts.json))

    code = guard(opts.json, body)
    if code:
        raise typer.Exit(code)


async def _run(
    app: App, workflow: str, inputs: list[Any], wait: bool, timeout: float, as_json: bool
) -> int:
    import asyncio

    async with app:
        ids = await app.start_runs(workflow, inputs)  # one transaction: all or none
        if not wait:
            if as_json:
                queued = [{"run_id": i, "status": "queued"} for i in ids]
                print_json(queued[0] if len(queued) == 1 else {"runs": queued})
            else:
                for run_id in ids:
                    print(run_id)
                err_console().print(
                    f"{len(ids)} run(s) of {workflow!r} queued; `codara worker` executes them"
                )
            return 0
        deadline = time.monotonic() + timeout
        limit = asyncio.Semaphore(app.settings.worker.concurrency)

        async def one(run_id: str) -> RunRecord:
            async with limit:
                return await drive(app, run_id, deadline)

        records = await asyncio.gather(*(one(i) for i in ids))
    return _report(list(records), as_json)


async def drive(app: App, run_id: str, deadline: float) -> RunRecord:
    """Execute ``run_id`` in this process until it finishes or ``deadline`` passes.

    Timers are slept through here; a run parked on a signal is polled until the signal
    arrives (from another process). If another worker claims the run first, this waits for it.
    """
    import asyncio

    poll = app.settings.worker.poll_interval
    while True:
        record = await app.get_run(run_id)
        if record.status in FINISHED:
            return record
        now = app.clock()
        if record.ready_at is not None and record.ready_at <= now:
            try:
                await app.resume(run_id)
                continue
            except ConflictError:
                pass  # another worker claimed it a moment ago
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return record
        delay = poll if record.ready_at is None else min(max(record.ready_at - now, poll), 1.0)
        await asyncio.sleep(min(delay, remaining))


def _error_message(record: RunRecord) -> str:
    try:
        error = json.loads(record.error or "null") or {}
        return str(error.get("message") or error)
    except ValueError:
        return record.error or ""


def _report(records: list[RunRecord], as_json: bool) -> int:
    from rich.table import Table
    from rich.text import Text

    from codara.engine import REVIEW_SIGNAL_PREFIX

    def decoded(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    results = [
        {
            "run_id": r.id,
            "workflow": r.workflow,
            "version": r.version,
            "status": r.status,
            "output": decoded(r.output),
            "error": decoded(r.error),
            "waiting_for": r.waiting_for,
        }
        for r in records
    ]
    failed = [r for r in records if r.status in ("failed", "cancelled")]
    pending = [r for r in records if r.status not in FINISHED]
    if as_json:
        print_json(results[0] if len(results) == 1 else {"runs": results})
    elif len(records) == 1 and records[0].status == "completed":
        print(json.dumps(results[0]["output"], indent=2, ensure_ascii=False))
        err_console().print(Text.assemble("run ", records[0].id, " ", status_text("completed")))
    elif len(records) > 1:
        table = Table(header_style="bold")
        for column in ("id", "status", "output / error"):
            table.add_column(column, no_wrap=column != "output / error")
        for r in records:
            shown = r.output if r.status == "completed" else _error_message(r) or r.waiting_for
            table.add_row(r.id, status_text(r.status), truncate(shown))
        out_console().print(table)
    if failed:
        first = failed[0]
        message = f"run {first.id} {first.status}"
        if first.error:
            message += f": {_error_message(first)}"
        if len(records) > 1:
            message = f"{len(failed)} of {len(records)} runs did not complete; {message}"
        if not as_json:
            print_codara_error(
                RunError(message, hint=f"see `codara runs show {first.id}`"), as_json=False
            )
        return RunError.exit_code
    if pending:
        if not as_json:
            first = pending[0]
            why = f"waits for signal {first.waiting_for!r}" if first.waiting_for else first.status
            err_console().print(
                Text.assemble(
                    (
                        "not finished yet"
                        if len(records) == 1
                        else f"{len(pending)} runs not finished yet",
                        "yellow",
                    ),
                    f": run {first.id} {why}. It is saved; "
                    + (
                        "decide it with `codara review list` / `codara review approve`"
                        if first.waiting_for and first.waiting_for.startswith(REVIEW_SIGNAL_PREFIX)
                        else f"send the signal with `codara signal {first.id} {first.waiting_for}`"
                        if first.waiting_for
                        else "raise --timeout"
                    )
                    + " and a worker (`codara worker`) carries on.",
                ),
                soft_wrap=True,
            )
        return EXIT_NOT_FINISHED
    return 0


# -- codara runs ... ---------------------------------------------------------------------------
@runs_app.command("list")
def list_command(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help=f"Only runs in this status: {STATUSES}.")
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="At most this many.")
    ] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List the newest runs."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> list[RunRecord]:
        if status is not None and status not in STATUSES:
            raise InputError(
                f"unknown status {status!r}", hint=f"use one of: {', '.join(STATUSES)}"
            )
        async with open_app(opts, workflows=False) as app:
            return await app.store.list_runs(status=status, workflow=workflow, limit=limit)

    runs = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"runs": [run_dict(r) for r in runs]})
    elif not runs:
        err_console().print("no runs" + (" match" if status or workflow else " yet"))
    else:
        out_console().print(runs_table(runs))


@runs_app.command("show")
def show_command(
    ctx: typer.Context,
    run_id: RunIdArg,
    full: Annotated[bool, typer.Option("--full", help="Do not truncate values.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a run and its journal, one row per operation."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> tuple[RunRecord, list[Any]]:
        async with open_app(opts, workflows=False) as app:
            record = await app.get_run(run_id)
            return record, await app.journal(run_id)

    record, rows = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"run": run_dict(record), "journal": [journal_dict(r) for r in rows]})
        return
    console = out_console()
    console.print(run_header(record, full=full))
    console.print(journal_tree(record, rows, full=full))


@runs_app.command("cancel")
def cancel_command(ctx: typer.Context, run_id: RunIdArg, json_out: JsonOpt = False) -> None:
    """Cancel a run that has not finished (a worker executing it stops at once). A run
    whose effects happened is `cancelling` until a worker has undone them (compensate
    hooks, newest first), then `cancelled`."""
    import asyncio

    from rich.text import Text

    opts = options(ctx, json_out)

    async def body() -> RunRecord:
        async with open_app(opts, workflows=False) as app:
            await app.cancel(run_id)
            return await app.get_run(run_id)

    record = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"run_id": record.id, "status": record.status})
    else:
        err_console().print(Text.assemble("run ", record.id, " ", status_text(record.status)))


# -- codara signal -----------------------------------------------------------------------------
def signal_command(
    ctx: typer.Context,
    run_id: RunIdArg,
    name: Annotated[str, typer.Argument(help="The signal's name (what the run waits for).")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="The signal's payload as JSON.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Send signal NAME to a run; a run waiting for it is queued for a worker.

    Names starting `review:` are refused (exit 14): a review is decided with `codara review
    approve|edit|reject ID`, which checks the reviewer's role and four-eyes.
    """
    import asyncio

    from rich.text import Text

    opts = options(ctx, json_out)

    async def body() -> RunRecord:
        value = None if payload is None else parse_json(payload, "--payload")
        async with open_app(opts, workflows=False) as app:
            await app.send_signal(run_id, name, value)
            return await app.get_run(run_id)

    record = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"run_id": record.id, "signal": name, "status": record.status})
        return
    then = "a worker resumes it" if record.status == "queued" else "it reads it when it waits"
    err_console().print(
        Text.assemble(
            f"sent {name!r} to run {record.id} (now ", status_text(record.status), f"): {then}"
        )
    )


# -- codara runs retry | fork ------------------------------------------------------------------
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who does it, for the journal (default: the OS user)."),
]


@runs_app.command("retry")
def retry_command(
    ctx: typer.Context, run_id: RunIdArg, by: ByOpt = None, json_out: JsonOpt = False
) -> None:
    """Queue a failed run again: a worker resumes it from its last good step (the failed
    steps run again). The journal records who did it; only a failed run can be retried."""
    import asyncio

    from rich.text import Text

    from codara.engine import operator_name

    opts = options(ctx, json_out)
    who = operator_name(by)

    async def body() -> RunRecord:
        async with open_app(opts, workflows=False) as app:
            return await app.retry(run_id, by=who)

    record = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"run_id": record.id, "status": record.status, "retried_by": who})
    else:
        err_console().print(
            Text.assemble(
                "run ", record.id, " ", status_text(record.status),
                f" again (retried by {who}); `codara worker` resumes it",
            )
        )  # fmt: skip


@runs_app.command("fork", no_args_is_help=True)
def fork_command(
    ctx: typer.Context,
    run_id: RunIdArg,
    from_step: Annotated[
        str,
        typer.Option(
            "--from",
            help="Where the new run starts executing: a step name (its first occurrence) or "
            "seq:N (a journal row, see `codara runs show`). Everything before it is replayed.",
        ),
    ],
    by: ByOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a new run of RUN's workflow, version and input that replays RUN's journal up to
    --from and executes from there (RUN itself is left as it is)."""
    import asyncio

    from codara.engine import operator_name

    opts = options(ctx, json_out)
    who = operator_name(by)

    async def body() -> tuple[str, int]:
        async with open_app(opts, workflows=False) as app:
            new_id = await app.fork(run_id, from_step=from_step, by=who)
            marker = (await app.journal(new_id))[-1]
            return new_id, int(json.loads(marker.input or "{}")["from_seq"])

    new_id, from_seq = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json(
            {"run_id": new_id, "status": "queued", "forked_from": run_id, "from_seq": from_seq,
             "by": who}
        )  # fmt: skip
    else:
        print(new_id)
        err_console().print(
            f"run {new_id} forked from {run_id} at seq {from_seq} by {who}; "
            "`codara worker` executes it"
        )
