"""`make demo`: triage the bank's support inbox end to end, offline, on SQLite; print the report.

python -m examples.support_triage [--tickets N] [--concurrency N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from codara.config import load_settings
from codara.errors import CodaraError
from codara.store import parse_url

from . import crm as crm_module
from .app import CONFIG, build
from .data import load_examples, split, tickets
from .report import build_report, print_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.support_triage",
        description="Triage BANKING77 support messages with Codara and print the metric report.",
    )
    p.add_argument("--config", type=Path, default=CONFIG, help="codara.toml to use")
    p.add_argument("--tickets", type=int, help="how many inbox tickets (default: inbox_size)")
    p.add_argument("--concurrency", type=int, help="runs the worker executes at once")
    p.add_argument("--keep", action="store_true", help="keep earlier runs in the database")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    return p


def _reset_database(url: str) -> None:
    parsed = parse_url(url)
    if parsed.dialect == "sqlite" and parsed.sqlite_path:
        path = Path(parsed.sqlite_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_demo(args: argparse.Namespace, console: Console) -> int:
    settings = load_settings(args.config)
    overrides = {"inbox_size": args.tickets} if args.tickets else {}
    if not args.keep:
        _reset_database(settings.store.url)
    work = build(settings, **overrides)
    cfg = work.settings
    concurrency = args.concurrency or settings.worker.concurrency

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        prep = progress.add_task("Preparing inbox and CRM", total=1)
        parts = split(
            load_examples(),
            inbox_size=cfg.inbox_size,
            fit_per_intent=cfg.fit_per_intent,
            tune_per_intent=cfg.tune_per_intent,
            seed=cfg.seed,
        )
        crm_module.create(cfg.crm_path)
        progress.update(prep, completed=1)

        fit = progress.add_task("Fitting the classifier (cached)", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(fit, completed=done, total=total)

        await asyncio.to_thread(work.model.prepare, parts, on_progress)
        model_seconds = time.perf_counter() - started

        async with work.app as app:
            inbox = list(tickets(parts.inbox))
            await app.start_runs(
                "triage",
                [t.model_dump() for t in inbox],
                keys=[f"demo:{t.id}" for t in inbox],
            )
            triage = progress.add_task("Triaging tickets", total=len(inbox))
            t0 = time.perf_counter()
            worker = asyncio.create_task(app.work(concurrency=concurrency, until_idle=True))
            while not worker.done():
                counts = await app.store.count_runs(workflow="triage")
                finished = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
                progress.update(triage, completed=finished)
                await asyncio.wait({worker}, timeout=0.25)
            await worker
            progress.update(triage, completed=len(inbox))
            seconds = time.perf_counter() - t0
            report = await build_report(app, seconds=seconds)

    console.print()
    try:
        hint = str(args.config.resolve().relative_to(Path.cwd()))
    except ValueError:
        hint = str(args.config)
    print_report(report, console, config_hint=hint)
    console.print(
        f"\nmodel: {work.model.describe()}; prepared in {model_seconds:.1f} s; "
        f"whole demo {time.perf_counter() - started:.1f} s; peak memory {_peak_rss_mb():.0f} MB"
    )
    console.print(f"CRM: {work.crm.counts()} (replies sent, tickets queued for people)")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.failed == 0 and report.unfinished == 0 else 1


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
