"""`make demo`: triage the bank's support inbox end to end, offline, on SQLite; print the report.

python -m examples.support_triage [--tickets N] [--concurrency N] [--crm-url URL]
                                  [--payments-url URL] [--json]

The demo writes the day's inbox (a CSV with some bad rows) under the inbox source's root
and creates the CRM (customers, cards, transactions; some stale, some broken) in SQLite,
or in the database --crm-url names; it starts the payments service on loopback (its
ledger in [triage] payments_ledger, its charges the CRM's transactions) unless
--payments-url (or [triage] payments_url) names one already running; then the `intake`
workflow reads the inbox through its source and starts one `triage` run per ticket, which
reads the CRM through the `crm` and `payments` sources and refunds through the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

import codara
from codara.cli import print_gate_report
from codara.config import Settings
from codara.errors import CodaraError
from codara.metrics import MetricReport, check, load_metric
from codara.review import Principal, Reviews
from codara.store import parse_url

from . import crm as crm_module
from . import payments as payments_module
from .app import CONFIG, Workload, build, crm_url, inbox_root, load
from .data import load_examples, split
from .inbox import write_inbox
from .report import build_report, print_report
from .simulate import decide_pending


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.support_triage",
        description="Triage BANKING77 support messages with Codara and print the metric report.",
    )
    p.add_argument("--config", type=Path, default=CONFIG, help="codara.toml to use")
    p.add_argument("--tickets", type=int, help="how many inbox tickets (default: inbox_size)")
    p.add_argument("--concurrency", type=int, help="runs the worker executes at once")
    p.add_argument(
        "--crm-url",
        help="the CRM's database (SQLAlchemy URL, e.g. postgresql://127.0.0.1/test); "
        "default: the SQLite file of codara.toml's [sources.crm]",
    )
    p.add_argument(
        "--payments-url",
        help="a payments service already running (http://HOST:PORT); default: [triage] "
        "payments_url, else the demo starts its own on loopback",
    )
    p.add_argument("--keep", action="store_true", help="keep earlier runs in the database")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.add_argument(
        "--simulate-reviewers",
        action="store_true",
        help="decide the pending reviews with the dataset's labels (approve or correct)",
    )
    return p


def _reset_database(url: str) -> None:
    parsed = parse_url(url)
    if parsed.dialect == "sqlite" and parsed.sqlite_path:
        path = Path(parsed.sqlite_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


ADMIN = Principal("demo", frozenset({"admin"}))


async def _drain(app: codara.App, concurrency: int, progress: Progress, task: TaskID) -> None:
    """Run a worker here until nothing is ready; runs waiting for people stay parked."""
    worker = asyncio.create_task(app.work(concurrency=concurrency, until_idle=True))
    while not worker.done():
        counts = await app.store.count_runs(workflow="triage")
        settled = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled", "waiting"))
        progress.update(task, completed=settled)
        await asyncio.wait({worker}, timeout=0.25)
    await worker
    progress.update(task, completed=progress.tasks[task].total)


def _print_queue(console: Console, queue: list[dict[str, Any]], *, simulated: bool) -> None:
    if not queue:
        return
    table = Table(title="Review queue after the first pass (what people had to decide)")
    table.add_column("role")
    table.add_column("items", justify="right")
    table.add_column("oldest deadline in", justify="right")
    now = time.time()
    for row in queue:
        due = row["next_due_at"]
        table.add_row(
            row["role"], str(row["open"]), "-" if due is None else f"{(due - now) / 3600:.1f} h"
        )
    console.print(table)
    if not simulated:
        console.print(
            "These runs wait durably. Decide them in the console (`codara serve`), with "
            "`codara review ...`, or rerun with --simulate-reviewers."
        )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    settings = load(args.config, crm_url=args.crm_url)
    overrides = {"inbox_size": args.tickets} if args.tickets else {}
    if not args.keep:
        _reset_database(settings.store.url)
    if args.payments_url is not None:
        overrides["payments_url"] = payments_module.check_url(args.payments_url)
    work = build(settings, **overrides)
    concurrency = args.concurrency or settings.worker.concurrency
    with contextlib.ExitStack() as stack:
        return await _run(args, console, settings, work, concurrency, stack)


async def _run(
    args: argparse.Namespace,
    console: Console,
    settings: Settings,
    work: Workload,
    concurrency: int,
    stack: contextlib.ExitStack,
) -> int:
    cfg = work.settings
    own_service = work.payments.url is None
    if not own_service:  # someone else's: it must answer before any ticket is triaged
        await work.payments.check()

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        prep = progress.add_task("Writing the inbox, creating the CRM", total=1)
        parts = split(
            load_examples(),
            inbox_size=cfg.inbox_size,
            fit_per_intent=cfg.fit_per_intent,
            tune_per_intent=cfg.tune_per_intent,
            seed=cfg.seed,
        )
        seeded = await asyncio.to_thread(crm_module.create, crm_url(settings))
        if own_service:  # the card processor's book of the same charges, on loopback
            service = await asyncio.to_thread(
                payments_module.start_for, crm_url(settings), cfg.payments_ledger,
                keep_refunds=args.keep,
            )  # fmt: skip
            stack.callback(service.stop)
            work.payments.url = service.url
        manifest = write_inbox(inbox_root(settings), parts.inbox, seed=cfg.seed)
        progress.update(prep, completed=1)

        fit = progress.add_task("Fitting the classifier (cached)", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(fit, completed=done, total=total)

        await asyncio.to_thread(work.model.prepare, parts, on_progress)
        model_seconds = time.perf_counter() - started

        async with work.app as app:
            await app.start_run("intake", {"pattern": manifest.path.name})
            triage = progress.add_task("Triaging tickets", total=manifest.tickets)
            t0 = time.perf_counter()
            await _drain(app, concurrency, progress, triage)
            seconds = time.perf_counter() - t0
            queue = await Reviews(app.store, app.clock).counts(ADMIN)
            waited: list[float] = []
            if args.simulate_reviewers and queue:
                review = progress.add_task("Simulated reviewers deciding", total=None)

                def on_review(done: int, total: int) -> None:
                    progress.update(review, completed=done, total=total)

                waited = await decide_pending(app, on_review)
                resume = progress.add_task("Resuming reviewed tickets", total=manifest.tickets)
                await _drain(app, concurrency, progress, resume)
                # a reviewed refund request may stop again, at the refund's own review
                for _ in range(3):
                    if not await Reviews(app.store, app.clock).counts(ADMIN):
                        break
                    waited += await decide_pending(app, on_review)
                    await _drain(app, concurrency, progress, resume)
            report = await build_report(app, seconds=seconds)
            report.decision_seconds = waited
            if report.data is not None:
                report.data.refunds.ledger = await asyncio.to_thread(work.payments.totals)
            gate = await _gate_check(app)

    console.print()
    try:
        hint = str(args.config.resolve().relative_to(Path.cwd()))
    except ValueError:
        hint = str(args.config)
    _print_queue(console, queue, simulated=bool(args.simulate_reviewers))
    print_report(report, console, config_hint=hint)
    console.print(
        f"\nmodel: {work.model.describe()}; prepared in {model_seconds:.1f} s; "
        f"whole demo {time.perf_counter() - started:.1f} s; peak memory {_peak_rss_mb():.0f} MB"
    )
    console.print(
        f"CRM: {seeded.customers} customers ({len(seeded.stale)} not updated for over 30 days, "
        f"{len(seeded.broken)} breaking its rules), {seeded.cards} cards, "
        f"{seeded.transactions} transactions; {work.crm.counts()} (replies sent, tickets "
        "queued for people)"
    )
    ledger = report.data.refunds.ledger if report.data is not None else None
    if ledger is not None:
        console.print(
            f"payments service {work.payments.url}: {ledger['refunded']} refunds in its "
            f"ledger, {ledger['cancelled']} cancelled"
        )
    if gate is not None:
        console.print("\n[bold]The gate[/bold] (`codara gate check triage`):")
        print_gate_report(gate, console)
    if args.json:
        print(json.dumps({**report.as_dict(), "gate": gate.as_dict() if gate else None}, indent=2))
    return 0 if report.failed == 0 and report.unfinished == 0 else 1  # waiting is fine


async def _gate_check(app: codara.App) -> MetricReport | None:
    """The gate's verdict for the demo's triage version, from its metric in codara.toml."""
    definition = load_metric(app.settings.section("workflows"), "triage")
    if definition is None:
        return None
    version = app.latest("triage").version
    return await check(app.store, definition, version=version, actor="demo", now=app.clock())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        return asyncio.run(run_demo(args, console))
    except CodaraError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        if exc.hint:
            console.print(f"[yellow]hint:[/yellow] {exc.hint}")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
