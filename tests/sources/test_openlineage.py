"""OpenLineage export of reads: events written by the real openlineage client (file
transport, and HTTP to a loopback receiver of ours), read back and checked; off by default
(no events, openlineage not even imported); a receiver that is down never fails a run; a
bad ``[lineage]`` stops the App at construction.

Reads go through the tests' own connector (``read_fixture_source:JsonList``) inside real
App runs on the ``db_url`` store."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import codara
from codara.config import load_settings
from codara.engine import NO_RETRY
from codara.errors import ConfigError
from codara.sources import SourceConfig
from codara.sources._openlineage import (
    PRODUCER,
    READ_FACET_SCHEMA,
    LineageSettings,
    OpenLineageObserver,
    datasets_of,
    run_uuid,
)

KIND = "read_fixture_source:JsonList"
ITEMS: list[Any] = [
    {"id": 1, "text": "my card is lost"},
    "garbage",  # the connector rejects it
    {"id": 2, "text": ""},  # the model refuses it
    {"id": 3, "text": "refund please", "extra": 1},  # unknown field
    {"id": "x", "text": "not a number"},  # the model refuses it
    {"id": 4, "text": "where is my money"},
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
CANARY = "canary.person@example.com"  # a parameter value: must never reach an event


def _app(db_url: str, root: Path, lineage: dict[str, Any] | None, *, fail: bool = False,
         fail_once: bool = False) -> codara.App:  # fmt: skip
    (root / "inbox.json").write_text(json.dumps(ITEMS))
    table = {"kind": KIND, "root": str(root), "allowed": ["inbox.json"], "batch_rows": 2,
             "record_model": "read_fixture_source:Ticket"}  # fmt: skip
    overrides: dict[str, Any] = {
        "store": {"url": db_url, "durability": "os"},
        "sources": {"inbox": table},
    }
    if lineage is not None:
        overrides["lineage"] = lineage
    app = codara.App(settings=load_settings(overrides=overrides), retry=NO_RETRY)
    failures: list[int] = []

    @app.workflow(name="reader")
    async def reader(ctx: codara.Context, target: str) -> list[Any]:
        result = await ctx.read("inbox", target, customer=CANARY)

        def after() -> None:
            if fail and (fail_once is False or not failures):
                failures.append(1)
                raise RuntimeError("a step after the read fails")

        await ctx.step("after", after)
        return [r["id"] for r in result.rows]

    return app


async def _run(app: codara.App) -> tuple[str, str]:
    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        status = (await app.get_run(run_id)).status
    return run_id, status  # the App is closed: the observer has flushed


def _check_events(events: list[dict[str, Any]], run_id: str, end: str) -> None:
    assert [e["eventType"] for e in events] == ["RUNNING", "RUNNING", "RUNNING", end]
    assert {e["job"]["namespace"] for e in events} == {"codara"}
    assert {e["job"]["name"] for e in events} == {"reader"}
    assert {e["run"]["runId"] for e in events} == {run_uuid(run_id)}
    assert {e["producer"] for e in events} == {PRODUCER}
    inputs = [e["inputs"] for e in events[:3]]
    assert all(len(i) == 1 for i in inputs)
    datasets = [i[0] for i in inputs]
    assert {(d["namespace"], d["name"]) for d in datasets} == {
        ("codara-source://inbox", "inbox.json")
    }
    quality = [d["inputFacets"]["dataQualityMetrics"] for d in datasets]
    assert [q["rowCount"] for q in quality] == [1, 0, 1]  # accepted per batch
    read = [d["inputFacets"]["codara_read"] for d in datasets]
    assert [r["quarantined"] for r in read] == [1, 2, 1]
    assert sum(r["seen"] for r in read) == len(ITEMS)
    assert read[0]["byRule"] == {"not_object": 1}
    assert read[1]["byRule"] == {"schema.text": 1, "unknown_field": 1}
    assert {r["version"] for r in read} == {"v1"}
    assert {r["contract"] for r in read} == {"discard_row"}
    assert {r["stale"] for r in read} == {False}
    assert {tuple(r["parameters"]) for r in read} == {("customer",)}  # the name, not the value
    assert {r["_producer"] for r in read} == {PRODUCER}
    assert {r["_schemaURL"] for r in read} == {READ_FACET_SCHEMA}
    assert "DataQualityMetricsInputDatasetFacet" in quality[0]["_schemaURL"]
    assert CANARY not in json.dumps(events)
    schema = json.loads((DOCS / "openlineage" / "CodaraReadInputDatasetFacet.json").read_text())
    [_, declared] = schema["$defs"]["CodaraReadInputDatasetFacet"]["allOf"]
    emitted = set(read[0]) - {"_producer", "_schemaURL"}  # the client leaves out nulls
    assert set(declared["required"]) <= emitted <= set(declared["properties"])
    assert events[-1]["inputs"] == []


@pytest.mark.parametrize(("fail", "end"), [(False, "COMPLETE"), (True, "FAIL")])
async def test_file_transport_writes_a_running_event_per_read_batch_then_the_end(
    db_url: str, tmp_path: Path, fail: bool, end: str
) -> None:
    out = tmp_path / "lineage"
    out.mkdir()
    app = _app(db_url, tmp_path, {"enabled": True, "transport": "file", "path": str(out)},
               fail=fail)  # fmt: skip
    run_id, status = await _run(app)
    assert status == ("failed" if fail else "completed")
    [written] = list(out.iterdir())
    assert CANARY not in written.read_text()
    events = [json.loads(line) for line in written.read_text().splitlines()]
    _check_events(events, run_id, end)


def test_the_run_uuid_is_a_stable_uuid5_of_the_run_id() -> None:
    assert run_uuid("r-1") == run_uuid("r-1") != run_uuid("r-2")
    assert run_uuid("r-1")[14] == "5"  # the UUID version digit


class _Receiver(BaseHTTPRequestHandler):
    """A lineage receiver (what Marquez's POST /api/v1/lineage does, minus the storage)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server: Any = self.server
        server.posts.append((self.path, dict(self.headers), json.loads(body)))
        server.first.set()
        server.release.wait(30)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.posts, server.first, server.release = [], threading.Event(), threading.Event()
    server.release.set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


async def test_http_transport_posts_the_events_with_the_key_from_the_environment(
    db_url: str, tmp_path: Path, receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LINEAGE_KEY", "k-3f9a")
    url = f"http://127.0.0.1:{receiver.server_address[1]}"
    app = _app(db_url, tmp_path, {"enabled": True, "transport": "http", "url": url,
                                  "api_key_env": "TEST_LINEAGE_KEY"})  # fmt: skip
    run_id, status = await _run(app)
    assert status == "completed"
    assert {path for path, _, _ in receiver.posts} == {"/api/v1/lineage"}
    assert {h["Authorization"] for _, h, _ in receiver.posts} == {"Bearer k-3f9a"}
    _check_events([body for _, _, body in receiver.posts], run_id, "COMPLETE")


async def test_a_receiver_that_is_down_does_not_fail_the_run(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lineage = {"enabled": True, "transport": "http", "url": f"http://127.0.0.1:{port}",
               "retries": 0}  # fmt: skip
    app = _app(db_url, tmp_path, lineage)
    [observer] = app.sources.observers
    with caplog.at_level(logging.WARNING, logger="codara.lineage"):
        _, status = await _run(app)
    assert status == "completed"
    assert isinstance(observer, OpenLineageObserver)
    assert (observer.sent, observer.failed) == (0, 4)
    warnings = [r for r in caplog.records if "OpenLineage event not sent" in r.getMessage()]
    assert len(warnings) == 1  # one per WARN_EVERY failures, not one per event


def test_a_full_queue_drops_events_and_counts_them(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.release.clear()  # the receiver holds the first POST until released
    url = f"http://127.0.0.1:{receiver.server_address[1]}"
    settings = LineageSettings(enabled=True, transport="http", url=url, queue_size=1)
    observer = OpenLineageObserver(settings)
    with caplog.at_level(logging.WARNING, logger="codara.lineage"):
        observer.run_ended("r-1", "reader", "completed")  # taken by the sender, held
        assert receiver.first.wait(30)
        observer.run_ended("r-2", "reader", "completed")  # waits in the queue
        observer.run_ended("r-3", "reader", "completed")  # the queue is full: dropped
        receiver.release.set()
        observer.close()
    assert (observer.sent, observer.dropped, observer.failed) == (2, 1, 0)
    runs = [body["run"]["runId"] for _, _, body in receiver.posts]
    assert runs == [run_uuid("r-1"), run_uuid("r-2")]
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_lineage_is_off_by_default_and_openlineage_is_not_imported(
    tmp_path: Path,
) -> None:
    """A real App run in a fresh interpreter: no observer, no event, no openlineage."""
    script = f"""
import asyncio, json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import codara
from codara.config import load_settings
(root := __import__("pathlib").Path({str(tmp_path)!r})).joinpath("inbox.json").write_text(
    json.dumps([{{"id": 1, "text": "hello"}}]))
settings = load_settings(overrides={{
    "store": {{"url": "sqlite:///" + str(root / "codara.db"), "durability": "os"}},
    "sources": {{"inbox": {{"kind": "{KIND}", "root": str(root), "allowed": ["inbox.json"]}}}}}})
app = codara.App(settings=settings)

@app.workflow(name="reader")
async def reader(ctx, target: str) -> int:
    return len((await ctx.read("inbox", target)).rows)

async def main():
    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        print((await app.get_run(run_id)).status, len(app.sources.observers))

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] == "openlineage"))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["completed 0", "[]"]
    assert not [p for p in tmp_path.rglob("*") if "lineage" in p.name]


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"enabled": True, "transport": "http"}, "needs url"),
        ({"enabled": True, "transport": "file"}, "needs path"),
        ({"enabled": True, "transport": "kafka", "path": "."}, "transport"),
        ({"enabled": True, "path": ".", "namespaec": "x"}, "namespaec"),
        ({"enabled": True, "transport": "http", "url": "ftp://x"}, r"http\(s\)"),
        ({"enabled": True, "transport": "http", "url": "http://u:pw@h"}, "credentials"),
        ({"enabled": True, "path": "/no/such/dir/events.jsonl"}, "does not exist"),
        ({"enabled": True, "transport": "http", "url": "http://127.0.0.1:1",
          "api_key_env": "CODARA_TEST_NO_SUCH_VARIABLE"}, "CODARA_TEST_NO_SUCH_VARIABLE"),
    ],
)  # fmt: skip
def test_bad_lineage_config_stops_the_app_when_its_sources_load(
    tmp_path: Path, table: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        assert codara.App(settings=load_settings(overrides={"lineage": table})).sources
    assert "pw" not in str(caught.value)
    assert "[lineage]" in str(caught.value)


class _Sql(SourceConfig):
    url: SecretStr | None = None
    url_env: str | None = None


class _Http(SourceConfig):
    base_url: str


class _Files(SourceConfig):
    root: Path


def test_dataset_names_by_source_kind_never_hold_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = _Sql(kind="sql", url=SecretStr("postgresql+psycopg://app:s3cret@db.internal/crm?x=1"))
    touched = ["customers.email", "customers.id", "public.cards.number"]
    assert datasets_of("sql", "crm", pg, touched, "SELECT ...") == [
        ("postgresql://db.internal:5432/crm", "customers", ["email", "id"]),
        ("postgresql://db.internal:5432/crm", "public.cards", ["number"]),
    ]
    monkeypatch.setenv("TEST_MARIADB_URL", "mysql+pymysql://root:pw@127.0.0.1:3307/test")
    maria = _Sql(kind="sql", url_env="TEST_MARIADB_URL")
    [(namespace, _, _)] = datasets_of("sql", "m", maria, ["t.c"], "")
    assert namespace == "mysql://127.0.0.1:3307/test"
    lite = _Sql(kind="sql", url=SecretStr(f"sqlite:///{tmp_path}/crm.db"))
    assert datasets_of("sql", "l", lite, ["t.c"], "")[0][0] == f"sqlite://{tmp_path}/crm.db"
    api = _Http(kind="http", base_url="https://api.example.com/v1")
    assert datasets_of("http", "api", api, ["GET /orders/{id}"], "/orders/42") == [
        ("https://api.example.com:443", "/orders/{id}", [])
    ]
    files = _Files(kind="file", root=tmp_path)
    assert datasets_of("file", "inbox", files, ["a.csv", "b/c.csv"], "*.csv") == [
        (f"file://{os.path.realpath(tmp_path)}", "a.csv", []),
        (f"file://{os.path.realpath(tmp_path)}", "b/c.csv", []),
    ]


def test_close_gives_up_after_its_timeout_and_counts_what_was_not_sent(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.release.clear()  # the receiver holds every POST: nothing completes
    url = f"http://127.0.0.1:{receiver.server_address[1]}"
    observer = OpenLineageObserver(LineageSettings(enabled=True, transport="http", url=url))
    with caplog.at_level(logging.WARNING, logger="codara.lineage"):
        for n in range(3):
            observer.run_ended(f"r-{n}", "reader", "completed")
        assert receiver.first.wait(30)  # the first is on the wire, two wait in the queue
        observer.close(timeout=0.2)
    assert (observer.sent, observer.dropped) == (0, 2)
    assert any("not sent within close_timeout" in r.getMessage() for r in caplog.records)


async def test_a_retried_run_replays_its_reads_silently_and_ends_again(
    db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    app = _app(db_url, tmp_path, {"enabled": True, "path": str(out)}, fail=True, fail_once=True)
    async with app:
        run_id = await app.start_run("reader", "inbox.json")
        await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "failed"
        await app.retry(run_id, by="test")
        await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "completed"
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["RUNNING"] * 3 + ["FAIL", "COMPLETE"]
    assert {e["run"]["runId"] for e in events} == {run_uuid(run_id)}
