"""The bank's CRM as the demo creates it: customers, their cards and transactions, the outbox
of replies and the human queue, in any database SQLAlchemy reaches (SQLite by default,
PostgreSQL or MariaDB by URL).

The triage reads customers, cards and transactions only through the governed sources
``crm`` and ``payments`` of codara.toml (scoped, masked, checked for quality and age).
Like a real CRM, this one has flaws: some customer records were not updated for months
(the ``crm`` source's ``max_age`` flags them stale) and some break the rules of
``records.py`` (an e-mail without an @, an IBAN whose check digits are wrong, a tier
nobody defined, a transaction in no known currency): those are quarantined at the read.

Writes (a reply sent, a ticket queued for a person) carry an idempotency key, the run id,
so a step executed again after a crash does not send a second reply. They go through this
module's own connection, not through a source: sources only read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import string
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from stdnum import iban as _iban
from stdnum import luhn

from codara.errors import ConfigError, SourceError

from .data import CUSTOMERS

metadata = sa.MetaData()
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("iban", sa.String(40), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)  # fmt: skip
cards = sa.Table(
    "cards", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False, index=True),
    sa.Column("pan", sa.String(19), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
)  # fmt: skip
transactions = sa.Table(
    "transactions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("card_id", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("amount_cents", sa.Integer, nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("merchant", sa.String(200), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Index("transactions_by_customer", "customer_id", "at"),
)  # fmt: skip
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("idempotency_key", sa.String(100), primary_key=True),
    sa.Column("ticket_id", sa.String(40)),
    sa.Column("customer_id", sa.Integer),
    sa.Column("intent", sa.String(100)),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime, server_default=sa.func.current_timestamp()),
)  # fmt: skip
human_queue = sa.Table(
    "human_queue", metadata,
    sa.Column("idempotency_key", sa.String(100), primary_key=True),
    sa.Column("ticket_id", sa.String(40)),
    sa.Column("customer_id", sa.Integer),
    sa.Column("intent", sa.String(100)),
    sa.Column("confidence", sa.Float),
    sa.Column("reason", sa.String(500)),
    sa.Column("queued_at", sa.DateTime, server_default=sa.func.current_timestamp()),
)  # fmt: skip

_FIRST = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Eva",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jon",
    "Kasia",
    "Luca",
    "Maya",
    "Nils",
    "Olga",
    "Priya",
    "Quentin",
    "Rosa",
    "Sami",
    "Tara",
]
_LAST = [
    "Ng",
    "Okafor",
    "Silva",
    "Meyer",
    "Rossi",
    "Kim",
    "Dubois",
    "Novak",
    "Haddad",
    "Berg",
    "Lindqvist",
    "Moreau",
    "Kowalski",
    "Ferreira",
    "Schmidt",
    "Costa",
    "Jansen",
    "Varga",
]
_MERCHANTS = [
    "Tesco", "Lidl", "Shell", "Amazon", "Uber", "Spotify", "Ryanair", "IKEA", "Deliveroo",
    "Apple", "Boots", "Aldi", "Netflix", "Zara", "ATM withdrawal",
]  # fmt: skip
_BANKS = ["WEST", "NWBK", "BARC", "MIDL", "LOYD"]

STALE_DAYS = (60, 400)
"""How old a stale customer record is, in days (the ``crm`` source's max_age is 30)."""


@dataclass
class Seeded:
    """What :func:`create` put in the CRM, for the report and the tests."""

    customers: int = 0
    cards: int = 0
    transactions: int = 0
    stale: list[int] = field(default_factory=list)
    """Customer ids whose record is older than the source's max_age."""
    broken: dict[int, str] = field(default_factory=dict)
    """Customer id -> the rule its record breaks."""
    broken_transactions: dict[int, int] = field(default_factory=dict)
    """Transaction id -> its customer, for transactions in no known currency."""


def _gb_iban(rng: random.Random) -> str:
    bban = rng.choice(_BANKS) + "".join(rng.choices(string.digits, k=14))
    return f"GB{_iban.calc_check_digits('GB00' + bban)}{bban}"


def _de_iban(rng: random.Random) -> str:
    bban = "".join(rng.choices(string.digits, k=18))
    return f"DE{_iban.calc_check_digits('DE00' + bban)}{bban}"


def _pan(rng: random.Random) -> str:
    body = "4" + "".join(rng.choices(string.digits, k=14))
    return body + luhn.calc_check_digit(body)


def create(url: str, *, seed: int = 7, now: dt.datetime | None = None) -> Seeded:
    """(Re)create the CRM at ``url`` with ``CUSTOMERS`` synthetic customers, their cards and
    transactions; a few stale, a few broken (see the module)."""
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0)  # UTC, naive
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    seeded = Seeded()
    people, wallet, ledger = [], [], []
    card_id = tx_id = 0
    for i in range(1, CUSTOMERS + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        row: dict[str, Any] = {
            "id": i,
            "name": f"{first} {last}",
            "email": f"{first}.{last}{i}@example.com".lower(),
            "iban": (_gb_iban if rng.random() < 0.6 else _de_iban)(rng),
            "tier": rng.choices(["standard", "premium", "business"], [7, 2, 1])[0],
            "country": rng.choice(["GB", "DE", "FR", "ES", "IT", "NL"]),
            "updated_at": now - dt.timedelta(minutes=rng.randint(5, 7 * 24 * 60)),
        }
        roll = rng.random()
        if roll < 0.06:  # not synced for months
            row["updated_at"] = now - dt.timedelta(days=rng.randint(*STALE_DAYS))
            seeded.stale.append(i)
        elif roll < 0.09:  # a record that breaks the CRM's rules
            fault = rng.choice(["email", "iban", "tier"])
            if fault == "email":
                row["email"] = row["email"].replace("@", " at ")
            elif fault == "iban":
                good = row["iban"]
                row["iban"] = good[:2] + f"{(int(good[2:4]) + 1) % 100:02d}" + good[4:]
            else:
                row["tier"] = "gold?"
            seeded.broken[i] = f"schema.{fault}"
        people.append(row)
        for _ in range(1 if rng.random() < 0.8 else 2):
            card_id += 1
            wallet.append({"id": card_id, "customer_id": i, "pan": _pan(rng),
                           "status": rng.choices(["active", "blocked"], [9, 1])[0]})  # fmt: skip
            for _ in range(rng.randint(0, 8)):
                tx_id += 1
                tx: dict[str, Any] = {
                    "id": tx_id,
                    "card_id": card_id,
                    "customer_id": i,
                    "amount_cents": rng.randint(99, 25_000),
                    "currency": rng.choices(["EUR", "GBP", "USD"], [5, 4, 1])[0],
                    "merchant": rng.choice(_MERCHANTS),
                    "status": rng.choices(["settled", "pending", "declined"], [8, 1, 1])[0],
                    "at": now - dt.timedelta(minutes=rng.randint(10, 45 * 24 * 60)),
                }
                if rng.random() < 0.01:
                    tx["currency"] = "XXX"
                    seeded.broken_transactions[tx_id] = i
                ledger.append(tx)
    target = engine_url(url)
    try:
        engine = sa.create_engine(target)
    except sa.exc.ArgumentError as exc:  # a dialect or driver SQLAlchemy does not have
        raise ConfigError(
            f"the CRM database {_shown(target)} cannot be used: {exc}",
            hint="use sqlite:///PATH, postgresql://HOST/DB or mysql://USER@HOST/DB",
        ) from None
    try:
        if engine.dialect.name == "sqlite":  # readers (the sources) never wait for a writer
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            conn.execute(customers.insert(), people)
            conn.execute(cards.insert(), wallet)
            if ledger:
                conn.execute(transactions.insert(), ledger)
    except sa.exc.DBAPIError as exc:  # unreachable, no such database, refused credentials
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise SourceError(
            f"the CRM database {_shown(target)} cannot be created: {reason}",
            hint="check that the server runs and the database exists (--crm-url)",
        ) from None
    finally:
        engine.dispose()
    seeded.customers, seeded.cards, seeded.transactions = len(people), len(wallet), len(ledger)
    return seeded


def _shown(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def engine_url(url: str) -> sa.URL:
    """``url`` with the driver the sources use (psycopg, PyMySQL) when it names none."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:  # not echoed: it may hold a password
        raise ConfigError(
            "the CRM URL is not a database URL",
            hint="use sqlite:///PATH, postgresql://HOST/DB or mysql://USER@HOST/DB",
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if not driver and backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif not driver and backend in ("mariadb", "mysql"):
        parsed = parsed.set(drivername=f"{backend}+pymysql")
    return parsed


def _insert_new(engine: sa.Engine, table: sa.Table) -> Any:
    """An INSERT that does nothing for a key already there, in the database's own words."""
    backend = engine.dialect.name
    if backend == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if backend == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if backend in ("mysql", "mariadb"):
        return mysql.insert(table).prefix_with("IGNORE")
    raise ValueError(f"the demo CRM does not know how to write to {backend}")


class CRM:
    """The CRM's write side: the outbox and the human queue (idempotent by key)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    def _db(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                engine = sa.create_engine(engine_url(self.url), pool_pre_ping=True)
                if engine.dialect.name == "sqlite":

                    @sa.event.listens_for(engine, "connect")
                    def _pragmas(conn: Any, _: Any) -> None:
                        conn.execute("PRAGMA journal_mode=WAL")
                        conn.execute("PRAGMA busy_timeout=10000")

                self._engine = engine
            return self._engine

    def _write(self, table: sa.Table, row: dict[str, Any]) -> str:
        engine = self._db()
        with engine.begin() as conn:
            conn.execute(_insert_new(engine, table), row)
        return str(row["idempotency_key"])

    async def send_reply(
        self, key: str, ticket_id: str | None, customer_id: int, intent: str, body: str
    ) -> str:
        row = {"idempotency_key": key, "ticket_id": ticket_id, "customer_id": customer_id,
               "intent": intent, "body": body}  # fmt: skip
        return await asyncio.to_thread(self._write, outbox, row)

    async def queue_for_human(
        self,
        key: str,
        ticket_id: str | None,
        customer_id: int,
        intent: str,
        confidence: float,
        reason: str,
    ) -> str:
        row = {"idempotency_key": key, "ticket_id": ticket_id, "customer_id": customer_id,
               "intent": intent, "confidence": confidence, "reason": reason[:500]}  # fmt: skip
        return await asyncio.to_thread(self._write, human_queue, row)

    def _has(self, table: sa.Table, key: str) -> bool:
        with self._db().connect() as conn:
            found = conn.execute(
                sa.select(sa.func.count()).select_from(table)
                .where(table.c.idempotency_key == key)
            ).scalar_one()  # fmt: skip
        return bool(found)

    async def has_reply(self, key: str) -> bool:
        """Whether the outbox holds the reply of ``key`` (the effect's reconcile)."""
        return await asyncio.to_thread(self._has, outbox, key)

    async def has_handoff(self, key: str) -> bool:
        """Whether the human queue holds the hand-off of ``key``."""
        return await asyncio.to_thread(self._has, human_queue, key)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def counts(self) -> dict[str, int]:
        with self._db().connect() as conn:
            return {
                "outbox": conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one(),
                "human_queue": conn.execute(
                    sa.select(sa.func.count()).select_from(human_queue)
                ).scalar_one(),
            }
