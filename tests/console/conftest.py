"""Fixtures for the browser tests: Chromium, and a real HTTP server (uvicorn in a thread) on a
SQLite database seeded with a reviewer and three runs waiting for their reviews.

Chromium is Debian's (/usr/bin/chromium, ``apt-get install -y chromium``). Under CI=true a
missing browser fails the test; elsewhere it is skipped with one loud line.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pydantic import BaseModel

import codara
from codara.api import create_app
from codara.auth import Users
from codara.config import Settings
from codara.review import ReviewGate, install_reviews, load_policies

CHROMIUM = os.environ.get("CODARA_TEST_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REVIEWER, PASSWORD = "rita", "rita-reviews-refunds"

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "reject_reasons": ["wrong_amount", "fraud_suspected", "duplicate"],
            "policy_input": {"amount": "double", "confidence": "double"},
            "policies": [
                {
                    "name": "unsure",
                    "when": "confidence < 0.8",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "4h",
                    "on_timeout": "deny",
                }
            ],
        }
    }
}


class Refund(BaseModel):
    amount: float
    note: str


# Reviewers of the support role may see card numbers (the reject item's customer gives one).
REVEAL = {"privacy": {"reveal": {"support": ["card"]}}}
CARD = "4111 1111 1111 1111"


def build_app(url: str) -> codara.App:
    settings = Settings.model_validate({**REVEAL, "store": {"url": url, "durability": "os"}})
    app = codara.App(settings=settings)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = Refund(amount=req["amount"], note=f"refund order {req['order']}")
        result = await gate.check(
            ctx,
            "refund",
            proposal,
            inputs={"amount": req["amount"], "confidence": req["confidence"]},
            context={"customer": req["customer"], "order": req["order"]},
        )
        review = result.review
        return {
            "outcome": result.outcome,
            "amount": result.proposal.amount if result.go_ahead else None,
            "note": result.proposal.note if result.go_ahead else None,
            "reason_code": review.reason_code if review else None,
            "comment": review.comment if review else None,
        }

    return app


@pytest.fixture
def chromium() -> str:
    """The Chromium executable; fails under CI when missing, else skips loudly."""
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return CHROMIUM
    message = (
        f"Chromium not found at {CHROMIUM}. Install it (`apt-get install -y chromium`) or set "
        "CODARA_TEST_CHROMIUM to enable the console browser tests"
    )
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    print(f"\n!!! SKIPPING: {message}", file=sys.stderr)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    base_url: str
    db_url: str
    runs: dict[str, str]  # label -> run id
    reviews: dict[str, str]  # label -> review id
    user: str = REVIEWER
    password: str = PASSWORD


async def _seed(url: str) -> tuple[dict[str, str], dict[str, str]]:
    async with build_app(url) as app:
        await Users(app.store, app.clock).add(REVIEWER, ["support"], password=PASSWORD)
        runs = {}
        for i, label in enumerate(("approve", "edit", "reject")):
            runs[label] = await app.start_run(
                "refunds",
                {
                    "amount": 40.0 + 10 * i,
                    "confidence": 0.6 - 0.1 * i,
                    "customer": f"C-{100 + i}" + (f", card {CARD}" if label == "reject" else ""),
                    "order": f"A-{7000 + i}",
                },
            )
        await app.work(until_idle=True)
        reviews = {}
        for label, run_id in runs.items():
            rows = await app.store.execute_raw(
                "SELECT id FROM codara_reviews WHERE run_id = ?", (run_id,)
            )
            reviews[label] = str(rows[0][0])
        return runs, reviews


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """uvicorn serving the console on a free port, in a thread, for one test (with masking
    and vault keys, so that a reviewer may reveal the card number of the reject item)."""
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    url = f"sqlite:///{tmp_path / 'codara.db'}"
    runs, reviews = asyncio.run(_seed(url))
    port = _free_port()
    config = uvicorn.Config(
        create_app(build_app(url)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="codara-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", url, runs, reviews)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
async def worker_app(served: Served) -> AsyncIterator[codara.App]:
    """The same workflows on the same database, for running the resumed runs in the test."""
    async with build_app(served.db_url) as app:
        yield app
