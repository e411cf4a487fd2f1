"""The reference workload changes the CRM only through effects: live, every reply and
hand-off is written once under its journaled key; in shadow mode the runs complete and
nothing reaches the CRM, each effect recorded with what it would have written."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from examples.support_triage import crm as crm_module
from examples.support_triage.app import CONFIG, build, load
from examples.support_triage.data import load_examples, split
from examples.support_triage.inbox import write_inbox
from examples.support_triage.payments import PaymentsService
from examples.support_triage.report import data_report
from examples.support_triage.simulate import settle

import codara


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triage-cache")


async def _triage(
    tmp_path: Path, cache: Path, mode: str, payments: Callable[[str], PaymentsService]
) -> tuple[codara.App, Any]:
    crm = f"sqlite:///{tmp_path / 'crm.db'}"
    triage_table = tomllib.loads(CONFIG.read_text())["workflows"]["triage"]
    overrides: dict[str, dict[str, object]] = {
        "store": {"url": f"sqlite:///{tmp_path / 'codara.db'}", "durability": "os"},
        "workflows": {"triage": {**triage_table, "effects": mode}},
    }
    settings = load(CONFIG, crm_url=crm, inbox=tmp_path / "inbox", overrides=overrides)
    work = build(settings, inbox_size=20, fit_per_intent=5, tune_per_intent=5, cache_dir=cache)
    parts = split(load_examples(), inbox_size=20, fit_per_intent=5, tune_per_intent=5)
    crm_module.create(crm)
    work.payments.url = payments(crm).url
    write_inbox(tmp_path / "inbox", parts.inbox)
    async with work.app as app:
        await app.start_run("intake", {"pattern": "inbox.csv"})
        await settle(app)
        for run in await app.store.list_runs(limit=1000):
            assert run.status == "completed", (run.workflow, run.status, run.error)
        effects = [
            (r.name, json.loads(r.output or "{}").get("via"), json.loads(r.input or "{}"))
            for run in await app.store.list_runs(workflow="triage", limit=1000)
            for r in await app.journal(run.id)
            if r.kind == "effect" and r.status == "ok"
        ]
        report = await data_report(app)
    counts = work.crm.counts()
    work.crm.close()
    return app, (effects, counts, report)


async def test_live_every_reply_and_handoff_is_written_once_under_its_key(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    _, (effects, counts, report) = await _triage(tmp_path, model_cache, "live", payments_service)
    assert effects, "the triage did nothing to the CRM"
    assert {via for _, via, _ in effects} == {"executed"}
    replies = [e for e in effects if e[0] == "reply.send"]
    handoffs = [e for e in effects if e[0] == "handoff.queue"]
    assert counts == {"outbox": len(replies), "human_queue": len(handoffs)}
    keys = [args["key"] for _, _, args in effects]
    assert len(keys) == len(set(keys))  # one key per effect, journaled with its arguments
    assert sum(report.effects["reply.send"].values()) == len(replies)


async def test_shadow_mode_completes_every_run_and_writes_nothing(
    tmp_path: Path, model_cache: Path, payments_service: Callable[[str], PaymentsService]
) -> None:
    _, (effects, counts, report) = await _triage(tmp_path, model_cache, "shadow", payments_service)
    assert effects
    assert {via for _, via, _ in effects} == {"shadow"}
    assert counts == {"outbox": 0, "human_queue": 0}  # nothing reached the CRM
    for name, _, args in effects:  # what it would have written is in the journal
        assert args["args"]["customer_id"] > 0, (name, args)
    assert report.effects["reply.send"]["shadow"] == sum(1 for e in effects
                                                          if e[0] == "reply.send")  # fmt: skip
