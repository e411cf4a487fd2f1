"""Shared fixtures: the parametrized store URL (SQLite and PostgreSQL) and helpers.

Network: an autouse guard lets a test's sockets connect only to loopback (127.0.0.0/8, ::1,
``localhost``) or Unix sockets; anything else raises before a packet or a DNS query leaves.

PostgreSQL: set CODARA_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
Under CI (CI=true) a test that cannot reach it fails; elsewhere it is skipped with one loud
line saying how to enable it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from codara.testing import FakeLLMServer

PG_ADMIN_URL = os.environ.get(
    "CODARA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class NetworkBlockedError(RuntimeError):
    """A test tried to reach a non-loopback address."""


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0]  # "[::1]" and scoped "fe80::1%eth0"
    if host == "" or host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: refuse it rather than resolve it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _check(address: Any, how: str) -> None:
    if not isinstance(address, tuple):
        return  # AF_UNIX paths (str/bytes) never leave the machine
    if not _is_loopback(address[0]):
        raise NetworkBlockedError(
            f"network guard: {how} to {address[0]!r} port {address[1]!r} blocked; tests may "
            "only reach loopback (use codara.testing.FakeLLMServer)"
        )


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Block every socket connect to a non-loopback address for the duration of a test."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check(address, "socket.connect")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(address, "socket.connect_ex")
        return real_connect_ex(self, address)

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        _check(address, "socket.create_connection")
        return real_create_connection(address, *args, **kwargs)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            _check((host, port), "socket.getaddrinfo")
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


_pg_error: str | None = None
_pg_checked = False


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            _pg_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
    return _pg_error


def require_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    message = (
        f"PostgreSQL unreachable at {PG_ADMIN_URL} ({reason}). Start it (`make pg-start`) or "
        "set CODARA_TEST_POSTGRES_URL to enable the PostgreSQL tests"
    )
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    print(f"\n!!! SKIPPING: {message}", file=sys.stderr)
    pytest.skip(message)


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    require_postgres()
    name = f"codara_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(PG_ADMIN_URL, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/codara.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


# -- model providers: the loopback server of codara.testing, and fake keys ----------
@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A running :class:`FakeLLMServer`; script it with ``fake_llm.add(FakeReply(...))``."""
    with FakeLLMServer() as server:
        yield server


OPENAI_SECRET = "sk-test-openai-7f3a9c21d4e5b6a8"
ANTHROPIC_SECRET = "sk-ant-test-0c9e8d7b6a5f4e3d"


@pytest.fixture
def api_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake keys in the environment, and no ambient base-URL overrides."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return {"openai": OPENAI_SECRET, "anthropic": ANTHROPIC_SECRET}
