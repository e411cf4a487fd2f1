"""An HTTP source's configuration stops at load, and its endpoints are its scope: a request
outside them is refused by plan() before anything is sent."""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from codara.errors import ConfigError, InputError, ScopeError
from codara.sources import Plan
from codara.sources._http import HttpSource, HttpSourceConfig, retry_after
from codara.testing import FakeAPIServer, FakeResponse

MakeSource = Callable[..., HttpSource]
API_TOKEN = "Bearer some-other-canary-5e4d3c2b1a"


@pytest.fixture
def api() -> Iterator[FakeAPIServer]:
    """A server that must receive nothing when a plan is refused."""
    with FakeAPIServer() as server:
        yield server


@pytest.fixture
async def make_source(api: FakeAPIServer) -> AsyncIterator[MakeSource]:
    """``make_source(**config)``: an HTTP source on ``api``, closed afterwards."""
    made: list[HttpSource] = []

    def make(**overrides: Any) -> HttpSource:
        settings = {
            "base_url": api.base_url,
            "endpoints": ["/v1/customers/{id}", "/v1/transactions"],
            **overrides,
        }
        made.append(HttpSource("crm", HttpSourceConfig.model_validate(settings)))
        return made[-1]

    yield make
    for source in made:
        await source.close()


GOOD = {"kind": "http", "base_url": "https://crm.example.com/api", "endpoints": ["/v1/x"]}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"base_url": "ftp://crm.example.com"}, "http:// or https://"),
        ({"base_url": "https:///no-host"}, "with a host"),
        ({"base_url": "https://user:pw@crm.example.com"}, "must not hold credentials"),
        ({"base_url": "https://crm.example.com/api?key=1"}, "query"),
        ({"base_url": "https://crm.example.com:99999"}, "invalid port"),
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": ["POST /v1/x"]}, "only GET"),
        ({"endpoints": ["v1/x"]}, "must start with /"),
        ({"endpoints": ["/v1/../admin"]}, "'..'"),
        ({"endpoints": ["/v1/{id}/{id}"]}, "twice"),
        ({"endpoints": ["/v1/x y"]}, "characters"),
        ({"auth_header": "Authorization"}, "go together"),
        ({"auth_header": "Bad Header", "auth_env": "T"}, "not a valid HTTP header name"),
        ({"pagination": "cursor"}, "needs cursor_field"),
        ({"pagination": "pages"}, "pagination"),
        ({"timestamp_header": "Last-Modified", "timestamp_field": "at"}, "not both"),
        ({"records": "data..items"}, "dotted path"),
        ({"timeout": 0}, "timeout"),
        ({"retries": 0}, "retries"),
        ({"base_urll": "x"}, "base_urll"),
    ],
)
def test_bad_config_is_a_config_error_at_load_naming_the_key(change, complaint) -> None:
    with pytest.raises(ConfigError, match=r"\[sources.crm\]") as caught:
        HttpSource.load("crm", GOOD | change, environ={})
    assert complaint in str(caught.value)


def test_a_missing_credential_variable_stops_the_load_naming_it_never_its_value() -> None:
    raw = GOOD | {"auth_header": "Authorization", "auth_env": "CRM_TOKEN"}
    with pytest.raises(ConfigError, match="CRM_TOKEN, which is not set") as caught:
        HttpSource.load("crm", raw, environ={"OTHER": API_TOKEN})
    assert caught.value.hint is not None
    assert "export CRM_TOKEN" in caught.value.hint
    with pytest.raises(ConfigError, match="line break") as caught:
        HttpSource.load("crm", raw, environ={"CRM_TOKEN": API_TOKEN + "\r\nX-Evil: 1"})
    assert API_TOKEN not in str(caught.value)
    source = HttpSource.load("crm", raw, environ={"CRM_TOKEN": API_TOKEN})
    assert API_TOKEN not in repr(source)
    assert API_TOKEN not in repr(source.config)


def test_the_base_url_is_normalised_and_get_prefixes_accepted() -> None:
    config = HttpSourceConfig.model_validate(
        GOOD | {"base_url": "https://crm.example.com/api/", "endpoints": ["GET /v1/x"]}
    )
    assert config.base_url == "https://crm.example.com/api"
    assert config.endpoints == ("/v1/x",)


def test_plan_fills_a_template_and_names_what_it_touches(make_source: MakeSource) -> None:
    source = make_source()
    plan = source.plan("/v1/customers/{id}", id=42, expand=["cards", "tx"], active=True)
    assert plan == Plan(
        source="crm",
        target="/v1/customers/{id}",
        params={"id": 42, "expand": ["cards", "tx"], "active": True},
        touched=("GET /v1/customers/{id}",),
    )
    assert source.plan("GET /v1/transactions", since="2026-12-01").touched == (
        "GET /v1/transactions",
    )


def test_a_concrete_path_matches_its_template_with_decoded_values(
    make_source: MakeSource,
) -> None:
    source = make_source()
    plan = source.plan("/v1/customers/c%2F7")
    assert (plan.target, dict(plan.params)) == ("/v1/customers/{id}", {"id": "c/7"})
    full = source.plan(source.config.base_url + "/v1/transactions", page_hint="x")
    assert (full.target, dict(full.params)) == ("/v1/transactions", {"page_hint": "x"})


async def test_path_values_are_encoded_so_they_cannot_add_a_segment(
    api: FakeAPIServer, make_source: MakeSource
) -> None:
    api.add(FakeResponse(body={"id": 1}))
    source = make_source()
    plan = source.plan("/v1/customers/{id}", id="a/../b c?d#e")
    batches = [b async for b in source.batches(plan)]
    assert batches[0].rows == [{"id": 1}]
    assert api.requests[0].path == "/v1/customers/a%2F..%2Fb%20c%3Fd%23e"


def _hosts(api_base: str) -> list[str]:
    https = api_base.replace("http://", "https://")
    other_port = api_base.rsplit(":", 1)[0] + ":1"
    return [
        f"{https}/v1/transactions",  # a scheme change
        f"{other_port}/v1/transactions",  # another port
        "http://127.0.0.2/v1/transactions",  # another host
        "//evil.example.com/v1/transactions",  # scheme-relative: another host
        "http://localhost/v1/transactions",
    ]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/admin",
        "/v1/customers",
        "/v1/customers/7/delete",
        "/v1/customers/../admin",
        "/v1/customers/%2e%2e",
        "/v1/customers/.",
        "/v1/transactions/",
        "/V1/transactions",
        "//v1/transactions",
        "/v1//transactions",
        "/v1/transactions\\..\\admin",
        "/v1/customers/{other}",
        "v1/transactions",
        "",
        "/v1/trans%61ctions",
        "/v1/customers/./7",  # "." would be removed by URL normalisation: 7 looks like an id
    ],
)
def test_plan_refuses_paths_outside_the_endpoints(
    make_source: MakeSource, api: FakeAPIServer, target: str
) -> None:
    with pytest.raises(ScopeError) as caught:
        make_source().plan(target)
    assert caught.value.rule == "endpoint"
    assert "/v1/customers/{id}" in (caught.value.hint or "")
    assert api.requests == []


@pytest.mark.parametrize(
    "path", ["/v1/customers/./7", "/v1/customers/x/../7", "/v1/./transactions"]
)
def test_dot_segments_in_an_absolute_url_are_refused_not_normalised_away(
    make_source: MakeSource, api: FakeAPIServer, path: str
) -> None:
    with pytest.raises(ScopeError) as caught:
        make_source().plan(api.base_url + path)
    assert caught.value.rule == "endpoint"


def test_plan_refuses_other_hosts_ports_and_schemes(
    make_source: MakeSource, api: FakeAPIServer
) -> None:
    source = make_source()
    for target in _hosts(api.base_url):
        with pytest.raises(ScopeError) as caught:
            source.plan(target)
        assert caught.value.rule == "endpoint", target


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_a_dot_or_empty_path_value_is_refused(make_source: MakeSource, value: str) -> None:
    with pytest.raises(ScopeError) as caught:
        make_source().plan("/v1/customers/{id}", id=value)
    assert caught.value.rule == "endpoint"


@pytest.mark.parametrize("method", ["POST", "DELETE", "put"])
def test_only_get_is_allowed(make_source: MakeSource, method: str) -> None:
    with pytest.raises(ScopeError) as caught:
        make_source().plan(f"{method} /v1/transactions")
    assert caught.value.rule == "method"


def test_malformed_requests_are_input_errors(make_source: MakeSource) -> None:
    source = make_source(pagination="offset")
    with pytest.raises(InputError, match="needs a value for 'id'"):
        source.plan("/v1/customers/{id}")
    with pytest.raises(InputError, match="keyword arguments"):
        source.plan("/v1/transactions?customer=7")
    with pytest.raises(InputError, match="must be a string, a number"):
        source.plan("/v1/transactions", filter={"a": 1})
    with pytest.raises(InputError, match="set by the source's offset pagination"):
        source.plan("/v1/transactions", offset=10)
    with pytest.raises(InputError, match="pass it once"):
        source.plan("/v1/customers/7", id=8)
    with pytest.raises(InputError, match="string or an integer"):
        source.plan("/v1/customers/{id}", id=1.5)


async def test_a_plan_not_made_by_the_source_is_refused_before_any_request(
    make_source: MakeSource, api: FakeAPIServer
) -> None:
    source = make_source()
    forged = Plan(source="crm", target="/v1/admin", params={}, touched=("GET /v1/admin",))
    with pytest.raises(ScopeError, match="not one of source 'crm'"):
        [b async for b in source.batches(forged)]
    other = Plan(source="billing", target="/v1/transactions")
    with pytest.raises(ScopeError):
        [b async for b in source.batches(other)]
    dots = Plan(source="crm", target="/v1/customers/{id}", params={"id": ".."})
    with pytest.raises(ScopeError):
        [b async for b in source.batches(dots)]
    assert api.requests == []


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    assert retry_after("120", now=now) == 120.0
    assert retry_after(" 0 ", now=now) == 0.0
    later = email.utils.format_datetime(dt.datetime.fromtimestamp(now + 90, dt.UTC), usegmt=True)
    assert retry_after(later, now=now) == 90.0
    earlier = email.utils.format_datetime(dt.datetime.fromtimestamp(now - 90, dt.UTC), usegmt=True)
    assert retry_after(earlier, now=now) == 0.0
    for junk in (None, "", "soon", "-5", "inf"):
        assert retry_after(junk, now=now) is None
