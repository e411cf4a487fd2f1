"""The reference workload survives a worker restart: a ticket parked for review, approved,
then resumed by a fresh worker (whose model was never prepared) completes."""

from __future__ import annotations

from pathlib import Path

from examples.support_triage.app import CONFIG, build, load
from examples.support_triage.crm import create
from examples.support_triage.data import Ticket

import codara
from codara.review import Principal, Reviews

STOLEN = "My card was stolen this morning and I need to block it now"


def _workload(db_url: str, tmp_path: Path) -> codara.App:
    crm = f"sqlite:///{tmp_path / 'crm.db'}"
    if not (tmp_path / "crm.db").exists():
        create(crm)
    (tmp_path / "inbox").mkdir(exist_ok=True)
    settings = load(CONFIG, crm_url=crm, inbox=tmp_path / "inbox",
                    overrides={"store": {"url": db_url, "durability": "os"}})  # fmt: skip
    w = build(settings, inbox_size=20, fit_per_intent=5, tune_per_intent=5,
              cache_dir=tmp_path / "cache")  # fmt: skip
    return w.app


async def test_parked_ticket_completes_on_a_fresh_worker_after_approval(
    db_url: str, tmp_path: Path
) -> None:
    first = _workload(db_url, tmp_path)
    async with first:
        run_id = await first.start_run(
            "triage", Ticket(id="t-1", text=STOLEN, customer_id=7).model_dump()
        )
        await first.work(until_idle=True)  # classifies (preparing the model), parks for fraud
        record = await first.get_run(run_id)
        assert record.status == "waiting", record.error
        fran = Principal("fran", frozenset({"fraud"}))
        reviews = Reviews(first.store, first.clock)
        [item] = await reviews.queue(fran, run_id=run_id)
        await reviews.approve(fran, item.id)

    fresh = _workload(db_url, tmp_path)  # a new worker process: its model is not prepared
    async with fresh:
        await fresh.work(until_idle=True)
        record = await fresh.get_run(run_id)
        assert record.status == "completed", record.error
        output = await fresh.output(run_id)
        assert output["action"] == "reviewed_reply"
        assert output["decided_by"] == ["fran"]
        assert (await fresh.verify(run_id)).ok
