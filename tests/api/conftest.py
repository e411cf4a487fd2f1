"""Fixtures for the HTTP tests: a refunds workflow behind a ReviewGate, users with tokens, and
an ``httpx.AsyncClient`` on the FastAPI app (lifespan driven by the fixture).

Migrating and hashing passwords cost seconds, so databases are migrated and seeded with the
users once per session: SQLite copies that file per test, PostgreSQL empties every table but
the users' between tests.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

import codara
from codara.api import create_app
from codara.auth import Users
from codara.config import Settings
from codara.review import ReviewGate, install_reviews, load_policies
from codara.store import parse_url, upgrade
from codara.testing import FakeClock

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "reject_reasons": ["wrong_amount", "fraud_suspected"],
            "policy_input": {"amount": "double", "confidence": "double"},
            "policies": [
                {
                    "name": "big",
                    "when": "amount > 500.0",
                    "outcome": "ask",
                    "role": "finance",
                    "deadline": "2h",
                    "on_timeout": "deny",
                },
                {
                    "name": "unsure",
                    "when": "confidence < 0.8",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                },
            ],
        }
    }
}

USERS = {
    "alice": ["support"],
    "dan": ["support"],
    "carol": ["finance"],
    "olga": ["operator"],
    "root": ["admin"],
}
PASSWORD = "correct horse battery"


class Refund(BaseModel):
    amount: float
    note: str


def build_app(url: str, clock: Any = None, settings: Settings | None = None) -> codara.App:
    """The refunds workflow: a policy asks a person when unsure or big; output = decision.
    ``settings`` (with ``url`` as its store) replaces the configuration file's."""
    if settings is not None:
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": url})}
        )
    app = codara.App(url, clock=clock or time.time, settings=settings)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")
    install_reviews(app)

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = Refund(amount=req["amount"], note="refund as asked")
        result = await gate.check(
            ctx,
            "refund",
            proposal,
            inputs={"amount": req["amount"], "confidence": req["confidence"]},
            context={"customer": req.get("customer", "C-1")},
            low_risk=bool(req.get("low_risk", False)),
        )
        review = result.review
        return {
            "outcome": result.outcome,
            "amount": result.proposal.amount if result.go_ahead else None,
            "note": result.proposal.note if result.go_ahead else None,
            "reviewers": review.reviewers if review else [],
            "reason_code": review.reason_code if review else None,
        }

    return app


@pytest.fixture(scope="session")
def app_factory() -> Callable[..., codara.App]:
    """``build_app(url, clock=None)``: the refunds app, for tests that build their own."""
    return build_app


# -- databases: migrate once, copy per test ----------------------------------------------------
def root_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py (PostgreSQL URL, require_postgres), as pytest loaded it."""
    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and getattr(plugin, "__file__", "") == str(ROOT_CONFTEST):
            return plugin
    raise RuntimeError(f"{ROOT_CONFTEST} is not loaded")


async def _seed(url: str) -> dict[str, str]:
    """Users (with the test password) and one API token each."""
    async with codara.App(url, migrate="check") as app:
        users = Users(app.store, app.clock)
        tokens = {}
        for name, roles in USERS.items():
            await users.add(name, roles, password=PASSWORD)
            tokens[name] = await users.create_token(name, "tests")
        return tokens


@dataclass
class Seeded:
    url: str
    tokens: dict[str, str]


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    url = f"sqlite:///{tmp_path_factory.mktemp('tpl') / 'template.db'}"
    upgrade(parse_url(url))
    return Seeded(url, asyncio.run(_seed(url)))


@pytest.fixture(scope="session")
def _pg_database(pytestconfig: pytest.Config) -> Iterator[Seeded]:
    """One migrated, seeded PostgreSQL database for the session (emptied between tests)."""
    root = root_conftest(pytestconfig)
    root.require_postgres()
    admin_url: str = root.PG_ADMIN_URL
    name = f"codara_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = root._with_db(admin_url, name)
        upgrade(parse_url(url))
        yield Seeded(url, asyncio.run(_seed(url)))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_KEEP = ("codara_alembic_version", "codara_users", "codara_tokens")


@pytest.fixture
def seeded_sqlite(_sqlite_template: Seeded, tmp_path: Path) -> Seeded:
    target = tmp_path / "codara.db"
    shutil.copyfile(_sqlite_template.url.removeprefix("sqlite:///"), target)
    return Seeded(f"sqlite:///{target}", dict(_sqlite_template.tokens))


@pytest.fixture(params=["sqlite", "postgresql"])
def seeded(request: pytest.FixtureRequest) -> Seeded:
    """A migrated database with the users of USERS: the test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        result: Seeded = request.getfixturevalue("seeded_sqlite")
        return result
    db: Seeded = request.getfixturevalue("_pg_database")
    with psycopg.connect(db.url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r[0] not in _KEEP
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY")
        conn.execute("DELETE FROM codara_tokens WHERE name <> 'tests'")
        conn.execute("UPDATE codara_tokens SET revoked = 0")
    return Seeded(db.url, dict(db.tokens))


# -- the application under test ----------------------------------------------------------------
@dataclass
class Env:
    app: codara.App
    api: FastAPI
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)
    password: str = PASSWORD

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.api),
            base_url="http://testserver",
            headers=headers,
            **kwargs,
        )

    async def start(self, amount: float, confidence: float = 0.5, **extra: Any) -> str:
        """Start a refund and run it until it waits for its review."""
        run_id = await self.app.start_run(
            "refunds", {"amount": amount, "confidence": confidence, **extra}
        )
        await self.app.work(until_idle=True)
        return run_id

    async def review_of(self, run_id: str) -> str:
        rows = await self.app.store.execute_raw(
            "SELECT id FROM codara_reviews WHERE run_id = ?", (run_id,)
        )
        return str(rows[0][0])


def make_env(db: Seeded, settings: Settings | None = None) -> Env:
    clock = FakeClock()
    app = build_app(db.url, clock, settings)
    return Env(app=app, api=create_app(app), clock=clock, tokens=dict(db.tokens))


@pytest.fixture(scope="session")
def env_factory() -> Callable[..., Env]:
    """``make_env(seeded, settings=None)``: an Env for tests that need their own settings."""
    return make_env


@pytest.fixture
async def env(seeded: Seeded) -> AsyncIterator[Env]:
    """The app on both databases, lifespan running, users alice/dan (support), carol
    (finance), olga (operator), root (admin), each with an API token."""
    e = make_env(seeded)
    async with e.api.router.lifespan_context(e.api):
        yield e


@pytest.fixture
async def sqlite_env(seeded_sqlite: Seeded) -> AsyncIterator[Env]:
    """The same on SQLite only (for tests about HTTP, not about the database)."""
    e = make_env(seeded_sqlite)
    async with e.api.router.lifespan_context(e.api):
        yield e
