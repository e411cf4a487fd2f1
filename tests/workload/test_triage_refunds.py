"""Refund requests in the reference workload: the triage looks the transaction up through the
governed ``payments`` source, and the ``payments.refund`` effect asks the payments service
(a real HTTP service on loopback with a ledger of its own) for the refund, under the
policies of ``[effects."payments.refund"]``. Each refund is in the service's ledger once,
whatever is replayed, retried or crashed; what a policy denies, a reviewer holds or the
service refuses is never in it; shadow mode puts nothing in it."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from examples.support_triage import crm as crm_module
from examples.support_triage.__main__ import main
from examples.support_triage.app import CONFIG, Workload, build, load
from examples.support_triage.data import Ticket
from examples.support_triage.payments import PaymentsService
from examples.support_triage.report import data_report
from examples.support_triage.simulate import settle

import codara
from codara.engine._context import set_fault_hook
from codara.errors import ConflictError
from codara.review import Principal, Reviews

FINANCE = Principal("fiona", frozenset({"finance"}))
ASK = "I want a refund for something I bought, I returned it last week."


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triage-cache")


@dataclass
class Bank:
    work: Workload
    app: codara.App
    service: PaymentsService | None
    tx: dict[str, dict[str, Any]]
    """A name -> the transaction made for it (its customer, card, amount, status)."""

    def ledger(self) -> list[dict[str, Any]]:
        """Every refund in the payments service's own book."""
        assert self.service is not None
        return self.service.ledger.refunds()


def _bank(
    tmp_path: Path,
    cache: Path,
    start: Callable[[str], PaymentsService] | None,
    *,
    mode: str = "live",
    store: str | None = None,
) -> Bank:
    """The workload on a fresh CRM in which a few clean customers have just made a card
    payment each (the latest of their transactions): settled, pending, or big."""
    crm = tmp_path / "crm.db"
    seeded = crm_module.create(f"sqlite:///{crm}")
    flawed = {*seeded.stale, *seeded.broken, *seeded.broken_transactions.values()}
    clean = [c for c in range(1, seeded.customers + 1) if c not in flawed]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    plan = {"small": ("settled", 4250), "pending": ("pending", 1999), "big": ("settled", 24_000),
            "other": ("settled", 3100), "asks_more": ("settled", 1500)}  # fmt: skip
    tx: dict[str, dict[str, Any]] = {}
    with sqlite3.connect(crm) as conn:
        for n, (name, (status, cents)) in enumerate(plan.items()):
            customer = clean[n]
            (card,) = conn.execute(
                "SELECT MIN(id) FROM cards WHERE customer_id = ?", (customer,)
            ).fetchone()
            at = (now - dt.timedelta(minutes=1)).isoformat(" ")
            row = {"id": 900_000 + n, "card_id": card, "customer_id": customer,
                   "amount_cents": cents, "currency": "EUR", "merchant": "Zara",
                   "status": status, "at": at}  # fmt: skip
            conn.execute(
                "INSERT INTO transactions VALUES (:id, :card_id, :customer_id, :amount_cents, "
                ":currency, :merchant, :status, :at)",
                row,
            )
            tx[name] = row
    triage = tomllib.loads(CONFIG.read_text())["workflows"]["triage"]
    overrides: dict[str, dict[str, object]] = {
        "store": {"url": store or f"sqlite:///{tmp_path / 'codara.db'}", "durability": "os"},
        "workflows": {"triage": {**triage, "effects": mode}},
    }
    settings = load(CONFIG, crm_url=f"sqlite:///{crm}", inbox=tmp_path / "inbox",
                    overrides=overrides)  # fmt: skip
    (tmp_path / "inbox").mkdir(exist_ok=True)
    work = build(settings, inbox_size=20, fit_per_intent=5, tune_per_intent=5, cache_dir=cache)
    service = None
    if start is not None:
        service = start(f"sqlite:///{crm}")
        work.payments.url = service.url
    return Bank(work, work.app, service, tx)


async def _ask(app: codara.App, ticket_id: str, customer: int, text: str = ASK) -> str:
    ticket = Ticket(id=ticket_id, text=text, customer_id=customer, label="request_refund")
    return await app.start_run("triage", ticket.model_dump(mode="json"))


async def _finance_items(app: codara.App) -> dict[str, Any]:
    return {i.run_id: i for i in await Reviews.of(app).queue(FINANCE)}


async def _outputs(app: codara.App, runs: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, run_id in runs.items():
        record = await app.get_run(run_id)
        assert record.status == "completed", (name, record.status, record.error)
        out[name] = await app.output(run_id)
    return out


async def test_refund_requests_end_to_end_against_the_payments_service(
    db_url: str, tmp_path: Path, model_cache: Path,
    payments_service: Callable[[str], PaymentsService],
) -> None:  # fmt: skip
    bank = _bank(tmp_path, model_cache, payments_service, store=db_url)
    tx = bank.tx
    async with bank.app as app:
        theirs = f"Please refund transaction {tx['small']['id']}, I sent the goods back."
        more = "I want a refund of 900.00 EUR for the shoes I returned."
        runs = {
            "small": await _ask(app, "R1", tx["small"]["customer_id"]),
            "pending": await _ask(app, "R2", tx["pending"]["customer_id"]),
            "big": await _ask(app, "R3", tx["big"]["customer_id"]),
            # names someone else's transaction: looked up, and its owner is not the sender
            "theirs": await _ask(app, "R4", tx["other"]["customer_id"], theirs),
            "asks_more": await _ask(app, "R5", tx["asks_more"]["customer_id"], more),
        }
        await settle(app, rounds=1)  # decides the replies' reviews; not finance's
        items = await _finance_items(app)
        assert set(items) == {runs["big"]}  # above 200.00: held for a person in finance
        assert (await app.get_run(runs["big"])).status == "waiting"
        assert [r["transaction_id"] for r in bank.ledger()] == [tx["small"]["id"]]
        held = items[runs["big"]]
        assert held.proposal["amount_cents"] == 24_000
        assert held.context["facts"]["tx_amount"] == 24_000  # what the CRM says, beside it
        await Reviews.of(app).approve(FINANCE, held.id, comment="receipt checked")
        await settle(app)
        # the same transaction asked for again: the policy allows, the service refuses
        runs["again"] = await _ask(app, "R6", tx["small"]["customer_id"])
        await settle(app)
        out = await _outputs(app, runs)
        report = await data_report(app)
    ledger = bank.ledger()
    assert [(r["key"], r["transaction_id"], r["amount_cents"], r["status"]) for r in ledger] == [
        (f"refund:{runs['small']}", tx["small"]["id"], 4250, "refunded"),
        (f"refund:{runs['big']}", tx["big"]["id"], 24_000, "refunded"),
    ]
    assert out["small"]["refund"]["status"] == "refunded"
    assert out["small"]["action"] != "human"
    assert out["big"]["refund"]["refund_id"] == ledger[1]["refund_id"]
    for name, policy in (("pending", "not-settled"), ("theirs", "not-the-customers-transaction"),
                         ("asks_more", "more-than-charged")):  # fmt: skip
        assert out[name]["refund"]["status"] == "denied", (name, out[name])
        assert policy in out[name]["refund"]["reason"], (name, out[name])
        assert out[name]["action"] == "human"  # handed to a person, with the reason
    assert out["again"]["refund"]["status"] == "refused"
    assert "refunded already" in out["again"]["refund"]["reason"]
    with sqlite3.connect(tmp_path / "crm.db") as conn:
        queued = dict(conn.execute("SELECT ticket_id, reason FROM human_queue").fetchall())
        replies = dict(conn.execute("SELECT ticket_id, body FROM outbox").fetchall())
    assert set(queued) == {"R2", "R4", "R5", "R6"}
    assert "not-settled" in queued["R2"]
    assert "42.50 EUR" in replies["R1"]
    assert "240.00 EUR" in replies["R3"]
    r = report.refunds
    assert (r.executed, r.held_for_review, r.awaiting_review) == (2, 1, 0)
    assert (r.denied_by_policy, r.rejected_by_reviewer, r.refused_by_service) == (3, 0, 1)
    assert r.cents == {"EUR": 4250 + 24_000}
    assert bank.service is not None
    r.ledger = bank.service.ledger.totals()
    assert r.ledger_agrees


async def test_a_refund_finance_rejects_is_never_made(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    bank = _bank(tmp_path, model_cache, payments_service)
    async with bank.app as app:
        run_id = await _ask(app, "R1", bank.tx["big"]["customer_id"])
        await settle(app, rounds=1)
        [item] = (await _finance_items(app)).values()
        await Reviews.of(app).reject(FINANCE, item.id, "needs_more_info")
        await settle(app)
        [out] = (await _outputs(app, {"big": run_id})).values()
        report = await data_report(app)
    assert out["refund"]["status"] == "denied"
    assert "needs_more_info" in out["refund"]["reason"]
    assert bank.ledger() == []
    assert report.refunds.rejected_by_reviewer == 1
    assert report.refunds.denied_by_policy == 0


async def test_a_worker_dying_after_the_refund_does_not_refund_twice(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    """Killed after the service made the refund and before its result row: the next
    worker asks the service (reconcile) and records it; the ledger holds one refund."""
    bank = _bank(tmp_path, model_cache, payments_service)
    store = tmp_path / "codara.db"
    dead: list[str] = []

    def hook(point: str, name: str) -> None:
        if point == "effect.executed" and name == "payments.refund" and not dead:
            dead.append(name)  # the worker "dies": its lease lapses, its token moves on
            with sqlite3.connect(store, isolation_level=None) as conn:
                conn.execute("UPDATE codara_runs SET token = token + 1, ready_at = 0, "
                             "owner = NULL WHERE workflow = 'triage'")  # fmt: skip

    async with bank.app as app:
        run_id = await _ask(app, "R1", bank.tx["small"]["customer_id"])
        set_fault_hook(hook)
        try:
            await settle(app)
            for _ in range(5):  # the fenced attempt hands the run back for a moment later
                if (await app.get_run(run_id)).status == "completed":
                    break
                await app.work(until_idle=True)
        finally:
            set_fault_hook(None)
        [out] = (await _outputs(app, {"small": run_id})).values()
        rows = [j for j in await app.journal(run_id) if j.name == "payments.refund"]
        assert (await app.verify(run_id)).ok
    assert dead == ["payments.refund"]
    assert [r["key"] for r in bank.ledger()] == [f"refund:{run_id}"]  # once
    assert [r.status for r in rows] == ["claimed", "ok"]
    assert json.loads(rows[-1].output or "{}")["via"] == "reconciled"
    assert out["refund"]["status"] == "refunded"


async def test_a_run_retried_after_the_service_was_down_refunds_once(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    """The service does not answer: the refund's outcome is unknown, the run fails saying
    so. Retried when the service is back, the claim is reconciled first: one refund."""
    bank = _bank(tmp_path, model_cache, None)
    crm = f"sqlite:///{tmp_path / 'crm.db'}"
    bank.work.payments.url = "http://127.0.0.1:1"  # nothing listens there
    async with bank.app as app:
        run_id = await _ask(app, "R1", bank.tx["small"]["customer_id"])
        await settle(app)
        failed = await app.get_run(run_id)
        assert failed.status == "failed"
        assert "unknown outcome" in (failed.error or "")
        service = payments_service(crm)
        bank.service, bank.work.payments.url = service, service.url
        await app.retry(run_id, by="ops")
        await settle(app)
        [out] = (await _outputs(app, {"small": run_id})).values()
        rows = [j for j in await app.journal(run_id) if j.name == "payments.refund"]
        with pytest.raises(ConflictError, match="only a failed run can be retried"):
            await app.retry(run_id, by="ops")  # completed: nothing to do again
    assert [r["key"] for r in bank.ledger()] == [f"refund:{run_id}"]
    assert out["refund"]["status"] == "refunded"
    # the failed attempt kept its claim; the retry asked the service, then made it
    assert [r.status for r in rows] == ["claimed", "error", "ok"], [r.status for r in rows]


async def test_a_run_failing_after_its_refund_cancels_it(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    """The reply cannot be written after the refund was made: the run fails and the
    refund is compensated (cancelled at the service), which the report shows. It is not
    retried as if the refund stood; forked from before the refund, it refunds anew."""
    bank = _bank(tmp_path, model_cache, payments_service)
    async with bank.app as app:
        run_id = await _ask(app, "R1", bank.tx["big"]["customer_id"])
        await settle(app, rounds=1)
        [item] = (await _finance_items(app)).values()
        with sqlite3.connect(tmp_path / "crm.db") as conn:
            conn.execute("DROP TABLE outbox")  # the CRM loses its outbox
        await Reviews.of(app).approve(FINANCE, item.id)
        await settle(app)
        record = await app.get_run(run_id)
        report = await data_report(app)
        assert bank.service is not None
        ledger_then = bank.service.ledger.totals()
        cancelled = bank.ledger()
        with pytest.raises(ConflictError, match="compensated"):  # not as if it still stood
            await app.retry(run_id, by="ops")
        with pytest.raises(ConflictError, match="compensated") as refused:
            await app.fork(run_id, from_step="reply.send", by="ops")
        crm_module.metadata.create_all(sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}"))
        before = re.search(r"--from (seq:\d+)", refused.value.hint or "")
        assert before is not None, refused.value.hint
        forked = await app.fork(run_id, from_step=before.group(1), by="ops")
        await settle(app)
        [again] = (await _outputs(app, {"fork": forked})).values()
    assert record.status == "failed", record.status
    assert [r["status"] for r in cancelled] == ["cancelled"]
    r = report.refunds
    assert (r.executed, r.compensated) == (1, 1)
    r.ledger = ledger_then
    assert r.ledger == {"refunded": 0, "cancelled": 1, "cents": {}}
    assert r.ledger_agrees
    assert again["refund"]["status"] == "refunded"
    assert [(x["key"], x["status"]) for x in bank.ledger()] == [
        (f"refund:{run_id}", "cancelled"), (f"refund:{forked}", "refunded"),
    ]  # fmt: skip


async def test_shadow_mode_refunds_nothing(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    bank = _bank(tmp_path, model_cache, payments_service, mode="shadow")
    async with bank.app as app:
        run_id = await _ask(app, "R1", bank.tx["small"]["customer_id"])
        await settle(app)
        [out] = (await _outputs(app, {"small": run_id})).values()
        report = await data_report(app)
    assert out["refund"]["status"] == "shadow"
    assert out["refund"]["amount_cents"] == 4250  # what it would have refunded
    assert bank.ledger() == []
    assert (report.refunds.shadow, report.refunds.executed) == (1, 0)


def test_the_service_deduplicates_by_key_and_refuses_with_a_reason(tmp_path: Path) -> None:
    charges = [{"id": 1, "card_id": 5, "customer_id": 7, "amount_cents": 1000,
                "currency": "EUR", "status": "settled"}]  # fmt: skip
    with PaymentsService(tmp_path / "ledger.db") as service:
        service.ledger.load_charges(charges)
        base = service.url
        body = {"transaction_id": 1, "card_id": 5, "amount_cents": 600, "currency": "EUR"}

        def post(key: str, **change: Any) -> httpx.Response:
            return httpx.post(f"{base}/refunds", json={**body, **change},
                              headers={"Idempotency-Key": key})  # fmt: skip

        first, again = post("k1"), post("k1")
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["refund_id"] == again.json()["refund_id"]
        assert again.json()["replayed"] is True
        assert post("k1", amount_cents=5).status_code == 409  # the key, for something else
        refused = {
            "unknown": post("k2", transaction_id=2),
            "too much": post("k3"),  # 600 of 1000 refunded: 400 left
            "card": post("k4", card_id=6, amount_cents=1),
            "no key": httpx.post(f"{base}/refunds", json=body),
        }
        assert {k: r.status_code for k, r in refused.items()} == {
            "unknown": 404, "too much": 422, "card": 422, "no key": 400,
        }  # fmt: skip
        assert "400 of 1000 cents left" in refused["too much"].json()["reason"]
        assert httpx.get(f"{base}/refunds/k1").json()["status"] == "refunded"
        assert httpx.get(f"{base}/refunds/nope").status_code == 404
        assert httpx.get(f"{base}/ledger").json() == {
            "refunded": 1, "cancelled": 0, "cents": {"EUR": 600},
        }  # fmt: skip


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("notaurl", "is not an http(s) URL"),
        ("http://127.0.0.1:1", "does not answer"),
    ],
)
def test_a_payments_url_that_cannot_work_stops_the_demo_clearly(
    url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the example's relative paths (demo-out/...) land here
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["--config", str(CONFIG), "--tickets", "5", "--payments-url", url]) == 3
    out = capsys.readouterr().out
    assert says in " ".join(out.split()), out
    assert "Traceback" not in out
    assert not (tmp_path / "demo-out" / "crm.db").exists()  # stopped before any work
