"""A worker program the crash and concurrency tests start as real processes and SIGKILL.

    python tests/engine/crash_worker.py DATABASE_URL [--lease S] [--poll S] [--concurrency N]
                                        [--kill-at POINT:STEP --kill-marker FILE]
                                        [--kill-at effect.executed:EFFECT --kill-keys FILE
                                         --kill-marker DIR] [--shadow WORKFLOW]

It registers every test workflow below (all of them: the runs in the database say which
they need) and runs ``app.work()`` until it is killed. It prints
nothing; the engine's own warnings go to stderr (the tests send that to a file). With
``--fork-server`` it imports once and forks such workers on request (see ``fork_server``):
the tests use that to replace killed workers at once, without paying the import each time.

Aimed kills: with ``--kill-at POINT:STEP`` the worker SIGKILLs itself when it reaches
``POINT`` of the step (or transaction) named ``STEP``, once: only if ``--kill-marker FILE``
does not exist yet, and it creates that file (naming the point, the step and its pid) just
before the kill, since nothing runs after SIGKILL. The points are the engine's fault hooks
(``codara.engine._context.set_fault_hook``): ``step.executed`` (the step's function
returned, its journal row is not written), ``step.journaled`` (the row is durable, the
workflow has not seen the result), ``effect.claimed`` (an effect's claim is durable, its
handler has not run) and ``effect.executed`` (the handler returned, its result row is not
written); and ``tx.body``, inside the ``ledger`` workflow's
transaction body, after its INSERT and before the transaction commits.

Many aimed kills: ``--kill-at effect.executed:EFFECT --kill-keys FILE --kill-marker DIR``
kills right after the handler of ``EFFECT`` returned for any idempotency key listed in
``FILE`` (one a line), once per key: the marker is ``DIR/KEY`` (naming the point, the
effect, the pid and the key). A worker killed so has exited by itself as far as the test
can tell; the marker is how it tells such a death from a failure.

``--shadow WORKFLOW`` (repeatable) runs that workflow's effects in shadow mode, as
``[workflows.WORKFLOW] effects = "shadow"`` in ``codara.toml`` would.

The tests import this file too (by path), for the workflow names, the side tables and
``register``: a run can only be enqueued by an app that knows its workflow.

Workflows:

``ledger``   ``n`` steps, each a ``ctx.transaction`` appending one row to ``ledger`` in the
             same database: exactly once, whatever is killed when.
``idem``     ``n`` plain steps, each an external effect written from a separate connection
             with an idempotency key (``run_id:i``) into ``effects`` (UNIQUE key, ON CONFLICT
             DO NOTHING); every attempt is also logged in ``effect_attempts``, so the tests
             see how often a step really ran (at least once) against how often it took
             effect (once).
``pays``     ``n`` effects ``pay`` (``ctx.effect``) into ``payments``, a table that does NOT
             deduplicate (every execution is a payment), with a ``reconcile`` that looks
             the key up there (and ``shadow:I`` as its shadow result); attempts are logged
             in ``effect_attempts``. Aimed kills at
             ``effect.claimed`` / ``effect.executed`` of ``pay`` land at the first effect.
``pays_then_fails``  the same ``n`` payments, then the workflow fails: each payment is
             compensated into ``refunds`` (no deduplication either), newest first, with a
             ``compensated`` hook that looks the key up there.
``effect_series``  ``{"effect": E, "n": N, "pause": S}``: ``N`` effects ``E``, each after a
             pause of ``S`` seconds (so that random kills land mid-run, even in shadow mode
             where no handler runs). ``E`` is ``pay`` (above), ``pay_blind`` (the same
             payments, with no ``reconcile``: a second execution pays twice) or ``deposit``
             (into ``deposits``, a service that DOES deduplicate: UNIQUE key, ON CONFLICT DO
             NOTHING; no ``reconcile``, so it is executed again after a crash and the
             service drops the repeat). Every handler logs its executions in
             ``effect_attempts``.
``overlap``  ``n`` plain steps that each sleep a little and log (run, step, pid, start, end)
             into ``step_log`` from a separate autocommit connection, outside the journal
             transaction: two executions of one step at once would show as overlapping
             intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import codara
from codara.config import Settings, StoreSettings, WorkerSettings
from codara.engine._context import set_fault_hook
from codara.store import Tx, parse_url

LEDGER_DDL = "CREATE TABLE ledger (run_id TEXT, step INTEGER, worker TEXT)"
EFFECTS_DDL = (
    "CREATE TABLE effects (key TEXT NOT NULL, worker TEXT NOT NULL, CONSTRAINT uq_effects_key "
    "UNIQUE (key))"
)
EFFECT_ATTEMPTS_DDL = "CREATE TABLE effect_attempts (key TEXT NOT NULL, worker TEXT NOT NULL)"
STEP_LOG_DDL = (
    "CREATE TABLE step_log (run_id TEXT NOT NULL, step INTEGER NOT NULL, pid INTEGER NOT NULL, "
    "started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION NOT NULL)"
)
# An external payments system that does NOT deduplicate: every execution is a payment.
PAYMENTS_DDL = "CREATE TABLE payments (key TEXT NOT NULL, worker TEXT NOT NULL)"
REFUNDS_DDL = "CREATE TABLE refunds (key TEXT NOT NULL, worker TEXT NOT NULL)"
# An external service that DOES deduplicate by the idempotency key.
DEPOSITS_DDL = (
    "CREATE TABLE deposits (key TEXT NOT NULL, worker TEXT NOT NULL, CONSTRAINT uq_deposits_key "
    "UNIQUE (key))"
)
SIDE_TABLES = (
    LEDGER_DDL, EFFECTS_DDL, EFFECT_ATTEMPTS_DDL, STEP_LOG_DDL, PAYMENTS_DDL, REFUNDS_DDL,
    DEPOSITS_DDL,
)  # fmt: skip

WORKER = str(os.getpid())
KILL: tuple[str, str, Path] | None = None  # (point, step, marker file), from --kill-at
KILL_KEYS: frozenset[str] | None = None  # from --kill-keys: kill once per key, markers in a dir
EXECUTED: str | None = None  # the key of the effect whose handler returned last (see _executed)


def kill_here(point: str, step: str, note: str = "") -> None:
    """SIGKILL this process if ``--kill-at`` aims at ``point`` of ``step`` and its marker
    file does not exist yet (creating it first: the kill happens once per marker)."""
    if KILL is None or (point, step) != KILL[:2]:
        return
    marker = KILL[2]
    if KILL_KEYS is not None:  # aimed at some keys: the one whose handler just returned
        if EXECUTED not in KILL_KEYS:
            return
        marker = KILL[2] / EXECUTED
        note = f"key={EXECUTED}"
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # killed here once already: this is the replacement worker
    os.write(fd, f"{point} {step} pid={os.getpid()} {note}".strip().encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class SideDB:
    """A connection of its own, in autocommit mode, for effects outside the journal."""

    def __init__(self, url: str) -> None:
        self.url = parse_url(url)
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._lock = asyncio.Lock()

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.url.dialect == "sqlite":
            if self._sqlite is None:
                assert self.url.sqlite_path is not None
                self._sqlite = sqlite3.connect(
                    self.url.sqlite_path, isolation_level=None, timeout=60.0
                )
                self._sqlite.execute("PRAGMA busy_timeout=60000")
            self._sqlite.execute(sql, params)
            return
        import psycopg

        async with self._lock:  # one connection, shared by the worker's runs
            if self._pg is None:
                self._pg = await psycopg.AsyncConnection.connect(
                    self.url.pg_conninfo or "", autocommit=True
                )
            await self._pg.execute(sql.replace("?", "%s"), params)

    async def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """``SELECT COUNT(*) ...`` on the side connection."""
        if self.url.dialect == "sqlite":
            await self.execute("SELECT 1")  # opens the connection
            assert self._sqlite is not None
            return int(self._sqlite.execute(sql, params).fetchone()[0])
        await self.execute("SELECT 1")
        async with self._lock:
            cur = await self._pg.execute(sql.replace("?", "%s"), params)
            row = await cur.fetchone()
            return int(row[0])


def register(app: codara.App, side: SideDB | None = None) -> None:
    """Register the test workflows on ``app`` (``side`` is needed only to execute them)."""

    async def append_ledger(tx: Tx, run_id: str, step: int) -> int:
        await tx.execute(
            "INSERT INTO ledger (run_id, step, worker) VALUES (:run_id, :step, :worker)",
            {"run_id": run_id, "step": step, "worker": WORKER},
        )
        if KILL is not None and KILL[0] == "tx.body":
            rows = await tx.fetchall(
                "SELECT COUNT(*) FROM ledger WHERE run_id = :run_id AND step = :step",
                {"run_id": run_id, "step": step},
            )
            kill_here("tx.body", f"s{step}", f"rows_in_tx={rows[0][0]}")
        return step

    @app.workflow(name="ledger")
    async def ledger(ctx: codara.Context, n: int) -> int:
        done = 0
        for i in range(n):
            await asyncio.sleep(0.005)  # pace the runs so kills land mid-run on a fast machine
            await ctx.transaction(f"s{i}", append_ledger, ctx.run_id, i)
            done += 1
        return done

    async def effect(key: str) -> str:
        assert side is not None
        # An external call takes a moment: it also leaves the test time to kill workers
        # mid-run on a fast machine (without it SQLite finishes before the kills are due).
        await asyncio.sleep(0.01)
        await side.execute("INSERT INTO effect_attempts (key, worker) VALUES (?, ?)", (key, WORKER))
        await side.execute(
            "INSERT INTO effects (key, worker) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, WORKER),
        )
        return key

    @app.workflow(name="idem")
    async def idem(ctx: codara.Context, n: int) -> int:
        done = 0
        for i in range(n):
            await ctx.step(f"s{i}", effect, f"{ctx.run_id}:{i}")
            done += 1
        return done

    async def timed(run_id: str, step: int) -> int:
        assert side is not None
        started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        await asyncio.sleep(random.uniform(0.005, 0.02))
        ended = time.monotonic()
        await side.execute(
            "INSERT INTO step_log (run_id, step, pid, started, ended) VALUES (?, ?, ?, ?, ?)",
            (run_id, step, os.getpid(), started, ended),
        )
        return step

    async def pay(args: dict[str, Any], call: codara.EffectCall) -> str:
        assert side is not None
        await asyncio.sleep(0.01)
        await side.execute("INSERT INTO effect_attempts (key, worker) VALUES (?, ?)",
                           (call.key, WORKER))  # fmt: skip
        await side.execute("INSERT INTO payments (key, worker) VALUES (?, ?)", (call.key, WORKER))
        return _executed(call.key)

    async def deposit(args: dict[str, Any], call: codara.EffectCall) -> str:
        assert side is not None
        await asyncio.sleep(0.01)
        await side.execute("INSERT INTO effect_attempts (key, worker) VALUES (?, ?)",
                           (call.key, WORKER))  # fmt: skip
        await side.execute(
            "INSERT INTO deposits (key, worker) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (call.key, WORKER),
        )
        return _executed(call.key)

    async def paid(args: dict[str, Any], call: codara.EffectCall) -> str | None:
        assert side is not None
        found = await side.count("SELECT COUNT(*) FROM payments WHERE key = ?", (call.key,))
        return call.key if found else None

    async def refund(args: dict[str, Any], result: Any, call: codara.EffectCall) -> None:
        assert side is not None
        await asyncio.sleep(0.01)
        await side.execute("INSERT INTO refunds (key, worker) VALUES (?, ?)", (call.key, WORKER))

    async def refunded(args: dict[str, Any], result: Any, call: codara.EffectCall) -> bool:
        assert side is not None
        return bool(await side.count("SELECT COUNT(*) FROM refunds WHERE key = ?", (call.key,)))

    def shadow(args: dict[str, Any]) -> str:
        return f"shadow:{args['i']}"

    app.effect(codara.Effect(name="pay", run=pay, reconcile=paid, compensate=refund,
                             compensated=refunded, shadow=shadow))  # fmt: skip
    app.effect(codara.Effect(name="pay_blind", run=pay))
    app.effect(codara.Effect(name="deposit", run=deposit))

    @app.workflow(name="effect_series")
    async def effect_series(ctx: codara.Context, job: dict[str, Any]) -> int:
        done = 0
        for i in range(job["n"]):
            await asyncio.sleep(job["pause"])
            await ctx.effect(job["effect"], {"i": i})
            done += 1
        return done

    @app.workflow(name="pays_then_fails")
    async def pays_then_fails(ctx: codara.Context, n: int) -> int:
        for i in range(n):
            await ctx.effect("pay", {"i": i})
        raise ValueError("the order was cancelled by the bank: undo the payments")

    @app.workflow(name="pays_then_waits")
    async def pays_then_waits(ctx: codara.Context, n: int) -> int:
        for i in range(n):
            await ctx.effect("pay", {"i": i})
        await ctx.wait_for("shipped")  # the test cancels the run here
        await ctx.effect("pay", {"i": n})
        return n

    @app.workflow(name="pays")
    async def pays(ctx: codara.Context, n: int) -> int:
        done = 0
        for i in range(n):
            await ctx.effect("pay", {"i": i})
            done += 1
        return done

    @app.workflow(name="overlap")
    async def overlap(ctx: codara.Context, n: int) -> int:
        done = 0
        for i in range(n):
            await ctx.step(f"s{i}", timed, ctx.run_id, i)
            done += 1
        return done


def _executed(key: str) -> str:
    """Note ``key`` as the effect whose handler is returning. The engine calls the fault
    hook (``effect.executed``) right after the handler returns, with no ``await`` in
    between, so the hook sees this handler's key even with many runs in the process."""
    global EXECUTED
    EXECUTED = key
    return key


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--lease", type=float, default=2.0, help="lease seconds")
    parser.add_argument("--poll", type=float, default=0.05, help="poll interval seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--durability", choices=("fsync", "os"), default="os")
    parser.add_argument(
        "--kill-at",
        metavar="POINT:STEP",
        help="SIGKILL this worker at POINT (step.executed, step.journaled, tx.body) of STEP",
    )
    parser.add_argument(
        "--kill-marker",
        type=Path,
        help="with --kill-at: kill only once (with --kill-keys: a directory, once per key)",
    )
    parser.add_argument(
        "--kill-keys",
        type=Path,
        help="with --kill-at effect.executed:EFFECT: kill only after the effects whose keys "
        "this file lists, one a line",
    )
    parser.add_argument(
        "--shadow",
        action="append",
        default=[],
        metavar="WORKFLOW",
        help='run this workflow\'s effects in shadow mode (effects = "shadow")',
    )
    parser.add_argument(
        "--resume-lease",
        type=float,
        help="with --kill-marker: the lease of a worker started after the kill (the resumer "
        "need not lose its own lease to a loaded machine's pause; the victim's lease is "
        "what has to lapse)",
    )
    parser.add_argument(
        "--fork-server",
        action="store_true",
        help="serve the test: fork a worker per `spawn LOGFILE` line on stdin",
    )
    args = parser.parse_args(argv)
    if args.kill_at is not None:
        point, _, step = args.kill_at.partition(":")
        points = ("step.executed", "step.journaled", "tx.body", "effect.claimed",
                  "effect.executed", "compensate.claimed", "compensate.executed")  # fmt: skip
        if point not in points or not step:
            parser.error(f"--kill-at {args.kill_at!r}: expected POINT:STEP")
        if args.kill_marker is None:
            parser.error("--kill-at needs --kill-marker")
        if args.kill_keys is not None and point != "effect.executed":
            parser.error("--kill-keys works with --kill-at effect.executed:EFFECT only")
    elif args.kill_keys is not None:
        parser.error("--kill-keys needs --kill-at effect.executed:EFFECT")
    return args


def _aim(args: argparse.Namespace) -> None:
    """Install the ``--kill-at`` kill in this worker process."""
    global KILL, KILL_KEYS
    if args.kill_at is None:
        return
    point, _, step = args.kill_at.partition(":")
    KILL = (point, step, args.kill_marker)
    if args.kill_keys is not None:
        KILL_KEYS = frozenset(args.kill_keys.read_text().split())
    if point.startswith(("step.", "effect.", "compensate.")):
        set_fault_hook(kill_here)


async def work(args: argparse.Namespace) -> None:
    """Run one worker until the process is killed."""
    lease = args.lease
    if args.resume_lease is not None and args.kill_marker is not None and args.kill_marker.exists():
        lease = args.resume_lease
    settings = Settings(
        store=StoreSettings(url=args.url, durability=args.durability),
        worker=WorkerSettings(
            concurrency=args.concurrency, lease_seconds=lease, poll_interval=args.poll
        ),
        workflows={name: {"effects": "shadow"} for name in args.shadow},
    )
    app = codara.App(settings=settings, migrate="check")
    register(app, SideDB(args.url))
    _aim(args)
    async with app:
        await app.work(concurrency=args.concurrency)


def _child(args: argparse.Namespace, log_path: str) -> None:
    """In a freshly forked worker: own stdio, then work until killed. Never returns."""
    code = 1
    try:
        global WORKER
        WORKER = str(os.getpid())
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        random.seed()
        asyncio.run(work(args))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def fork_server(args: argparse.Namespace) -> None:
    """Start workers for a test in a few milliseconds each, however loaded the machine.

    Importing Codara costs seconds of CPU; a crash test that replaces a killed worker twenty
    times would spend most of its time (and both cores) importing. This process imports once
    and forks a real worker process per request. The workers never share anything with it
    but the imported code: no thread, event loop or connection exists before the fork.

    Protocol, one line each way: ``spawn LOGFILE`` -> ``pid N``; ``reap N`` (after the test
    SIGKILLed N) -> ``reaped N EXITCODE``; ``poll`` -> ``exited PID:CODE,...`` for workers
    that ended by themselves. End of input: every worker left is killed, then it exits.
    """
    import psycopg  # noqa: F401 - imported here once rather than in every worker

    children: set[int] = set()

    def reply(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    reply("ready")
    try:
        while line := sys.stdin.readline():
            command, _, arg = line.strip().partition(" ")
            if command == "spawn":
                pid = os.fork()
                if pid == 0:
                    _child(args, arg)
                children.add(pid)
                reply(f"pid {pid}")
            elif command == "reap":
                pid = int(arg)
                _, status = os.waitpid(pid, 0)
                children.discard(pid)
                reply(f"reaped {pid} {os.waitstatus_to_exitcode(status)}")
            elif command == "poll":
                exited = []
                for pid in sorted(children):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        children.discard(pid)
                        exited.append(f"{pid}:{os.waitstatus_to_exitcode(status)}")
                reply("exited " + ",".join(exited))
            else:
                reply(f"error unknown command {command!r}")
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


class Fleet:
    """The test side: worker processes forked by a ``--fork-server`` child of the test.

    ``start()`` returns the new worker's pid at once; ``kill(pid)`` SIGKILLs it and waits
    until it is gone. ``close()`` kills what is left. Worker stderr goes to ``log_dir``.
    """

    def __init__(self, url: str, log_dir: Path, *worker_args: str) -> None:
        self.log_dir = log_dir
        self.logs: list[Path] = []
        self.pids: set[int] = set()
        self.started = 0
        self.exited: list[tuple[int, int]] = []  # workers that ended by themselves
        env = {k: v for k, v in os.environ.items() if k != "CODARA_CONFIG"}
        self._server_log = log_dir / "fork-server.log"
        with open(self._server_log, "wb") as err:
            self._server = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), url, *worker_args,
                 "--fork-server"],
                cwd=Path(__file__).resolve().parents[2],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )  # fmt: skip
        try:
            self._expect("ready")
        except BaseException:
            self.close()
            raise

    def _ask(self, line: str) -> str:
        assert self._server.stdin is not None
        self._server.stdin.write(line + "\n")
        self._server.stdin.flush()
        return self._expect("")

    def _expect(self, prefix: str) -> str:
        assert self._server.stdout is not None
        answer = self._server.stdout.readline().strip()
        if not answer.startswith(prefix) or not answer:
            raise RuntimeError(
                f"fork server said {answer!r}; its log:\n"
                + self._server_log.read_text(errors="replace")[-3000:]
            )
        return answer

    def start(self) -> int:
        self.started += 1
        log = self.log_dir / f"worker-{self.started}.log"
        self.logs.append(log)
        pid = int(self._ask(f"spawn {log}").split()[1])
        self.pids.add(pid)
        return pid

    def kill(self, pid: int) -> None:
        self.pids.discard(pid)
        os.kill(pid, signal.SIGKILL)
        self._ask(f"reap {pid}")

    def check(self) -> None:
        """Note workers that exited although nobody killed them (a worker runs forever)."""
        for item in self._ask("poll").split(" ", 1)[1:]:
            for entry in filter(None, item.split(",")):
                pid, code = (int(x) for x in entry.split(":"))
                self.pids.discard(pid)
                self.exited.append((pid, code))

    def close(self) -> None:
        """Kill every worker left (the server kills them too when its input ends)."""
        server = self._server
        try:
            if server.poll() is None:
                for pid in list(self.pids):
                    self.kill(pid)
        finally:
            assert server.stdin is not None
            assert server.stdout is not None
            server.stdin.close()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            server.stdout.close()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


if __name__ == "__main__":
    options = _options(sys.argv[1:])
    if options.fork_server:
        fork_server(options)
    else:
        asyncio.run(work(options))
