"""The bank's payments service as the demo runs it: a real HTTP service on loopback with its
own ledger, and the client the ``payments.refund`` effect calls it with.

:class:`PaymentsService` is a small HTTP/1.1 JSON service (the standard library's
``ThreadingHTTPServer``, in a thread) on ``127.0.0.1`` with an OS-chosen port. Its ledger
is its own SQLite file: the card charges it settled (copied from the CRM's transactions
when the demo starts it, as a card processor has its own record of them) and the refunds
it made. It is not the CRM: the triage reaches it only through the ``payments.refund``
effect, never through a source.

======  ========================  ==========================================================
POST    ``/refunds``              make a refund; ``Idempotency-Key`` header required. The
                                  same key again returns the refund made the first time
                                  (200, ``"replayed": true``), never a second one; a key
                                  already used for other arguments is refused (409).
                                  Refused with a reason (4xx, ``{"reason": ...}``): an
                                  unknown transaction (404), another card or currency than
                                  the charge's, a charge not settled, an amount above what
                                  is left to refund of it (422). Made: 201 and the refund.
GET     ``/refunds/KEY``          the refund made under ``KEY`` (200), or 404: the effect's
                                  ``reconcile`` asks this after a crash.
POST    ``/refunds/KEY/cancel``   cancel it (the effect's compensation); again is a no-op.
GET     ``/ledger``               the totals, for the report's independent check.
GET     ``/health``               200 when the service answers.
======  ========================  ==========================================================
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field

import codara
from codara.errors import ConfigError

from .crm import engine_url, transactions

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY, card_id INTEGER NOT NULL, customer_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refunds (
    idempotency_key TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    transaction_id INTEGER NOT NULL, card_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL, currency TEXT NOT NULL,
    status TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
"""


class RefundArgs(BaseModel):
    """What the ``payments.refund`` effect asks the payments service for: an amount back to
    the card a charge was made with."""

    ticket_id: str | None = None
    customer_id: int = Field(ge=1)
    transaction_id: int = Field(ge=1)
    card_id: int = Field(ge=1)
    amount_cents: int = Field(ge=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class Refused(Exception):
    """A request the ledger refuses: its HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ledger:
    """The service's own book: charges and refunds in one SQLite file, one writer at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def load_charges(
        self, charges: Iterable[Mapping[str, Any]], *, keep_refunds: bool = False
    ) -> int:
        """Replace the charges and, unless ``keep_refunds``, forget every refund (a fresh day
        for the demo)."""
        rows = [(c["id"], c["card_id"], c["customer_id"], c["amount_cents"], c["currency"],
                 c["status"]) for c in charges if c.get("amount_cents") is not None]  # fmt: skip
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if not keep_refunds:
                self._db.execute("DELETE FROM refunds")
            self._db.execute("DELETE FROM charges")
            self._db.executemany("INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        return len(rows)

    def refund(self, key: str, body: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Make the refund ``body`` asks for under ``key``: (made now, the refund). The same
        key again returns the first refund; a refusal raises :class:`Refused`."""
        try:
            tx_id, card, amount = (int(body[k]) for k in ("transaction_id", "card_id",
                                                         "amount_cents"))  # fmt: skip
            currency = str(body["currency"])
        except (KeyError, TypeError, ValueError):
            raise Refused(400, "transaction_id, card_id, amount_cents and currency are "
                          "required") from None  # fmt: skip
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                made = self._refund(key, tx_id, card, amount, currency)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return made

    def _refund(
        self, key: str, tx_id: int, card: int, amount: int, currency: str
    ) -> tuple[bool, dict[str, Any]]:
        before = self._get(key)
        if before is not None:
            asked = (tx_id, card, amount, currency)
            if asked != tuple(before[k] for k in ("transaction_id", "card_id", "amount_cents",
                                                  "currency")):  # fmt: skip
                raise Refused(409, f"idempotency key {key} was used for another refund")
            return False, before
        charge = self._db.execute(
            "SELECT card_id, amount_cents, currency, status FROM charges WHERE id = ?", (tx_id,)
        ).fetchone()
        if charge is None:
            raise Refused(404, f"no transaction {tx_id}")
        charge_card, charged, charge_currency, status = charge
        if card != charge_card:
            raise Refused(422, f"transaction {tx_id} was not made with card {card}")
        if currency != charge_currency:
            raise Refused(422, f"transaction {tx_id} was in {charge_currency}, not {currency}")
        if status != "settled":
            raise Refused(422, f"transaction {tx_id} is {status}, not settled")
        (refunded,) = self._db.execute(
            "SELECT COALESCE(SUM(amount_cents), 0) FROM refunds "
            "WHERE transaction_id = ? AND status = 'refunded'",
            (tx_id,),
        ).fetchone()
        if amount > charged - refunded:
            already = f" ({refunded} refunded already)" if refunded else ""
            raise Refused(422, f"transaction {tx_id} has {charged - refunded} of {charged} "
                          f"cents left to refund{already}, not {amount}")  # fmt: skip
        (n,) = self._db.execute("SELECT COUNT(*) FROM refunds").fetchone()
        self._db.execute(
            "INSERT INTO refunds (idempotency_key, id, transaction_id, card_id, amount_cents, "
            "currency, status) VALUES (?, ?, ?, ?, ?, ?, 'refunded')",
            (key, f"rf_{n + 1:06d}", tx_id, card, amount, currency),
        )
        made = self._get(key)
        assert made is not None
        return True, made

    def _get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, transaction_id, card_id, amount_cents, currency, status, created_at "
            "FROM refunds WHERE idempotency_key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        names = ("refund_id", "transaction_id", "card_id", "amount_cents", "currency",
                 "status", "created_at")  # fmt: skip
        return dict(zip(names, row, strict=True))

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._get(key)

    def cancel(self, key: str) -> dict[str, Any]:
        with self._lock:
            if self._get(key) is None:
                raise Refused(404, f"no refund under key {key}")
            self._db.execute(
                "UPDATE refunds SET status = 'cancelled' WHERE idempotency_key = ?", (key,)
            )
            found = self._get(key)
        assert found is not None
        return found

    def refunds(self) -> list[dict[str, Any]]:
        """Every refund in the book, oldest first, with its idempotency key."""
        with self._lock:
            keys = [k for (k,) in self._db.execute(
                "SELECT idempotency_key FROM refunds ORDER BY id")]  # fmt: skip
            return [{"key": k, **(self._get(k) or {})} for k in keys]

    def totals(self) -> dict[str, Any]:
        """Refunds by status: how many, and the sum per currency."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, currency, COUNT(*), SUM(amount_cents) FROM refunds "
                "GROUP BY status, currency"
            ).fetchall()
        totals: dict[str, Any] = {"refunded": 0, "cancelled": 0, "cents": {}}
        for status, currency, n, cents in rows:
            totals[status] = totals.get(status, 0) + n
            if status == "refunded":
                totals["cents"][currency] = cents
        return totals

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo's console is the report, not an access log

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _answer(self, method: str) -> None:
        ledger = self.server.ledger
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                return self._send(200, {"ok": True})
            if method == "GET" and parts == ["ledger"]:
                return self._send(200, ledger.totals())
            if method == "POST" and parts == ["refunds"]:
                key = self.headers.get("Idempotency-Key", "").strip()
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    raise Refused(400, "the body is not JSON") from None
                if not key or len(key) > 200:
                    raise Refused(400, "an Idempotency-Key header (1 to 200 characters) is "
                                  "required")  # fmt: skip
                if not isinstance(body, dict):
                    raise Refused(400, "the body must be a JSON object")
                made, refund = ledger.refund(key, body)
                return self._send(201 if made else 200, {**refund, "replayed": not made})
            if method == "GET" and len(parts) == 2 and parts[0] == "refunds":
                found = ledger.get(parts[1])
                if found is None:
                    raise Refused(404, f"no refund under key {parts[1]}")
                return self._send(200, found)
            if method == "POST" and len(parts) == 3 and parts[::2] == ["refunds", "cancel"]:
                return self._send(200, ledger.cancel(parts[1]))
            raise Refused(404, f"no route {method} {self.path}")
        except Refused as exc:
            return self._send(exc.status, {"reason": exc.reason})

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ledger: Ledger


class PaymentsService:
    """The payments service on ``host`` (loopback) and ``port`` (0: one the OS chooses), in
    a thread of this process; ``with PaymentsService(path) as service: service.url``."""

    def __init__(self, ledger_path: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ledger = Ledger(ledger_path)
        self._server = _Server((host, port), _Handler)
        self._server.ledger = self.ledger
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="payments-service", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self.ledger.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def charges_from(crm_url: str) -> list[dict[str, Any]]:
    """The CRM's card transactions, as the payments service's own record of its charges."""
    engine = sa.create_engine(engine_url(crm_url))
    try:
        with engine.connect() as conn:
            names = ("id", "card_id", "customer_id", "amount_cents", "currency", "status")
            columns = [transactions.c[n] for n in names]
            return [dict(r._mapping) for r in conn.execute(sa.select(*columns))]
    finally:
        engine.dispose()


def start_for(crm_url: str, ledger_path: Path, *, keep_refunds: bool = False) -> PaymentsService:
    """A payments service on loopback whose charges are the CRM's transactions at
    ``crm_url``; stop it with ``stop()`` (or use it as a context manager)."""
    service = PaymentsService(ledger_path)
    try:
        service.ledger.load_charges(charges_from(crm_url), keep_refunds=keep_refunds)
    except BaseException:
        service.stop()
        raise
    return service


# -- the client the effect uses --------------------------------------------------------------
def check_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http(s) URL; else ConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the payments service URL {url!r} is not an http(s) URL",
            hint="give --payments-url http://HOST:PORT, or leave it out: the demo then "
            "starts its own payments service on loopback",
        )
    return url.rstrip("/")


class Payments:
    """The payments service as the ``payments.refund`` effect sees it. ``url`` may be set
    after the app is built (the demo starts the service first)."""

    def __init__(self, url: str | None = None, *, timeout: float = 10.0) -> None:
        self.url = None if url is None else check_url(url)
        self.timeout = timeout

    def _base(self) -> str:
        if self.url is None:
            raise ConfigError(
                "the payments.refund effect has no payments service URL",
                hint="set [triage] payments_url in codara.toml, or run the demo, which "
                "starts its own",
            )
        return self.url

    def _client(self) -> httpx.AsyncClient:
        # one client per call: the effect may run on any event loop (a test's, a worker's)
        return httpx.AsyncClient(base_url=self._base(), timeout=self.timeout)

    async def check(self) -> None:
        """Raise ConfigError, saying why, when the service does not answer ``/health``."""
        base = self._base()
        try:
            async with self._client() as client:
                r = await client.get("/health")
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"the payments service at {base} does not answer: {type(exc).__name__}: {exc}",
                hint="start it, or leave out --payments-url: the demo then starts its own "
                "on loopback",
            ) from None
        if r.status_code != 200:
            raise ConfigError(
                f"{base}/health answered {r.status_code}: this is not the payments service",
                hint="give the payments service's base URL",
            )

    async def refund(self, args: dict[str, Any], call: codara.EffectCall) -> dict[str, Any]:
        """The effect's handler: POST the refund with its key. A refusal (4xx) is final
        (``EffectRefused``); anything else leaves the outcome unknown (reconcile, retry)."""
        if self.url is None:  # nothing was sent, nothing will be: say so, once
            raise codara.EffectRefused(
                "no payments service is configured: set [triage] payments_url in codara.toml"
            )
        body = {k: args[k] for k in ("transaction_id", "card_id", "amount_cents", "currency")}
        async with self._client() as client:
            r = await client.post("/refunds", json=body, headers={"Idempotency-Key": call.key})
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            raise codara.EffectRefused(_reason(r))
        r.raise_for_status()
        return _result(r.json())

    async def find(self, args: dict[str, Any], call: codara.EffectCall) -> dict[str, Any] | None:
        """The effect's reconcile: the refund made under the key, or None (not made)."""
        async with self._client() as client:
            r = await client.get(f"/refunds/{quote(call.key, safe='')}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return _result(r.json())

    async def cancel(self, args: dict[str, Any], result: Any, call: codara.EffectCall) -> None:
        """The effect's compensation: cancel the refund (again is a no-op)."""
        async with self._client() as client:
            r = await client.post(f"/refunds/{quote(call.key, safe='')}/cancel")
        r.raise_for_status()

    async def cancelled(self, args: dict[str, Any], result: Any, call: codara.EffectCall) -> bool:
        async with self._client() as client:
            r = await client.get(f"/refunds/{quote(call.key, safe='')}")
        return r.status_code == 200 and r.json().get("status") == "cancelled"

    def totals(self) -> dict[str, Any]:
        """The ledger's totals (``GET /ledger``), for the report."""
        r = httpx.get(f"{self._base()}/ledger", timeout=self.timeout)
        r.raise_for_status()
        return dict(r.json())


def _reason(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json()['reason']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"


def _result(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("refund_id", "transaction_id", "amount_cents", "currency")}


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.support_triage.payments``: serve the payments service for the
    CRM's transactions until interrupted (for ``codara worker`` processes, whose
    ``[triage] payments_url`` names it)."""
    import argparse
    import time

    from .app import CONFIG, crm_url, load

    p = argparse.ArgumentParser(
        prog="python -m examples.support_triage.payments",
        description="Serve the demo's payments service on loopback.",
    )
    p.add_argument("--config", type=Path, default=CONFIG, help="codara.toml to take the CRM from")
    p.add_argument("--crm-url", help="the CRM database (default: [sources.crm] of --config)")
    p.add_argument("--ledger", type=Path, default=Path("demo-out/payments.db"))
    p.add_argument("--port", type=int, default=0, help="default: one the OS chooses")
    args = p.parse_args(argv)
    url = args.crm_url or crm_url(load(args.config))
    service = PaymentsService(args.ledger, port=args.port)
    try:
        service.ledger.load_charges(charges_from(url), keep_refunds=True)
        print(f"payments service at {service.url} (ledger {args.ledger}); Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        service.stop()


if __name__ == "__main__":
    raise SystemExit(main())
