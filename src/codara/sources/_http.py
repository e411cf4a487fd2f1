"""HTTP/JSON APIs as a source: GET only, on declared endpoints, page by page.

Configuration (``codara.toml``; the credential only ever comes from the environment)::

    [sources.crm]
    kind = "http"
    base_url = "https://crm.example.com/api"
    endpoints = ["/v1/customers/{id}", "/v1/transactions"]
    auth_header = "Authorization"
    auth_env = "CRM_TOKEN"              # holds e.g. "Bearer eyJ..."
    pagination = "cursor"               # none | link | cursor | offset
    cursor_field = "meta.next"          # cursor: where the next cursor is in the body
    records = "data"                    # where the list of records is ("" = the body)
    timestamp_header = "Last-Modified"  # or timestamp_field = "updated_at"

**Scope.** The endpoints are the scope: :meth:`HttpSource.plan` accepts a template
(``plan("/v1/customers/{id}", id=7)``) or a concrete path that matches one
(``plan("/v1/customers/7")``); other keyword arguments become query parameters. Path values
are percent-encoded (``/`` too) so a value cannot add a segment; anything else (another
path, host or scheme, ``.``/``..`` segments raw or encoded, another method) is refused with
:class:`~codara.errors.ScopeError` rule ``endpoint`` (``method`` for a verb other than GET)
before a byte is sent.

**Reading.** Each page is fetched with retries: connection errors, timeouts, HTTP 5xx
(except 501) and 429 are retried up to ``retries`` attempts in all, waiting what
``Retry-After`` asks (seconds or an HTTP-date, at most ``retry_after_max``: a longer wait is
cut and logged) or else ``backoff`` seconds doubling per attempt, jittered, at most
``backoff_max``. Any other 4xx fails at once (non-retryable, with the status and a short
excerpt of the body, the credential blanked out). Redirects are followed only within the
base URL's origin (scheme, host and port): the credential is never sent anywhere else, and a
redirect or a next-page link to another origin is refused. A reply that is not JSON (by
content type), does not parse, or has no record list where ``records`` says is a
:class:`~codara.errors.SourceError`: the whole page is unusable, it is not a record's fault.
An item of the record list that is not a JSON object is :class:`~codara.sources.Rejected`
(rule ``not_object``), never dropped.

**Batches and cursors.** A batch never spans two pages; a page longer than ``batch_rows``
is split. A batch's cursor names the page to fetch next (its link URL, cursor value or
offset) and how many of its items were already read, so ``batches(plan, cursor)`` in a fresh
process goes on exactly there (a split page is fetched again and the read items skipped).
``version`` is the page's ``ETag``; ``newest`` comes from ``timestamp_header`` or the newest
``timestamp_field`` of the batch's records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import Field, ValidationError, field_validator, model_validator

from codara.errors import ConfigError, InputError, ScopeError, SourceError
from codara.sources._base import JSON, Batch, Plan, Rejected, Source, SourceConfig

__all__ = ["HttpSource", "HttpSourceConfig", "HttpSourceError"]

log = logging.getLogger("codara.sources.http")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 header name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METHOD = re.compile(r"([A-Za-z]+)\s+(\S.*)")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_EXCERPT = 200


class HttpSourceConfig(SourceConfig):
    """``[sources.NAME]`` with ``kind = "http"``: an HTTP/JSON API read with GET."""

    kind: Literal["http"] = "http"
    base_url: str
    """``http(s)://host[:port][/prefix]``: every request goes to this origin, under the prefix."""
    endpoints: tuple[str, ...] = Field(min_length=1)
    """The scope: path templates under ``base_url`` (``/v1/customers/{id}``), read with GET."""
    auth_header: str | None = None
    """The header that carries the credential (``Authorization``, ``X-Api-Key``)."""
    auth_env: str | None = None
    """The environment variable holding the header's value; required with ``auth_header``."""
    timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds to connect, and to wait for each read of the reply."""
    retries: int = Field(default=4, ge=1, le=20)
    """Attempts per page in all, the first included."""
    backoff: float = Field(default=0.5, ge=0, le=60)
    """Seconds before the second attempt, doubling for each further one (jittered)."""
    backoff_max: float = Field(default=30.0, ge=0, le=3600)
    """The longest backoff between two attempts."""
    retry_after_max: float = Field(default=60.0, ge=0, le=3600)
    """The longest ``Retry-After`` honoured; a server asking more is waited this long."""
    pagination: Literal["none", "link", "cursor", "offset"] = "none"
    """``link``: RFC 8288 ``Link: <...>; rel="next"``; ``cursor``: the body names the next
    cursor (``cursor_field``), sent back as ``cursor_param``; ``offset``: ``limit_param`` and
    ``offset_param``, ending at a page shorter than ``page_size``."""
    cursor_field: str | None = None
    """Dotted path of the next cursor in the body (``meta.next_cursor``); null or absent ends."""
    cursor_param: str = "cursor"
    limit_param: str = "limit"
    offset_param: str = "offset"
    page_size: int = Field(default=100, ge=1, le=100_000)
    """Records asked per page with ``offset`` pagination."""
    records: str = ""
    """Dotted path of the record list in the body; ``""``: the body is the list (or one object)."""
    timestamp_header: str | None = None
    """A header dating the data (``Last-Modified``): freshness."""
    timestamp_field: str | None = None
    """A record field dating it (``updated_at``, ISO 8601 or epoch seconds): freshness."""
    max_page_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """A reply body larger than this is refused rather than held in memory."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "base_url must not hold credentials; use auth_header and auth_env instead"
            )
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or a fragment")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"base_url has an invalid port: {exc}") from None
        return parts._replace(path=parts.path.rstrip("/")).geturl()

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_template(t) for t in value)

    @field_validator("auth_header", "timestamp_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid HTTP header name")
        return value

    @field_validator("auth_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("records", "cursor_field", "timestamp_field")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value and any(part == "" for part in value.split(".")):
            raise ValueError(f"{value!r} is not a dotted path (a.b.c)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HttpSourceConfig:
        if (self.auth_header is None) != (self.auth_env is None):
            raise ValueError("auth_header and auth_env go together: name both, or neither")
        if self.pagination == "cursor" and not self.cursor_field:
            raise ValueError('pagination = "cursor" needs cursor_field (where the next one is)')
        if self.pagination != "cursor" and self.cursor_field:
            raise ValueError('cursor_field is only read with pagination = "cursor"')
        if self.timestamp_header and self.timestamp_field:
            raise ValueError("name timestamp_header or timestamp_field, not both")
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must be at least backoff")
        return self


class HttpSourceError(SourceError):
    """An HTTP source failed; ``status`` is the HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        non_retryable: bool = False,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.non_retryable = non_retryable


@dataclass(frozen=True, slots=True)
class _Endpoint:
    template: str
    names: tuple[str, ...]
    pattern: re.Pattern[str]
    literal: int  # characters outside placeholders: the most specific match wins


@dataclass(frozen=True, slots=True)
class _Request:
    endpoint: _Endpoint
    url: httpx.URL
    query: dict[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a read stands: page ``page`` (1-based) is fetched by ``link``/``token``/``offset``
    and its first ``item`` items were already read."""

    page: int = 1
    item: int = 0
    link: str | None = None
    token: str | None = None
    offset: int = 0


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[Any]
    next: _Position | None
    etag: str | None
    newest: float | None


def _check_template(template: str) -> str:
    method = _METHOD.fullmatch(template.strip())
    if method:
        if method.group(1).upper() != "GET":
            raise ValueError(f"endpoint {template!r}: only GET endpoints can be declared")
        template = method.group(2)
    if not template.startswith("/"):
        raise ValueError(f"endpoint {template!r} must start with /")
    literal = _PLACEHOLDER.sub("", template)
    if not _LITERAL_OK.fullmatch(literal) or "{" in literal or "}" in literal:
        raise ValueError(f"endpoint {template!r} has characters a path template cannot hold")
    if "//" in template or any(s in (".", "..") for s in _decoded_segments(template)):
        raise ValueError(f"endpoint {template!r} has an empty, '.' or '..' segment")
    names = _PLACEHOLDER.findall(template)
    if len(set(names)) != len(names):
        raise ValueError(f"endpoint {template!r} names a placeholder twice")
    return template


def _decoded_segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/")[1:]]


def _compile(template: str) -> _Endpoint:
    pattern: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        pattern.append(re.escape(template[last : match.start()]))
        pattern.append(f"(?P<{match.group(1)}>[^/]+)")
        last = match.end()
    pattern.append(re.escape(template[last:]))
    return _Endpoint(
        template=template,
        names=tuple(_PLACEHOLDER.findall(template)),
        pattern=re.compile("".join(pattern)),
        literal=len(_PLACEHOLDER.sub("", template)),
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host.lower(), url.port or default)


def _show_origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _dig(body: Any, path: str) -> tuple[bool, Any]:
    """``body`` at dotted ``path`` ("" is the body itself): (found, value)."""
    if not path:
        return True, body
    for part in path.split("."):
        if not isinstance(body, dict) or part not in body:
            return False, None
        body = body[part]
    return True, body


def _timestamp(value: Any) -> float | None:
    """Epoch seconds from ISO 8601, an HTTP-date or a number of epoch seconds; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            try:
                return float(text)
            except ValueError:
                return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP-date, which
    counts from ``now``); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return max(0.0, when.timestamp() - now)
    return seconds if seconds >= 0 and seconds != float("inf") else None


def _query_value(name: str, value: Any) -> str | list[str]:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float | str) and not isinstance(v, bool) for v in value
    ):
        return [str(v) for v in value]
    raise InputError(
        f"query parameter {name!r} must be a string, a number, a boolean or a list of those, "
        f"not {type(value).__name__}"
    )


class HttpSource(Source):
    """An HTTP/JSON API read with GET on declared endpoints (see the module docstring).

    ``environ`` (default ``os.environ``) is where ``auth_env`` is looked up, once, here:
    a missing variable is a :class:`~codara.errors.ConfigError` at load, not at the first
    read. ``transport`` replaces httpx's network transport (tests, proxies).
    """

    kind: ClassVar[str] = "http"
    config: HttpSourceConfig

    def __init__(
        self,
        name: str,
        config: HttpSourceConfig,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(name, config)
        self._base = httpx.URL(config.base_url)
        self._prefix = self._base.raw_path.decode("ascii").rstrip("/")
        self._endpoints = {t: _compile(t) for t in config.endpoints}
        self._headers = {"accept": "application/json"}
        self._secrets: tuple[str, ...] = ()
        if config.auth_header and config.auth_env:
            env = os.environ if environ is None else environ
            value = env.get(config.auth_env, "").strip()
            if not value:
                raise ConfigError(
                    f"source {name!r} sends {config.auth_header} from the environment "
                    f"variable {config.auth_env}, which is not set",
                    hint=f"export {config.auth_env}=... (credentials are read only from the "
                    "environment, never from codara.toml)",
                )
            if any(c in value for c in "\r\n\0"):
                raise ConfigError(
                    f"the environment variable {config.auth_env} (source {name!r}) holds a "
                    "line break or NUL, which no header value may contain",
                    hint=f"set {config.auth_env} to the header value on one line",
                )
            self._headers[config.auth_header.lower()] = value
            self._secrets = (value, *(p for p in value.split() if len(p) >= 8))
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def load(
        cls,
        name: str,
        raw: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> HttpSource:
        """The source ``[sources.NAME]`` declares; any problem is a ConfigError naming it."""
        try:
            config = HttpSourceConfig.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(
                f"[sources.{name}] is not a valid HTTP source: {problems}",
                hint="see the HttpSourceConfig fields in codara.sources._http",
            ) from None
        return cls(name, config, environ=environ, transport=transport)

    def __repr__(self) -> str:
        return f"HttpSource({self.name!r}, {self.config.base_url!r})"

    # -- scope -----------------------------------------------------------------------------

    def plan(self, target: str, /, **params: Any) -> Plan:
        """Match ``target`` (a template or a concrete path, ``GET`` optional) to an endpoint;
        the other ``params`` are the query. Refused with ScopeError before any request."""
        endpoint, from_path = self._match(target, params)
        merged = {**params, **from_path}
        self._request(endpoint, merged)  # checks every value before the plan is accepted
        values: dict[str, JSON] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()
        }
        return Plan(
            source=self.name,
            target=endpoint.template,
            params=values,
            touched=(f"GET {endpoint.template}",),
        )

    def _refuse(self, target: str, why: str, *, rule: str = "endpoint") -> ScopeError:
        endpoints = ", ".join(self.config.endpoints)
        return ScopeError(
            f"source {self.name!r} refuses {target!r}: {why}",
            rule=rule,
            hint=f"the source allows GET on: {endpoints}",
        )

    def _match(self, target: str, params: Mapping[str, Any]) -> tuple[_Endpoint, dict[str, JSON]]:
        text = target.strip()
        method = _METHOD.fullmatch(text)
        if method and not text.startswith(("http://", "https://")):
            if method.group(1).upper() != "GET":
                raise self._refuse(target, "only GET is allowed", rule="method")
            text = method.group(2).strip()
        if text in self._endpoints:
            return self._endpoints[text], {}
        if "?" in text or "#" in text:
            raise InputError(
                f"{target!r}: pass query parameters as keyword arguments, not in the path",
                hint='plan("/v1/transactions", customer=7)',
            )
        if any(c in text for c in "\\{}") or any(ord(c) <= 32 or ord(c) == 127 for c in text):
            raise self._refuse(target, "it is not a declared endpoint")
        if "://" in text or text.startswith("//"):
            url = httpx.URL(text) if "://" in text else httpx.URL(f"{self._base.scheme}:{text}")
            if url.scheme != self._base.scheme:
                raise self._refuse(target, f"the scheme {url.scheme!r} is not the base URL's")
            if _origin(url) != _origin(self._base):
                raise self._refuse(target, f"{_show_origin(url)} is another host or port")
            text = url.raw_path.decode("ascii")
            if self._prefix and not text.startswith(self._prefix + "/"):
                raise self._refuse(target, "it is outside the base URL's path")
            text = text[len(self._prefix) :]
        endpoint, values = self._match_path(text)
        if endpoint is None:
            raise self._refuse(target, "it is not a declared endpoint")
        clash = sorted(set(values) & set(params))
        if clash:
            raise InputError(f"{target!r} already gives {', '.join(clash)}; pass it once")
        return endpoint, values

    def _match_path(self, path: str) -> tuple[_Endpoint | None, dict[str, JSON]]:
        if not path.startswith("/") or "//" in path:
            return None, {}
        if any(s in (".", "..") for s in _decoded_segments(path)):
            return None, {}
        found = [(e, m) for e in self._endpoints.values() if (m := e.pattern.fullmatch(path))]
        if not found:
            return None, {}
        endpoint, match = max(found, key=lambda pair: pair[0].literal)
        return endpoint, {k: unquote(v) for k, v in match.groupdict().items()}

    def _request(self, endpoint: _Endpoint, params: Mapping[str, Any]) -> _Request:
        path = endpoint.template
        for name in endpoint.names:
            if name not in params or params[name] is None:
                raise InputError(
                    f"GET {endpoint.template} needs a value for {name!r}",
                    hint=f'plan("{endpoint.template}", {name}=...)',
                )
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise InputError(f"path parameter {name!r} must be a string or an integer")
            text = str(value)
            if text in ("", ".", ".."):
                raise self._refuse(f"{name}={text!r}", "a path value cannot be empty, . or ..")
            path = path.replace("{" + name + "}", quote(text, safe=""), 1)
        query: dict[str, str | list[str]] = {}
        reserved = self._paging_params()
        for key, value in params.items():
            if key in endpoint.names:
                continue
            if key in reserved:
                raise InputError(
                    f"query parameter {key!r} is set by the source's {self.config.pagination} "
                    "pagination; it cannot be passed"
                )
            query[key] = _query_value(key, value)
        url = self._base.copy_with(raw_path=(self._prefix + path).encode("ascii"))
        return _Request(endpoint, url, query)

    def _paging_params(self) -> frozenset[str]:
        if self.config.pagination == "cursor":
            return frozenset({self.config.cursor_param})
        if self.config.pagination == "offset":
            return frozenset({self.config.limit_param, self.config.offset_param})
        return frozenset()

    def _in_scope(self, url: httpx.URL) -> bool:
        """Whether a URL the server gave (a next-page link) is on our origin and endpoints."""
        if _origin(url) != _origin(self._base):
            return False
        path = url.raw_path.decode("ascii").split("?", 1)[0]
        if self._prefix and not path.startswith(self._prefix + "/"):
            return False
        return self._match_path(path[len(self._prefix) :])[0] is not None

    # -- reading ---------------------------------------------------------------------------

    async def batches(self, plan: Plan, cursor: JSON = None) -> AsyncIterator[Batch]:
        """Read ``plan`` page by page from ``cursor``; see the module docstring."""
        endpoint = self._endpoints.get(plan.target)
        if plan.source != self.name or endpoint is None:
            raise self._refuse(plan.target, f"the plan is not one of source {self.name!r}'s")
        request = self._request(endpoint, plan.params)
        position: _Position | None = self._resume(cursor)
        size = self.config.batch_rows
        while position is not None:
            page = await self._page(request, position)
            items = page.items
            start = position.item
            if start > len(items):
                log.warning(
                    "source %r GET %s page %d has %d items, fewer than the %d already read; "
                    "going on with the next page",
                    self.name, endpoint.template, position.page, len(items), start,
                )  # fmt: skip
            if not items[start:] and page.next is None:
                yield Batch(rows=[], cursor=None, version=page.etag, newest=page.newest)
            for first in range(start, len(items), size):
                chunk = items[first : first + size]
                end = first + len(chunk)
                after = replace(position, item=end) if end < len(items) else page.next
                yield self._batch(chunk, first, position.page, page, after)
            position = page.next

    def _batch(
        self, chunk: list[Any], first: int, page_no: int, page: _Page, after: _Position | None
    ) -> Batch:
        rows: list[dict[str, JSON]] = []
        rejected: list[Rejected] = []
        for index, item in enumerate(chunk, start=first + 1):
            if isinstance(item, dict):
                rows.append(item)
            else:
                kind = "a list" if isinstance(item, list) else json.dumps(item)[:40]
                rejected.append(
                    Rejected(
                        raw=item,
                        reason=f"item {index} of page {page_no} is {kind}, not a JSON object",
                        rule="not_object",
                        where=f"page {page_no}, item {index}",
                    )
                )
        newest = page.newest
        if self.config.timestamp_field:
            stamps = [_timestamp(_dig(r, self.config.timestamp_field)[1]) for r in rows]
            newest = max((s for s in stamps if s is not None), default=None)
        return Batch(
            rows=rows,
            rejected=rejected,
            cursor=self._cursor(after),
            version=page.etag,
            newest=newest,
        )

    def _cursor(self, position: _Position | None) -> JSON:
        if position is None:
            return None
        cursor: dict[str, JSON] = {"page": position.page, "item": position.item}
        if self.config.pagination == "link" and position.link is not None:
            cursor["url"] = position.link
        elif self.config.pagination == "cursor":
            cursor["cursor"] = position.token
        elif self.config.pagination == "offset":
            cursor["offset"] = position.offset
        return cursor

    def _resume(self, cursor: JSON) -> _Position:
        if cursor is None:
            return _Position()
        bad = InputError(
            f"source {self.name!r} cannot resume from {json.dumps(cursor)[:80]}: not a cursor "
            "it wrote",
            hint="resume only with the cursor of a batch this source returned",
        )
        if not isinstance(cursor, dict):
            raise bad
        page, item = cursor.get("page"), cursor.get("item")
        if not (isinstance(page, int) and isinstance(item, int) and page >= 1 and item >= 0):
            raise bad
        if self.config.pagination == "link" and page > 1:
            link = cursor.get("url")
            if not isinstance(link, str):
                raise bad
            if not self._in_scope(httpx.URL(link)):
                raise self._refuse(link, "a resume link outside the source's endpoints")
            return _Position(page=page, item=item, link=link)
        if self.config.pagination == "cursor":
            token = cursor.get("cursor")
            if not (token is None or isinstance(token, str)) or (token is None and page > 1):
                raise bad
            return _Position(page=page, item=item, token=token)
        if self.config.pagination == "offset":
            offset = cursor.get("offset")
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise bad
            return _Position(page=page, item=item, offset=offset)
        return _Position(page=page, item=item)

    async def _page(self, request: _Request, position: _Position) -> _Page:
        """Fetch the page at ``position`` and find its records and the next position."""
        params: dict[str, str | list[str]] | None = dict(request.query)
        url = request.url
        mode = self.config.pagination
        if mode == "link" and position.link is not None:
            url, params = httpx.URL(position.link), None
        elif mode == "cursor" and position.token is not None:
            params = {**request.query, self.config.cursor_param: position.token}
        elif mode == "offset":
            params = {
                **request.query,
                self.config.limit_param: str(self.config.page_size),
                self.config.offset_param: str(position.offset),
            }
        where = f"source {self.name!r} GET {request.endpoint.template} page {position.page}"
        response, body = await self._fetch(url, params, where)
        found, items = _dig(body, self.config.records)
        if self.config.records == "" and isinstance(body, dict):
            items = [body]
        elif found and items is None:
            items = []
        elif not found or not isinstance(items, list):
            what = f"a list at {self.config.records!r}" if self.config.records else "a list"
            raise HttpSourceError(
                f"{where}: the reply is not {what} of records",
                non_retryable=True,
                hint="check `records` (the dotted path of the record list) for this source",
            )
        following = position.page + 1
        after: _Position | None = None
        if mode == "link":
            link = response.links.get("next", {}).get("url")
            if link:
                target = response.url.join(link)
                if not self._in_scope(target):
                    raise HttpSourceError(
                        f"{where}: the next-page link leads outside the source "
                        f"({_show_origin(target)}, or a path that is not a declared endpoint); "
                        "refused",
                        non_retryable=True,
                    )
                if target == response.url:
                    raise HttpSourceError(f"{where}: the next-page link is the same page")
                after = _Position(page=following, link=str(target))
        elif mode == "cursor":
            token = _dig(body, self.config.cursor_field or "")[1]
            if token is not None and token != "":
                if isinstance(token, bool) or not isinstance(token, str | int):
                    raise HttpSourceError(f"{where}: the next cursor is not a string or number")
                if str(token) == position.token:
                    raise HttpSourceError(f"{where}: the next cursor is this page's cursor")
                after = _Position(page=following, token=str(token))
        elif mode == "offset" and len(items) >= self.config.page_size:
            after = _Position(page=following, offset=position.offset + len(items))
        newest = None
        if self.config.timestamp_header:
            newest = _timestamp(response.headers.get(self.config.timestamp_header))
        return _Page(items, after, response.headers.get("etag"), newest)

    # -- the wire --------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout),
                follow_redirects=False,  # followed by hand, on our origin only
                trust_env=False,  # no proxy or credentials from the ambient environment
                transport=self._transport,
            )
        return self._client

    async def _fetch(
        self, url: httpx.URL, params: Mapping[str, str | list[str]] | None, where: str
    ) -> tuple[httpx.Response, Any]:
        """GET with retries; the response and its body parsed as JSON."""
        attempts = self.config.retries
        for attempt in range(1, attempts + 1):
            asked: float | None = None
            status: int | None = None
            try:
                response, data = await self._get(url, params, where)
            except httpx.TransportError as exc:
                problem = _transport_problem(exc, self.config.timeout)
            else:
                status = response.status_code
                if status == 429 or (status >= 500 and status != 501):
                    problem = f"HTTP {status}"
                    now = dt.datetime.now(dt.UTC).timestamp()
                    asked = retry_after(response.headers.get("retry-after"), now=now)
                elif status >= 400:
                    raise HttpSourceError(
                        f"{where}: HTTP {status}: {self._excerpt(data)}",
                        status=status,
                        non_retryable=True,
                        hint=_status_hint(status, self.config),
                    )
                elif 200 <= status < 300:
                    return response, self._json(response, data, where)
                else:
                    raise HttpSourceError(
                        f"{where}: unexpected HTTP {status}", status=status, non_retryable=True
                    )
            if attempt == attempts:
                raise HttpSourceError(
                    f"{where}: {problem}, {attempts} attempt(s) made; giving up",
                    status=status,
                    hint="the source is down or overloaded; the step's retry policy may try "
                    "again later (raise `retries` or `backoff` to wait longer here)",
                )
            delay = self._delay(attempt, asked, where)
            log.warning(
                "%s: %s (attempt %d of %d); retrying in %.2f s",
                where, problem, attempt, attempts, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, asked: float | None, where: str) -> float:
        if asked is not None:
            cap = self.config.retry_after_max
            if asked > cap:
                log.warning(
                    "%s: the server asked to wait %.0f s (Retry-After); waiting %.2f s, the "
                    "source's retry_after_max",
                    where, asked, cap,
                )  # fmt: skip
                return cap
            return asked
        base = min(self.config.backoff * 2.0 ** (attempt - 1), self.config.backoff_max)
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    async def _get(
        self, url: httpx.URL, params: Mapping[str, str | list[str]] | None, where: str
    ) -> tuple[httpx.Response, bytes]:
        """One attempt: GET, following redirects on our origin only, body read with a limit."""
        client = self._http()
        for _ in range(_MAX_REDIRECTS + 1):
            if _origin(url) != _origin(self._base):  # never send the credential elsewhere
                raise HttpSourceError(
                    f"{where}: redirected to {_show_origin(url)}, another origin than the "
                    f"source's {_show_origin(self._base)}; refused",
                    non_retryable=True,
                    hint="point base_url at the host that serves the API",
                )
            async with client.stream("GET", url, params=params, headers=self._headers) as resp:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise HttpSourceError(
                            f"{where}: HTTP {resp.status_code} redirect without a Location",
                            status=resp.status_code,
                            non_retryable=True,
                        )
                    url, params = resp.url.join(location), None
                    continue
                limit = self.config.max_page_bytes if resp.status_code < 300 else 4096
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        if resp.status_code >= 300:
                            break  # an error body: its start is enough
                        raise HttpSourceError(
                            f"{where}: the reply is larger than max_page_bytes ({limit} bytes)",
                            non_retryable=True,
                            hint="ask for smaller pages, or raise max_page_bytes",
                        )
                return resp, b"".join(chunks)
        raise HttpSourceError(f"{where}: more than {_MAX_REDIRECTS} redirects", non_retryable=True)

    def _json(self, response: httpx.Response, data: bytes, where: str) -> Any:
        if response.status_code == 204:
            return None
        content_type = response.headers.get("content-type", "")
        media, _, rest = content_type.partition(";")
        media = media.strip().lower()
        if not (media == "application/json" or (
            media.startswith("application/") and media.endswith("+json")
        )):  # fmt: skip
            raise HttpSourceError(
                f"{where}: the reply is {media or 'of no content type'}, not JSON",
                status=response.status_code,
                non_retryable=True,
                hint="check base_url and the endpoint: this looks like a web page or a proxy",
            )
        charset = "utf-8-sig"
        for param in rest.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip(' "').lower() not in (
                "utf-8", "utf8", ""
            ):  # fmt: skip
                charset = value.strip(' "')
        try:
            return json.loads(data.decode(charset), parse_constant=_no_constant)
        except (LookupError, UnicodeDecodeError, ValueError) as exc:
            detail = f"{exc.msg} at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else (
                type(exc).__name__
            )  # fmt: skip
            raise HttpSourceError(
                f"{where}: the body ({len(data)} bytes) is not valid JSON ({detail}); it may "
                "be truncated",
                status=response.status_code,
            ) from None

    def _excerpt(self, data: bytes) -> str:
        text = " ".join(data[: _EXCERPT * 4].decode("utf-8", "replace").split())
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        if len(text) > _EXCERPT:
            text = text[:_EXCERPT] + "..."
        return text or "(empty body)"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _transport_problem(exc: httpx.TransportError, timeout: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect within {timeout} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no reply within {timeout} s"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return f"the connection failed ({type(exc).__name__})"


def _status_hint(status: int, config: HttpSourceConfig) -> str:
    if status in (401, 403):
        if config.auth_env:
            return f"check the credential in {config.auth_env} and what it may read"
        return "the API wants a credential: set auth_header and auth_env"
    if status == 404:
        return "check base_url and the endpoint, and that the record exists"
    return "the API refused the request; retrying will not change its answer"
