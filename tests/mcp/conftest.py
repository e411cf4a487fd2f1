"""A real MCP server for the tests (``toolserver.py``, the official SDK's ``MCPServer``): over
stdio, started by Codara itself as a subprocess; over streamable HTTP, started here as a
process listening on a free loopback port. What reached it is read back from its call log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SERVER = Path(__file__).with_name("toolserver.py")
TOKEN = "s3cr3t-mcp-token-4711"


@dataclass
class ToolServer:
    """Where a test server writes what it was asked (one JSON line per tool call) and its
    refunds (by idempotency key)."""

    calls_file: Path
    ledger_file: Path
    url: str | None = None

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        lines = [json.loads(x) for x in self.calls_file.read_text().splitlines() if x]
        return [c for c in lines if tool is None or c["tool"] == tool]

    def ledger(self) -> dict[str, Any]:
        if not self.ledger_file.exists():
            return {}
        return dict(json.loads(self.ledger_file.read_text()))


@pytest.fixture
def stdio_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolServer:
    """The files a stdio test server started by Codara writes (it gets them through the
    ``env`` passthrough of its [mcp] table)."""
    server = ToolServer(tmp_path / "calls.jsonl", tmp_path / "ledger.json")
    monkeypatch.setenv("MCP_CALLS_FILE", str(server.calls_file))
    monkeypatch.setenv("MCP_LEDGER_FILE", str(server.ledger_file))
    return server


def stdio_table(name: str = "crm", *, tools: str, extra: str = "", env: str = "") -> str:
    """An [mcp.NAME] table starting the test server with this Python."""
    names = ", ".join(
        f'"{v}"' for v in ("MCP_CALLS_FILE", "MCP_LEDGER_FILE", *filter(None, env.split()))
    )
    return (
        f"[mcp.{name}]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(SERVER))}]\nenv = [{names}]\ntools = {tools}\n{extra}\n"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http_server(tmp: Path) -> tuple[subprocess.Popen[bytes], ToolServer]:
    port = _free_port()
    server = ToolServer(tmp / "http-calls.jsonl", tmp / "http-ledger.json",
                        f"http://127.0.0.1:{port}/mcp")  # fmt: skip
    env = {**os.environ, "MCP_CALLS_FILE": str(server.calls_file),
           "MCP_LEDGER_FILE": str(server.ledger_file), "MCP_EXPECT_TOKEN": TOKEN}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--http", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # bounded: the server answers once it has imported and bound its port
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"the HTTP test server did not start (exit {proc.poll()})"
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolServer]:
    """A streamable-HTTP test server for the module, expecting ``Bearer TOKEN``."""
    proc, server = start_http_server(tmp_path_factory.mktemp("http"))
    try:
        yield server
    finally:
        proc.kill()
        proc.wait()


def write_config(tmp_path: Path, text: str, name: str = "codara.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
