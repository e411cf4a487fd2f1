"""A store holding runs in every state, reviews with decisions, and the tools to tamper with it
(the attacker's view: raw SQL, and plain SHA-256 where a hash must be recomputed)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

import codara
from codara.review import Principal, ReviewGate, Reviews, install_reviews, load_policies
from codara.store import JournalRecord
from codara.store._audit import UNKEYED, HeadRecord, event_text, head_text
from codara.testing import FakeClock
from codara.trace import record_hash

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "policy_input": {"amount": "double"},
            "policies": [
                {"name": "ask", "when": "amount > 10.0", "outcome": "ask", "role": "support"}
            ],
        }
    }
}
ALICE = Principal("alice", frozenset({"support"}))
TABLES = (
    "codara_runs",
    "codara_journal",
    "codara_chain_heads",
    "codara_reviews",
    "codara_review_events",
)


class Refund(BaseModel):
    amount: float


@dataclass
class Scenario:
    app: codara.App
    runs: dict[str, str]  # label -> run id
    reviews: dict[str, str]  # label -> review id

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return {t: await self.app.store.execute_raw(f"SELECT * FROM {t}") for t in TABLES}

    async def restore(self, saved: dict[str, list[tuple[Any, ...]]]) -> None:
        async with self.app.store.tx() as tx:
            for table, rows in saved.items():
                await tx.execute(f"DELETE FROM {table}")
                for row in rows:
                    marks = ", ".join("?" * len(row))
                    await tx.execute(f"INSERT INTO {table} VALUES ({marks})", row)

    async def sql(self, statement: str, *params: Any) -> None:
        await self.app.store.execute_raw(statement, params)

    async def heads(self) -> list[HeadRecord]:
        rows = await self.app.store.execute_raw(
            "SELECT seq, kind, subject, length, head, state, at, prev_hash, hash "
            "FROM codara_chain_heads ORDER BY seq"
        )
        return [HeadRecord(*r) for r in rows]

    async def rewrite_journal(self, run_id: str, rows: list[JournalRecord]) -> None:
        """Replace a run's journal by ``rows``, re-chained with plain SHA-256 from the run's
        stored genesis: what an attacker without the key can do."""
        run = await self.app.get_run(run_id)
        prev = run.genesis_hash
        await self.sql("DELETE FROM codara_journal WHERE run_id = ?", run_id)
        for seq, row in enumerate(rows):
            row = replace(row, seq=seq, prev_hash=prev, hash="")
            row = replace(row, hash=record_hash(row, UNKEYED))
            prev = row.hash
            await self.sql(
                "INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, output, "
                "error, started_at, finished_at, attempts, prev_hash, hash, branch) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row.run_id, row.seq, row.op, row.kind, row.name, row.status, row.input,
                row.output, row.error, row.started_at, row.finished_at, row.attempts,
                row.prev_hash, row.hash, row.branch,
            )  # fmt: skip

    async def rewrite_heads(self, first: int, change: dict[int, dict[str, Any]]) -> None:
        """Re-chain the heads from ``first`` on with plain SHA-256, applying ``change``."""
        heads = await self.heads()
        prev = heads[first - 2].hash if first > 1 else heads[0].prev_hash
        for h in heads[first - 1 :]:
            h = replace(h, **change.get(h.seq, {}), prev_hash=prev)
            text = head_text(h.seq, h.kind, h.subject, h.length, h.head, h.state, h.at, prev)
            h = replace(h, hash=UNKEYED.seal(text))
            prev = h.hash
            await self.sql(
                "UPDATE codara_chain_heads SET length = ?, head = ?, state = ?, prev_hash = ?, "
                "hash = ? WHERE seq = ?",
                h.length, h.head, h.state, h.prev_hash, h.hash, h.seq,
            )  # fmt: skip

    async def forged_event_hash(self, event_id: int, **change: Any) -> str:
        rows = await self.app.store.execute_raw(
            "SELECT review_id, actor, action, detail, shown, at, prev_hash "
            "FROM codara_review_events WHERE id = ?",
            (event_id,),
        )
        review_id, actor, action, detail, shown, at, prev = rows[0]
        fields = {"actor": actor, "action": action, "detail": detail, "shown": shown, **change}
        return UNKEYED.seal(event_text(prev, review_id, at=at, **fields))


def make_app(db_url: str, clock: FakeClock | None = None) -> codara.App:
    app = codara.App(db_url) if clock is None else codara.App(db_url, clock=clock)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="five")
    async def five(ctx: codara.Context, _: None) -> int:
        def square(i: int) -> int:
            return i * i

        for i in range(5):
            await ctx.step(f"s{i}", square, i)
        return 5

    @app.workflow(name="boom")
    async def boom(ctx: codara.Context, _: None) -> None:
        await ctx.step("before", lambda: 1)
        raise ValueError("it broke")

    @app.workflow(name="nap")
    async def nap(ctx: codara.Context, _: None) -> str:
        await ctx.step("before", lambda: 1)
        await ctx.sleep(3600)
        return "rested"

    @app.workflow(name="waits")
    async def waits(ctx: codara.Context, _: None) -> Any:
        return await ctx.wait_for("go")

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        result = await gate.check(
            ctx, "refund", Refund(amount=req["amount"]), inputs={"amount": req["amount"]}
        )
        return {"outcome": result.outcome}

    return app


async def build(app: codara.App) -> Scenario:
    """Runs completed, failed, sleeping, waiting, running, queued and cancelled (queued and
    sleeping ones); reviews approved, edited and still open (claimed)."""
    runs: dict[str, str] = {}
    for label, workflow in (
        ("five", "five"),
        ("five2", "five"),
        ("boom", "boom"),
        ("nap", "nap"),
        ("waits", "waits"),
        ("nap_cancelled", "nap"),
        ("approved", "refunds"),
        ("edited", "refunds"),
        ("open", "refunds"),
    ):
        inp = {"amount": 50.0} if workflow == "refunds" else None
        runs[label] = await app.start_run(workflow, inp)
        await app.work(until_idle=True)
    await app.cancel(runs["nap_cancelled"])
    runs["queued_cancelled"] = await app.start_run("five")
    await app.cancel(runs["queued_cancelled"])
    runs["running"] = await app.start_run("five")
    now = app.clock()
    claimed = await app.store.claim("test-owner", ["five@1"], 1, now, now + 3600)
    assert [c.id for c in claimed] == [runs["running"]]
    service = Reviews(app.store, app.clock)
    items = {i.run_id: i.id for i in await service.queue(ALICE)}
    reviews = {label: items[runs[label]] for label in ("approved", "edited", "open")}
    await service.claim(ALICE, reviews["approved"])
    await service.approve(ALICE, reviews["approved"], comment="fine")
    await service.edit(ALICE, reviews["edited"], {"amount": 45.0})
    await service.claim(ALICE, reviews["open"])
    await app.work(until_idle=True)
    runs["queued"] = await app.start_run("five")
    statuses = {label: (await app.get_run(rid)).status for label, rid in runs.items()}
    assert statuses == {
        "five": "completed",
        "five2": "completed",
        "boom": "failed",
        "nap": "sleeping",
        "waits": "waiting",
        "nap_cancelled": "cancelled",
        "approved": "completed",
        "edited": "completed",
        "open": "waiting",
        "queued_cancelled": "cancelled",
        "running": "running",
        "queued": "queued",
    }, statuses
    return Scenario(app, runs, reviews)
