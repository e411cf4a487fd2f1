"""An HTTP source reads JSON pages from a real loopback server of ours that misbehaves on
request: it retries what a retry can fix (5xx, 429, timeouts, refused or cut connections),
fails at once and clearly on what it cannot (4xx, HTML, broken JSON, a redirect to another
origin), and never sends or shows its credential anywhere else. No assertion is timed: the
server's request log says how many attempts were made, the log what waits were asked."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest

from codara.errors import InputError, ScopeError, SourceError
from codara.sources import JSON, Batch, Plan, Source
from codara.sources._http import HttpSource, HttpSourceConfig, HttpSourceError
from codara.testing import FakeAPIServer, FakeResponse

API_TOKEN = "Bearer tok-7f3a9c21d4e5b6a8-canary"
"""The credential the tests' sources send; it must never show in an error or a log."""


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    """The API the sources read, on 127.0.0.1."""
    with FakeAPIServer() as server:
        yield server


@pytest.fixture
def elsewhere() -> Iterator[FakeAPIServer]:
    """Another origin on loopback: 127.0.0.2 (Linux routes all of 127/8 to loopback)."""
    try:
        server = FakeAPIServer(host="127.0.0.2").start()
    except OSError as exc:  # pragma: no cover - macOS has only 127.0.0.1 by default
        pytest.skip(f"cannot listen on 127.0.0.2 ({exc}); the other-port tests still run")
    yield server
    server.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


MakeSource = Callable[..., HttpSource]


@pytest.fixture
def api_token() -> str:
    """The credential the tests' sources send (from their environment, ``CRM_TOKEN``)."""
    return API_TOKEN


@pytest.fixture
async def make_source(api: FakeAPIServer) -> AsyncIterator[MakeSource]:
    """``make_source(**config)``: an HTTP source on ``api`` with the credential in its
    environment and test-sized backoffs; every source made is closed afterwards."""
    made: list[HttpSource] = []

    def make(**overrides: Any) -> HttpSource:
        settings: dict[str, Any] = {
            "base_url": api.base_url,
            "endpoints": ["/v1/customers/{id}", "/v1/transactions"],
            "auth_header": "Authorization",
            "auth_env": "CRM_TOKEN",
            "backoff": 0.001,
            "backoff_max": 0.01,
            "retries": 3,
        }
        settings.update(overrides)
        source = HttpSource(
            "crm", HttpSourceConfig.model_validate(settings), environ={"CRM_TOKEN": API_TOKEN}
        )
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


async def read(source: Source, plan: Plan, cursor: JSON = None, *, limit: int = 0) -> list[Batch]:
    """The batches of a read from ``cursor``; with ``limit``, stop after that many (as a crash
    after journaling them would)."""
    out: list[Batch] = []
    batches = cast(AsyncGenerator[Batch, None], source.batches(plan, cursor))
    try:
        async for batch in batches:
            out.append(batch)
            if len(out) == limit:
                break
    finally:
        await batches.aclose()
    return out


def ids(batches: list[Batch]) -> list[Any]:
    return [row["id"] for batch in batches for row in batch.rows]


# -- records -------------------------------------------------------------------------------


async def test_records_come_from_the_dotted_path_and_non_objects_are_rejected(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body={"result": {"data": [{"id": 1}, "oops", {"id": 2}, [3], None]}}))
    source = make_source(records="result.data")
    [batch] = await read(source, source.plan("/v1/transactions"))
    assert batch.rows == [{"id": 1}, {"id": 2}]
    assert [(r.raw, r.rule, r.where) for r in batch.rejected] == [
        ("oops", "not_object", "page 1, item 2"),
        ([3], "not_object", "page 1, item 4"),
        (None, "not_object", "page 1, item 5"),
    ]
    assert batch.rejected[0].reason == "item 2 of page 1 is a string, not a JSON object"
    assert batch.seen == 5
    assert batch.cursor is None


async def test_a_body_that_is_one_object_is_one_record(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body={"id": 7, "name": "Ada"}, headers={"etag": '"v7"'}))
    source = make_source()
    [batch] = await read(source, source.plan("/v1/customers/{id}", id=7))
    assert (batch.rows, batch.version, batch.cursor) == ([{"id": 7, "name": "Ada"}], '"v7"', None)


async def test_a_reply_without_the_record_list_is_a_source_error(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body={"items": []}), FakeResponse(body={"data": None}))
    source = make_source(records="data")
    with pytest.raises(HttpSourceError, match="not a list at 'data'") as caught:
        await read(source, source.plan("/v1/transactions"))
    assert caught.value.non_retryable
    [empty] = await read(source, source.plan("/v1/transactions"))  # null: no records
    assert (empty.rows, empty.cursor) == ([], None)


async def test_a_page_larger_than_batch_rows_is_split_and_resumes_mid_page(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    records = [{"id": i} for i in range(1, 6)]
    api.route("/v1/transactions", lambda request: FakeResponse(body=records))
    first = make_source(batch_rows=2)
    plan = first.plan("/v1/transactions")
    batches = await read(first, plan)
    assert [ids([b]) for b in batches] == [[1, 2], [3, 4], [5]]
    assert [b.cursor for b in batches] == [{"page": 1, "item": 2}, {"page": 1, "item": 4}, None]
    fresh = make_source(batch_rows=2)
    assert ids(await read(fresh, plan, batches[0].cursor)) == [3, 4, 5]


async def test_freshness_comes_from_the_header_or_the_newest_record(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    stamp = dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)
    header = {"last-modified": email.utils.format_datetime(stamp, usegmt=True)}
    api.add(FakeResponse(body=[{"id": 1}], headers=header))
    by_header = make_source(timestamp_header="Last-Modified")
    [batch] = await read(by_header, by_header.plan("/v1/transactions"))
    assert batch.newest == stamp.timestamp()

    rows = [
        {"id": 1, "meta": {"at": "2026-11-30T10:00:00Z"}},
        {"id": 2, "meta": {"at": "2026-12-01T09:00:00+01:00"}},
        {"id": 3, "meta": {"at": "not a date"}},
    ]
    api.add(FakeResponse(body=rows))
    by_field = make_source(timestamp_field="meta.at")
    [batch] = await read(by_field, by_field.plan("/v1/transactions"))
    assert batch.newest == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC).timestamp()


# -- retries ---------------------------------------------------------------------------------


async def test_a_500_then_ok_is_retried(api: FakeAPIServer, make_source: MakeSource) -> None:
    api.add(FakeResponse.error(500), FakeResponse.error(503), FakeResponse(body=[{"id": 1}]))
    source = make_source()
    assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    assert len(api.requests) == 3


async def test_5xx_every_time_gives_up_after_the_attempts_retryable_later(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(*[FakeResponse.error(502)] * 4)
    source = make_source(retries=3)
    with pytest.raises(HttpSourceError, match="HTTP 502, 3 attempt") as caught:
        await read(source, source.plan("/v1/transactions"))
    assert (caught.value.status, caught.value.non_retryable) == (502, False)
    assert len(api.requests) == 3


async def test_the_backoff_doubles_per_attempt_jittered_and_capped(
    api: FakeAPIServer, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    api.add(*[FakeResponse.error(500)] * 4, FakeResponse(body=[{"id": 1}]))
    source = make_source(retries=5, backoff=0.01, backoff_max=0.03)
    with caplog.at_level(logging.WARNING, "codara.sources.http"):
        assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    waits = [float(w) for w in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    assert len(waits) == len(api.requests) - 1 == 4
    for wait, (low, high) in zip(waits, [(0.005, 0.01), (0.01, 0.02), (0.015, 0.03),
                                         (0.015, 0.03)], strict=True):  # fmt: skip
        assert low <= wait <= high  # half to all of 0.01, 0.02, then the cap 0.03


async def test_a_429_waits_what_retry_after_asks_not_the_backoff(
    api: FakeAPIServer, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    api.add(FakeResponse.error(429, retry_after="0"), FakeResponse(body=[{"id": 1}]))
    source = make_source(backoff=30, backoff_max=60)  # a backoff would wait 15 s or more
    with caplog.at_level(logging.WARNING, "codara.sources.http"):
        assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    assert len(api.requests) == 2
    assert "HTTP 429 (attempt 1 of 3); retrying in 0.000 s" in caplog.text


async def test_a_retry_after_date_beyond_the_cap_is_cut_to_the_cap_and_said(
    api: FakeAPIServer, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    in_an_hour = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    date = email.utils.format_datetime(in_an_hour, usegmt=True)
    api.add(FakeResponse.error(429, retry_after=date), FakeResponse(body=[{"id": 1}]))
    source = make_source(retry_after_max=0.01)
    with caplog.at_level(logging.WARNING, "codara.sources.http"):
        assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    assert len(api.requests) == 2
    assert "the server asked to wait 3" in caplog.text  # 3599 or 3600 s
    assert "waiting 0.01 s, the source's retry_after_max" in caplog.text


async def test_a_reply_slower_than_the_timeout_is_retried(
    api: FakeAPIServer, make_source: MakeSource, caplog: pytest.LogCaptureFixture
) -> None:
    api.add(FakeResponse(body=[], delay=60), FakeResponse(body=[{"id": 1}]))
    source = make_source(timeout=0.5)
    with caplog.at_level(logging.WARNING, "codara.sources.http"):
        assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    assert len(api.requests) == 2
    assert "no reply within 0.5 s (attempt 1 of 3)" in caplog.text


async def test_a_server_that_never_answers_in_time_fails_after_the_attempts(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(*[FakeResponse(body=[], delay=60)] * 2)
    source = make_source(timeout=0.3, retries=2)
    with pytest.raises(SourceError, match=r"no reply within 0\.3 s, 2 attempt"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 2


async def test_a_refused_connection_is_retried_then_fails(
    make_source: MakeSource, closed_port: int
) -> None:
    source = make_source(base_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(HttpSourceError, match="could not connect, 3 attempt") as caught:
        await read(source, source.plan("/v1/transactions"))
    assert not caught.value.non_retryable


async def test_a_body_cut_in_transit_is_retried(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    body = [{"id": i, "text": "x" * 50} for i in range(20)]
    api.add(FakeResponse(body=body, cut_after=100), FakeResponse(body=body))
    source = make_source()
    assert ids(await read(source, source.plan("/v1/transactions"))) == list(range(20))
    assert len(api.requests) == 2


# -- replies that are not what was asked ---------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_other_4xx_fail_at_once_with_the_status_and_an_excerpt(
    api: FakeAPIServer, make_source: MakeSource, status: int
) -> None:
    api.add(FakeResponse.error(status, {"error": "no such customer", "code": "E42"}))
    source = make_source()
    with pytest.raises(HttpSourceError, match=f"HTTP {status}: .*no such customer") as caught:
        await read(source, source.plan("/v1/customers/{id}", id=9))
    assert (caught.value.status, caught.value.non_retryable) == (status, True)
    assert len(api.requests) == 1
    assert "GET /v1/customers/{id} page 1" in str(caught.value)


async def test_truncated_json_is_a_source_error_not_a_record(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body=b'{"data": [{"id": 1}, {"id": 2'))
    source = make_source(records="data")
    with pytest.raises(HttpSourceError, match=r"not valid JSON \(.*\); it may be truncated"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 1


@pytest.mark.parametrize("body", [b"[NaN]", b"\xff\xfe[]", b"", b"[1] [2]"])
async def test_bodies_that_are_not_json_are_source_errors(
    api: FakeAPIServer, make_source: MakeSource, body: bytes
) -> None:
    api.add(FakeResponse(body=body))
    source = make_source()
    with pytest.raises(HttpSourceError, match="not valid JSON"):
        await read(source, source.plan("/v1/transactions"))


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "text/plain", None])
async def test_a_reply_that_is_not_json_by_content_type_is_refused(
    api: FakeAPIServer, make_source: MakeSource, content_type: str | None
) -> None:
    api.add(FakeResponse(body="<html>login</html>", content_type=content_type))
    source = make_source()
    with pytest.raises(HttpSourceError, match="not JSON") as caught:
        await read(source, source.plan("/v1/transactions"))
    assert caught.value.non_retryable
    assert len(api.requests) == 1


async def test_json_suffix_types_and_a_declared_charset_are_read(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body=[{"id": 1}], content_type="application/vnd.crm+json"))
    api.add(
        FakeResponse(
            body='[{"id": "café"}]'.encode("latin-1"),
            content_type="application/json; charset=ISO-8859-1",
        )
    )
    source = make_source()
    assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
    assert ids(await read(source, source.plan("/v1/transactions"))) == ["café"]


async def test_a_body_that_does_not_match_its_content_encoding_is_a_source_error(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body=b"[1, 2] not gzip", headers={"content-encoding": "gzip"}))
    source = make_source()
    with pytest.raises(HttpSourceError, match="does not decode as its Content-Encoding"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 1


async def test_a_reply_over_max_page_bytes_is_refused(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body=[{"text": "x" * 4000}]))
    source = make_source(max_page_bytes=2048)
    with pytest.raises(HttpSourceError, match="larger than max_page_bytes"):
        await read(source, source.plan("/v1/transactions"))


# -- redirects and the credential ------------------------------------------------------------


async def test_the_credential_arrives_from_the_environment_variable(
    api: FakeAPIServer, make_source: MakeSource, api_token: str
) -> None:
    api.add(FakeResponse(body=[]))
    source = make_source()
    await read(source, source.plan("/v1/transactions"))
    [request] = api.requests
    assert request.headers["authorization"] == api_token
    assert request.headers["accept"] == "application/json"


async def test_ambient_proxy_variables_do_not_reroute_the_credential(
    api: FakeAPIServer, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings come from codara.toml and named variables only: an HTTP_PROXY left in the
    environment must not receive the API's traffic and its credential."""
    with FakeAPIServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        api.add(FakeResponse(body=[{"id": 1}]))
        source = make_source()
        assert ids(await read(source, source.plan("/v1/transactions"))) == [1]
        assert proxy.requests == []


async def test_a_redirect_on_the_same_origin_is_followed_with_the_credential(
    api: FakeAPIServer, make_source: MakeSource, api_token: str
) -> None:
    api.add(FakeResponse.redirect("/v2/transactions?moved=1", 301), FakeResponse(body=[{"id": 1}]))
    source = make_source()
    assert ids(await read(source, source.plan("/v1/transactions", since="2026"))) == [1]
    first, second = api.requests
    assert (first.target, second.target) == (
        "/v1/transactions?since=2026",
        "/v2/transactions?moved=1",
    )
    assert second.headers["authorization"] == api_token


@pytest.mark.parametrize("where", ["other host", "other port"])
async def test_a_redirect_to_another_origin_is_refused_and_gets_nothing(
    api: FakeAPIServer, elsewhere: FakeAPIServer, make_source: MakeSource, where: str
) -> None:
    target = elsewhere if where == "other host" else FakeAPIServer().start()
    try:
        target.add(FakeResponse(body=[{"id": "stolen"}]))
        api.add(FakeResponse.redirect(f"{target.base_url}/v1/transactions", 307))
        source = make_source()
        with pytest.raises(HttpSourceError, match="another origin") as caught:
            await read(source, source.plan("/v1/transactions"))
        assert caught.value.non_retryable
        assert target.base_url in str(caught.value)
        assert target.requests == []  # the credential never went there
        assert len(api.requests) == 1
    finally:
        if target is not elsewhere:
            target.stop()


async def test_a_redirect_loop_ends(api: FakeAPIServer, make_source: MakeSource) -> None:
    api.route("/v1/transactions", lambda request: FakeResponse.redirect("/v1/transactions"))
    source = make_source()
    with pytest.raises(HttpSourceError, match="more than 5 redirects"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 6


async def test_the_credential_never_shows_in_errors_or_logs(
    api: FakeAPIServer,
    elsewhere: FakeAPIServer,
    make_source: MakeSource,
    api_token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_part = api_token.split()[1]
    echo = {"error": "bad token", "you_sent": api_token, "token": secret_part}
    api.add(
        FakeResponse.error(500, echo),
        FakeResponse.error(401, echo),
        FakeResponse.error(429, echo, retry_after="0"),
        FakeResponse(body=echo, content_type="text/html"),
        FakeResponse.redirect(f"{elsewhere.base_url}/v1/transactions"),
        FakeResponse(body=b'{"token": "' + secret_part.encode()),
        FakeResponse(delay=60),
    )
    source = make_source(timeout=0.3, retries=2)
    messages = []
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            with pytest.raises(SourceError) as caught:
                await read(source, source.plan("/v1/transactions"))
            messages.append(str(caught.value) + repr(caught.value))
    assert len(messages) == 5
    assert "[redacted]" in messages[0]  # the 401's excerpt, with the echo blanked out
    for text in [*messages, caplog.text]:
        assert secret_part not in text
    assert elsewhere.requests == []


# -- pagination ------------------------------------------------------------------------------

RECORDS = [{"id": i} for i in range(1, 8)]


def link_pages(base: str) -> Callable[[Any], FakeResponse]:
    def answer(request: Any) -> FakeResponse:
        page = int(request.param("page") or 1)
        headers = {}
        if page * 3 < len(RECORDS):
            nxt = f"/v1/transactions?page={page + 1}&kind={request.param('kind')}"
            if page == 1:
                nxt = base + nxt  # an absolute link first, then relative ones
            headers["link"] = f'<{nxt}>; rel="next", </v1/transactions?page=1>; rel="first"'
        return FakeResponse(body={"data": RECORDS[(page - 1) * 3 : page * 3]}, headers=headers)

    return answer


def cursor_pages(request: Any) -> FakeResponse:
    cursor = request.param("after")
    start = 0 if cursor is None else int(cursor.removeprefix("c"))
    more = start + 3 < len(RECORDS)
    meta = {"next": f"c{start + 3}" if more else None}
    return FakeResponse(body={"data": RECORDS[start : start + 3], "meta": meta})


def offset_pages(request: Any) -> FakeResponse:
    limit, offset = int(request.param("limit")), int(request.param("offset"))
    return FakeResponse(body={"data": RECORDS[offset : offset + limit]})


@pytest.mark.parametrize(
    ("config", "resumed_with"),
    [
        ({"pagination": "link"}, {"page": ["2"], "kind": ["card"]}),
        (
            {"pagination": "cursor", "cursor_field": "meta.next", "cursor_param": "after"},
            {"after": ["c3"], "kind": ["card"]},
        ),
        (
            {"pagination": "offset", "page_size": 3},
            {"limit": ["3"], "offset": ["3"], "kind": ["card"]},
        ),
    ],
    ids=["link", "cursor", "offset"],
)
async def test_each_pagination_reads_every_page_and_resumes_in_a_fresh_source(
    api: FakeAPIServer,
    make_source: MakeSource,
    config: dict[str, Any],
    resumed_with: dict[str, list[str]],
) -> None:
    handler = {"link": link_pages(api.base_url), "cursor": cursor_pages, "offset": offset_pages}
    api.route("/v1/transactions", handler[config["pagination"]])
    source = make_source(records="data", **config)
    plan = source.plan("/v1/transactions", kind="card")

    whole = await read(source, plan)
    assert ids(whole) == [r["id"] for r in RECORDS]
    assert whole[-1].cursor is None
    assert all(b.cursor is not None for b in whole[:-1])
    pages = len(api.requests)
    assert pages == 3

    [first] = await read(source, plan, limit=1)  # a crash after journaling one batch
    fresh = make_source(records="data", **config)
    rest = await read(fresh, plan, first.cursor)
    assert ids([first, *rest]) == [r["id"] for r in RECORDS]
    resumed = api.requests[pages + 1]
    assert resumed.query == resumed_with
    assert len(api.requests) == pages + 3  # page 1 once more, then pages 2 and 3 only

    split = make_source(records="data", batch_rows=2, **config)  # pages of 3: split 2 + 1
    three = await read(split, plan, limit=3)  # [1, 2], [3], then [4, 5] of page 2
    assert ids(three) == [1, 2, 3, 4, 5]
    page_two = three[-2].cursor
    assert isinstance(page_two, dict)
    assert three[-1].cursor == {**page_two, "item": 2}  # page 2 again, 2 items read
    before = len(api.requests)
    rest = await read(make_source(records="data", batch_rows=2, **config), plan, three[-1].cursor)
    assert ids(rest) == [6, 7]
    assert api.requests[before].query == resumed_with  # page 2 fetched again, then page 3
    assert len(api.requests) == before + 2


async def test_offset_pagination_reads_an_empty_last_page_and_ends_with_no_cursor(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.route("/v1/transactions", offset_pages)
    source = make_source(records="data", pagination="offset", page_size=7)
    batches = await read(source, source.plan("/v1/transactions"))
    assert ids(batches) == [r["id"] for r in RECORDS]
    assert [b.cursor for b in batches] == [{"page": 2, "item": 0, "offset": 7}, None]
    assert batches[-1].rows == []


async def test_a_next_link_to_another_origin_is_refused(
    api: FakeAPIServer, elsewhere: FakeAPIServer, make_source: MakeSource
) -> None:
    link = f'<{elsewhere.base_url}/v1/transactions?page=2>; rel="next"'
    api.add(FakeResponse(body=[{"id": 1}], headers={"link": link}))
    source = make_source(pagination="link")
    with pytest.raises(HttpSourceError, match="next-page link leads off the endpoint"):
        await read(source, source.plan("/v1/transactions"))
    assert elsewhere.requests == []


async def test_a_next_link_outside_the_endpoints_is_refused(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body=[{"id": 1}], headers={"link": '</v1/admin?page=2>; rel="next"'}))
    source = make_source(pagination="link")
    with pytest.raises(HttpSourceError, match=r"not /v1/transactions\); refused"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 1


async def test_a_resume_cursor_leading_elsewhere_or_malformed_is_refused(
    api: FakeAPIServer, elsewhere: FakeAPIServer, make_source: MakeSource
) -> None:
    source = make_source(pagination="link")
    plan = source.plan("/v1/transactions")
    away: JSON = {"page": 2, "item": 0, "url": f"{elsewhere.base_url}/v1/transactions?page=2"}
    with pytest.raises(ScopeError) as caught:
        await read(source, plan, away)
    assert caught.value.rule == "endpoint"
    malformed: list[JSON] = ["page-2", {"page": 0, "item": 0}, {"page": 2, "item": 0}]
    for bad in malformed:
        with pytest.raises(InputError, match="not one it wrote"):
            await read(source, plan, bad)
    assert api.requests == []
    assert elsewhere.requests == []


async def test_a_cursor_that_does_not_move_is_an_error_not_a_loop(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.route(
        "/v1/transactions",
        lambda request: FakeResponse(body={"data": [{"id": 1}], "next": "same"}),
    )
    source = make_source(records="data", pagination="cursor", cursor_field="next")
    with pytest.raises(HttpSourceError, match="this page's cursor"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 2


async def test_a_next_link_to_another_endpoint_of_the_source_is_refused(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    link = '</v1/customers/5>; rel="next"'  # declared, but not the endpoint being read
    api.add(FakeResponse(body=[{"id": 1}], headers={"link": link}))
    source = make_source(pagination="link")
    with pytest.raises(HttpSourceError, match="leads off the endpoint"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 1


async def test_a_redirect_from_http_to_https_is_another_origin(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse.redirect(api.base_url.replace("http:", "https:") + "/v1/transactions"))
    source = make_source()
    with pytest.raises(HttpSourceError, match="another origin"):
        await read(source, source.plan("/v1/transactions"))
    assert len(api.requests) == 1


async def test_a_base_url_prefix_is_kept_and_links_must_stay_under_it(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    def pages(request: Any) -> FakeResponse:
        if request.param("page") == "2":
            link = '</v1/transactions?page=3>; rel="next"'  # drops the /api prefix
            return FakeResponse(body=[{"id": 2}], headers={"link": link})
        link = '</api/v1/transactions?page=2>; rel="next"'
        return FakeResponse(body=[{"id": 1}], headers={"link": link})

    api.route("/api/v1/transactions", pages)
    source = make_source(base_url=f"{api.base_url}/api/", pagination="link")
    plan = source.plan("/v1/transactions")
    with pytest.raises(HttpSourceError, match="leads off the endpoint"):
        await read(source, plan)
    assert [r.target for r in api.requests] == [
        "/api/v1/transactions",
        "/api/v1/transactions?page=2",
    ]
    with pytest.raises(ScopeError):
        source.plan(f"{api.base_url}/v1/transactions")  # outside the prefix
    assert source.plan(f"{api.base_url}/api/v1/transactions").target == "/v1/transactions"
