"""Properties of an HTTP source's scope, over generated input: a path value always stays one
segment (sent percent-encoded, received as given), and no target outside the declared
endpoints is ever planned."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codara.errors import InputError, ScopeError
from codara.sources._http import HttpSource, HttpSourceConfig
from codara.testing import FakeAPIServer, FakeResponse

ENDPOINTS = ("/v1/customers/{id}", "/v1/customers/{id}/cards", "/v1/transactions")


def source(base_url: str = "http://127.0.0.1:9") -> HttpSource:
    config = HttpSourceConfig(base_url=base_url, endpoints=ENDPOINTS, retries=1)
    return HttpSource("crm", config)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAPIServer]:
    """One server for every example (a server per example would be most of the run time)."""
    with FakeAPIServer() as running:
        yield running


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=5))
def test_a_path_value_reaches_the_server_as_one_segment_holding_exactly_it(
    server: FakeAPIServer, values: list[str]
) -> None:
    async def go(server: FakeAPIServer) -> list[str]:
        crm = source(server.base_url)
        sent = []
        try:
            for value in values:
                try:
                    plan = crm.plan("/v1/customers/{id}/cards", id=value)
                except ScopeError:
                    assert value in (".", "..")
                    continue
                sent.append(value)
                server.add(FakeResponse(body=[]))
                [batch] = [b async for b in crm.batches(plan)]
                assert batch.rows == []
        finally:
            await crm.close()
        return sent

    seen = len(server.requests)
    sent = asyncio.run(go(server))
    paths = [r.path for r in server.requests[seen:]]
    assert len(paths) == len(sent)
    for value, path in zip(sent, paths, strict=True):
        segments = path.split("/")
        assert len(segments) == 5, path  # "", v1, customers, the value, cards
        assert unquote(segments[3]) == value


SEGMENTS = ["v1", "customers", "transactions", "cards", "7", "a%2Fb", "..", ".", "%2e%2e",
            "", "{id}", "admin", "V1", "7?x=1", "7#f", "a b", "a\\b"]  # fmt: skip
PREFIXES = ["/", "", "//", "http://127.0.0.1:9/", "https://127.0.0.1:9/", "http://127.0.0.2:9/",
            "http://127.0.0.1:10/", "GET /", "get /", "POST /"]  # fmt: skip


def in_scope(prefix: str, segments: list[str]) -> bool:
    """An independent oracle: does ``prefix + "/".join(segments)`` name a declared endpoint
    with every placeholder filled by one real segment?"""
    if prefix not in ("/", "http://127.0.0.1:9/", "GET /", "get /"):
        return False
    for template in ENDPOINTS:
        parts = template.split("/")[1:]
        if len(parts) != len(segments):
            continue
        if all(
            seg == part
            if not part.startswith("{")
            else seg != "" and unquote(seg) not in (".", "..") and not set(seg) & set("{}?# \\")
            for part, seg in zip(parts, segments, strict=True)
        ):
            return True
    return False


def _shaped(template: str) -> st.SearchStrategy[list[str]]:
    """Segments shaped like ``template``: its literals kept, each placeholder any segment."""
    value = st.one_of(
        st.sampled_from(SEGMENTS), st.from_regex(r"[A-Za-z0-9._~%-]{1,8}", fullmatch=True)
    )
    parts = [value if p.startswith("{") else st.just(p) for p in template.split("/")[1:]]
    return st.tuples(*parts).map(list)


TARGETS = st.one_of(
    st.lists(st.sampled_from(SEGMENTS), max_size=5),
    st.sampled_from(ENDPOINTS).flatmap(_shaped),
    st.sampled_from(ENDPOINTS).flatmap(_shaped),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PREFIXES), TARGETS)
def test_a_target_is_planned_exactly_when_it_names_a_declared_endpoint(
    prefix: str, segments: list[str]
) -> None:
    target = prefix + "/".join(segments)
    import sys

    print("ORACLE", in_scope(prefix, segments), file=sys.stderr)
    try:
        plan = source().plan(target)
    except ScopeError:
        assert not in_scope(prefix, segments), target
        return
    except InputError:  # a template without its value, or a query in the path
        assert "{id}" in segments or any(set(s) & set("?#") for s in segments), target
        return
    assert in_scope(prefix, segments), target
    assert plan.target in ENDPOINTS
    assert plan.touched == (f"GET {plan.target}",)
