"""Fixtures for the model tests, including a guard that keeps them off the network.

The guard is autouse: during every test in this directory, a socket may connect only to a
loopback address (127.0.0.0/8, ::1, ``localhost``) or a Unix socket. Anything else raises
``RuntimeError`` before a single packet leaves, and a host name other than ``localhost`` is
refused before it is resolved, so no DNS query leaves either.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from codara.testing import FakeLLMServer

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


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
