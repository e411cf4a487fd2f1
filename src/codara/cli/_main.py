"""The ``codara`` command: global options, the command tree, ``codara worker`` and ``main``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codara.errors import (
    CodaraError,
    ConfigError,
    ConflictError,
    DatabaseUnreachableError,
    InputError,
    NotFoundError,
    RunError,
    SchemaOutOfDateError,
    StoreError,
    UnknownWorkflowError,
    WorkflowCodeError,
    WorkflowVersionError,
)

from ._db import EXIT_AUDIT_FAILED, audit_app, db_app
from ._gate import EXIT_GATE_FAIL, EXIT_GATE_NOT_ENOUGH, gate_app, metric_app
from ._loader import Options, open_app, options
from ._output import (
    EXIT_INTERRUPTED,
    guard,
    log_to_stderr,
    print_codara_error,
    print_unexpected,
)
from ._policy import policy_app
from ._review import review_app
from ._runs import EXIT_NOT_FINISHED, run_command, runs_app, signal_command
from ._serve import serve_command, tokens_app, users_app
from ._sources import privacy_app, quarantine_app, sources_app

if TYPE_CHECKING:  # commands import what they need: `codara --help` loads no engine or store
    from codara.engine import App

__all__ = ["app", "main"]

_EXIT_CODES = (
    ("1", "unexpected error (CODARA_DEBUG=1 shows the traceback)"),
    ("2", "wrong usage (unknown option, missing argument)"),
    (str(ConfigError.exit_code), "configuration: codara.toml, --app, database URL"),
    (str(InputError.exit_code), "input: malformed JSON, CSV or input file"),
    (str(UnknownWorkflowError.exit_code), "no workflow of that name"),
    (str(NotFoundError.exit_code), "no run with that id"),
    (str(StoreError.exit_code), "other database problem (e.g. cannot migrate)"),
    (str(DatabaseUnreachableError.exit_code), "the database cannot be reached"),
    (str(SchemaOutOfDateError.exit_code), "schema out of date: run `codara db upgrade`"),
    (str(WorkflowCodeError.exit_code), "a mistake in workflow code (e.g. non-determinism)"),
    (str(WorkflowVersionError.exit_code), "this code lacks the run's workflow version"),
    (str(ConflictError.exit_code), "the run's state does not allow it (e.g. finished)"),
    (str(RunError.exit_code), "a run failed"),
    (str(EXIT_AUDIT_FAILED), "`audit verify` found problems in the journal"),
    (str(EXIT_NOT_FINISHED), "`run --wait`: a run did not finish within --timeout"),
    (str(EXIT_GATE_FAIL), "`gate check` failed (or `gate promote` refused on it)"),
    (str(EXIT_GATE_NOT_ENOUGH), "`gate check`: not enough evidence yet (promote refused)"),
    (str(EXIT_INTERRUPTED), "interrupted (Ctrl-C)"),
)

HELP = (
    "Codara: durable AI workflows. Start runs, run workers, inspect journals.\n\n"
    "The workflows come from your code: [app] module = 'package.module:app' in codara.toml, "
    "CODARA_APP or --app. The database comes from [store] url, CODARA_DATABASE_URL or "
    "--database-url.\n\n"
    "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in _EXIT_CODES)
)

app = typer.Typer(
    name="codara",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        import importlib.metadata

        try:
            version = importlib.metadata.version("codara-orchestrator")
        except importlib.metadata.PackageNotFoundError:  # running from a source tree
            version = "unknown"
        print(f"codara {version}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Settings file (default: $CODARA_CONFIG or ./codara.toml).",
            dir_okay=False,
        ),
    ] = None,
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app", help="The App to load, as module:attribute (overrides CODARA_APP, [app])."
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The store (overrides [store] url and CODARA_DATABASE_URL).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = Options(config=config, app=app_spec, database_url=database_url, json=json_out)


app.command("run", no_args_is_help=True)(run_command)
app.command("signal", no_args_is_help=True)(signal_command)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.command("serve")(serve_command)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(review_app, name="review")
app.add_typer(policy_app, name="policy")
app.add_typer(sources_app, name="sources")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(privacy_app, name="privacy")
app.add_typer(gate_app, name="gate")
app.add_typer(metric_app, name="metric")


# -- codara worker -----------------------------------------------------------------------------
async def _work(app: App, concurrency: int | None, until_idle: bool) -> int:
    """Run a worker until SIGTERM/SIGINT, then shut down gracefully.

    The first signal stops claiming; in-flight steps get ``[worker] shutdown_grace_seconds``
    to finish, then what is left is cancelled and handed back. A second signal ends the
    process at once. Should the shutdown itself hang (a store that neither answers nor fails),
    a watchdog ends the process a little after the grace period: the runs' leases then lapse
    and any worker resumes them.
    """
    import asyncio

    log = logging.getLogger("codara.cli")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    watchdogs: list[threading.Timer] = []
    grace = app.settings.worker.shutdown_grace_seconds

    def on_signal(sig: signal.Signals) -> None:
        log.info(
            "%s received: claiming nothing more; in-flight steps get %.0f s to finish, then "
            "runs are handed back",
            sig.name,
            grace,
        )
        stop.set()
        for s in installed:  # a second Ctrl-C interrupts at once
            loop.remove_signal_handler(s)
        watchdog = threading.Timer(grace + _SHUTDOWN_SLACK, _give_up, args=(grace,))
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        async with app:
            await app.ready_sources()
            await app.ready_mcp()
            worker = app.worker(concurrency=concurrency)
            names = sorted({f"{wf.name}@{wf.version}" for wf in app.workflows()})
            log.info(
                "worker %s started: %s, concurrency %d, store %s",
                worker.id,
                ", ".join(names),
                worker.concurrency,
                app.store.url_redacted,
            )
            executed = await worker.run(until_idle=until_idle, stop=stop)
            log.info("worker %s stopped after executing %d run(s)", worker.id, executed)
            return executed
    finally:
        for s in installed:
            loop.remove_signal_handler(s)
        for watchdog in watchdogs:  # shut down in time: the watchdog has nothing to do
            watchdog.cancel()


_SHUTDOWN_SLACK = 15.0  # beyond the grace: hand-backs (at most 5 s) and closing the store


def _give_up(grace: float) -> None:
    """The watchdog: the graceful shutdown did not end in time; leave the runs' leases to
    lapse."""
    sys.stderr.write(
        f"codara worker: shutdown still not done {grace + _SHUTDOWN_SLACK:.0f} s after the "
        "signal (is the store hanging?); exiting now, the runs' leases will lapse\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", "-n", min=1, help="Runs executed at once ([worker] concurrency)."
        ),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no run is ready (batch jobs, tests).")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Execute runs until SIGTERM or Ctrl-C (graceful: in-flight steps get [worker]
    shutdown_grace_seconds to finish, then claimed runs are handed back).

    Refuses to start on an out-of-date schema (exit 9: run `codara db upgrade` first).
    """
    import asyncio

    opts = options(ctx)

    def body() -> int:
        if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise InputError(
                f"unknown log level {log_level!r}", hint="use debug, info, warning or error"
            )
        with log_to_stderr(log_level):
            worker_app = open_app(opts, workflows=True, migrate="check")
            return asyncio.run(_work(worker_app, concurrency, until_idle))

    guard(opts.json, body)


# -- entry point -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """The ``codara`` console script (and ``python -m codara``)."""
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, prog_name="codara")  # exits itself: usage errors 2, commands their code
    except CodaraError as exc:  # raised outside a command body (should not happen)
        print_codara_error(exc, as_json=as_json)
        sys.exit(exc.exit_code)
    except Exception as exc:
        print_unexpected(exc, as_json=as_json)
        sys.exit(1)
