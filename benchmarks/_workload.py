"""The reference workload against its model time: triage through ``codara worker`` vs the
embedder alone on the same texts.

    python -m benchmarks._workload --database sqlite --durability fsync --path /tmp/x/t.db

In one process, on one machine, back to back (so the ratios compare like with like):

* ``model_sorted``: ``Embedder.embed(texts)`` once: every ticket text in one call, which sorts
  by token length and runs batches of 32 (the well-batched floor the issue names).
* ``model_arrival32``: the same texts in arrival order, 32 per call (what a naive batcher does).
* ``in_process``: the same workload run by ``App.work`` in this process (the worker loop of
  ``codara worker`` without the process start), which also reports the batcher's figures:
  model calls, padding share, and the seconds the model was busy.
* ``workload``: the ``triage`` workflow of ``examples/support_triage`` for the same tickets
  (each reads its customer and recent transactions through the governed SQL sources),
  enqueued beforehand, then executed by a ``codara worker --until-idle`` subprocess on a fresh
  SQLite database (classifier already fitted: its cache is warm). Timed as the worker
  process's wall time (start-up, model load, every run) and, from the journal, as the span
  from the first step's start to the last run's last change (the runs alone).

The ratios are workload / model_sorted. ``model_sorted`` is the best of ``--reps`` timings
before the workload and one after it (the load of a shared machine drifts; the best is the
floor), ``model_arrival32`` the best of ``--reps``; the worker is run ``--workload-reps``
times (each on a fresh database), median reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks._common import RESULT_PREFIX

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "support_triage" / "codara.toml"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--database", choices=["sqlite"], default="sqlite")
    p.add_argument("--durability", choices=["fsync", "os"], default="fsync")
    p.add_argument("--path", required=True, help="SQLite file in a fresh directory")
    p.add_argument("--tickets", type=int, default=3000)
    p.add_argument("--concurrency", type=int, help="worker concurrency (default: codara.toml)")
    p.add_argument("--batch-tokens", type=int, help="[embedding] batch_tokens (default: its own)")
    p.add_argument("--threads", type=int, help="[embedding] threads of the workload's model")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each model timing")
    p.add_argument("--workload-reps", type=int, default=1, help="repetitions of the workload")
    # passed by benchmarks/run.py to every configuration; not used here
    p.add_argument("--runs", type=int)
    p.add_argument("--per-rep", type=int)
    return p.parse_args()


def _config(args: argparse.Namespace, db: Path, cache_dir: Path, payments_url: str) -> Path:
    """The example's codara.toml with this run's database, CRM and inbox size."""
    import tomllib

    data: dict[str, Any] = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    data["store"] = {"url": f"sqlite:///{db}", "durability": args.durability}
    if args.concurrency:
        data.setdefault("worker", {})["concurrency"] = args.concurrency
    if args.batch_tokens:
        data.setdefault("embedding", {})["batch_tokens"] = args.batch_tokens
    if args.threads is not None:
        data.setdefault("embedding", {})["threads"] = args.threads
    data["triage"].update(
        inbox_size=args.tickets, cache_dir=str(cache_dir), payments_url=payments_url
    )
    # the triage reads the CRM through its sources: this run's own CRM file and inbox folder
    for name in ("crm", "payments"):
        data["sources"][name]["url"] = f"sqlite:///{db.with_suffix('.crm.db')}"
    inbox = db.parent / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    data["sources"]["inbox"]["root"] = str(inbox)
    path = db.with_suffix(".toml")
    path.write_text(_dump_toml(data), encoding="utf-8")
    return path


def _key(key: str) -> str:
    """A TOML key: bare when it can be, else quoted (``"payments.refund"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for codara.toml: tables, arrays of tables, scalars and lists."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and isinstance(value[0], dict)
        ):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {json.dumps(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{_key(key)}"
        if isinstance(value, dict):
            out += f"\n[{name}]\n" + _dump_toml(value, f"{name}.")
        else:
            for item in value:
                out += f"\n[[{name}]]\n" + _dump_toml(item, f"{name}.")
    return out


def _best(fn: Any, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples)


async def _enqueue(config: Path, tickets: list[dict[str, Any]]) -> None:
    from examples.support_triage.app import build

    from codara.config import load_settings

    work = build(load_settings(config))
    async with work.app as app:
        await app.start_runs("triage", tickets, keys=[f"bench:{t['id']}" for t in tickets])


async def _work_here(app: Any, concurrency: int) -> float:
    async with app:
        t0 = time.perf_counter()
        await app.work(concurrency=concurrency, until_idle=True)
        return time.perf_counter() - t0


def _journal_span(db: Path) -> tuple[float, dict[str, int]]:
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT MIN(started_at) FROM codara_journal").fetchone()[0]
        last = conn.execute("SELECT MAX(updated_at) FROM codara_runs").fetchone()[0]
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM codara_runs GROUP BY status"))
    return float(last) - float(first), counts


def _check_settled(counts: dict[str, int], expected: int) -> None:
    settled = sum(counts.get(s, 0) for s in ("completed", "waiting"))
    if settled != expected:
        raise SystemExit(f"not every run settled: {counts}")


def main() -> None:
    args = parse_args()
    db = Path(args.path).resolve()
    cache_dir = ROOT / ".cache" / "codara"  # the demo's cache: the fitted model is reused
    from examples.support_triage import crm as crm_module
    from examples.support_triage import payments as payments_module

    # the demo's payments service, on loopback: refund requests are refunded through it
    service = payments_module.PaymentsService(db.with_suffix(".payments.db"))
    config = _config(args, db, cache_dir, service.url)
    os.environ["CODARA_CONFIG"] = str(config)

    from examples.support_triage.app import build
    from examples.support_triage.data import load_examples, split, tickets

    from codara.config import load_settings
    from codara.models import Embedder

    work = build(load_settings(config))
    cfg = work.settings
    parts = split(
        load_examples(),
        inbox_size=cfg.inbox_size,
        fit_per_intent=cfg.fit_per_intent,
        tune_per_intent=cfg.tune_per_intent,
        seed=cfg.seed,
    )
    work.model.prepare(parts)  # fitted now (or loaded from the cache): not timed
    inbox = [t.model_dump() for t in tickets(parts.inbox)]
    texts = [t["text"] for t in inbox]
    # the floor is the embedder at its defaults (all the CPUs), whatever the workload uses
    embedder = Embedder.shared()
    embedder.embed(texts[:256])  # warm-up

    def sorted_call() -> None:
        embedder.embed(texts)

    def arrival32() -> None:
        for i in range(0, len(texts), 32):
            embedder.embed(texts[i : i + 32])

    reps = max(1, min(args.reps, 3))
    model_sorted = _best(sorted_call, reps)
    model_arrival = _best(arrival32, reps)

    crm = db.with_suffix(".crm.db")

    def fresh() -> None:
        for base in (db, crm):
            for path in (base, Path(f"{base}-wal"), Path(f"{base}-shm")):
                path.unlink(missing_ok=True)
        crm_module.create(f"sqlite:///{crm}")
        # the service's book of the same charges, no refunds yet: each rep the same work
        service.ledger.load_charges(payments_module.charges_from(f"sqlite:///{crm}"))

    # In this process first: the same worker loop (App.work), to read the batcher's figures.
    concurrency = load_settings(config).worker.concurrency
    fresh()
    asyncio.run(_enqueue(config, inbox))
    inproc = asyncio.run(_work_here(work.app, concurrency))
    stats = work.model.batcher.stats
    work.crm.close()
    _, counts = _journal_span(db)
    _check_settled(counts, len(inbox))

    workload: list[float] = []
    spans: list[float] = []
    env = dict(os.environ, CODARA_CONFIG=str(config))
    cmd = [sys.executable, "-m", "codara", "worker", "--until-idle", "--log-level", "warning"]
    for rep in range(args.workload_reps):
        fresh()
        asyncio.run(_enqueue(config, inbox))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        workload.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"worker exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        span, counts = _journal_span(db)
        spans.append(span)
        print(f"rep {rep}: worker {workload[-1]:.2f}s, runs {span:.2f}s, {counts}", file=sys.stderr)
        _check_settled(counts, len(inbox))

    # once more after the workload: the machine's load drifts, and the floor is the best seen
    model_sorted_before = model_sorted
    model_sorted = min(model_sorted, _best(sorted_call, 1))

    def ratio(samples: list[float]) -> float | None:
        return round(statistics.median(samples) / model_sorted, 2) if samples else None

    versions = {}
    for name in ("codara-orchestrator", "onnxruntime", "tokenizers", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    result = {
        "system": "triage",
        "database": "sqlite",
        "durability": args.durability,
        "tickets": len(inbox),
        "tokens": sum(len(t) for t in embedder.tokenize(texts)),
        "concurrency": concurrency,
        "model_threads": embedder.threads,
        "workload_model_threads": work.model.embedder.threads,
        "model_sorted_s": round(model_sorted, 3),
        "model_sorted_before_s": round(model_sorted_before, 3),
        "model_arrival32_s": round(model_arrival, 3),
        "workload_worker_s": [round(x, 3) for x in workload],
        "workload_runs_s": [round(x, 3) for x in spans],
        "ratio_worker_vs_sorted": ratio(workload),
        "ratio_runs_vs_sorted": ratio(spans),
        "ratio_arrival32_vs_sorted": round(model_arrival / model_sorted, 2),
        "in_process_s": round(inproc, 3),
        "ratio_in_process_vs_sorted": round(inproc / model_sorted, 2),
        "batcher": {
            "model_calls": stats.calls,
            "largest_batch": stats.largest,
            "padding_share": round(stats.padding_share, 3),
            "model_busy_s": round(stats.busy, 3),
            "ratio_busy_vs_sorted": round(stats.busy / model_sorted, 2),
            "batch_tokens": work.model.embedding.batch_tokens,
        },
        "runs": counts,
        "python": platform.python_version(),
        "versions": versions,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
