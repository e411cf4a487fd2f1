"""Fixtures for the model tests (the network guard is in tests/conftest.py: every test)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from codara.testing import FakeLLMServer


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
