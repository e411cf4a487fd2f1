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
redirect to another origin is refused before connecting. A next-page link (and the link in a
resume cursor) must stay on the origin *and* on the plan's own endpoint, so every page of a
read comes from the GET its lineage names. A reply that is not JSON (by
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

import datetime as dt
import email.utils
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import ValidationError

from codara.errors import ConfigError, InputError, ScopeError
from codara.sources._base import JSON, Batch, Plan, Rejected, Source, SourceConfig
from codara.sources._http_config import METHOD, PLACEHOLDER, HttpSourceConfig, decoded_segments
from codara.sources._http_wire import HttpSourceError, Wire, origin, retry_after, show_origin

__all__ = ["HttpSource", "HttpSourceConfig", "HttpSourceError", "retry_after"]

log = logging.getLogger("codara.sources.http")

_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number",
          bool: "a boolean", type(None): "null"}  # fmt: skip


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


def _compile(template: str) -> _Endpoint:
    pattern: list[str] = []
    last = 0
    for match in PLACEHOLDER.finditer(template):
        pattern.append(re.escape(template[last : match.start()]))
        pattern.append(f"(?P<{match.group(1)}>[^/]+)")
        last = match.end()
    pattern.append(re.escape(template[last:]))
    return _Endpoint(
        template=template,
        names=tuple(PLACEHOLDER.findall(template)),
        pattern=re.compile("".join(pattern)),
        literal=len(PLACEHOLDER.sub("", template)),
    )


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
        return float(value) if math.isfinite(value) else None
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
                return _timestamp(float(text))
            except ValueError:
                return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


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
    config_model: ClassVar[type[SourceConfig]] = HttpSourceConfig
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
        self._wire = Wire(config, self._headers, self._secrets, transport)

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
        method = METHOD.fullmatch(text)
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
            if origin(url) != origin(self._base):
                raise self._refuse(target, f"{show_origin(url)} is another host or port")
            # The path as written: httpx.URL removes "." and ".." segments, which would let
            # "/v1/customers/./cards" pass as "/v1/customers/{id}" with id "cards".
            text = urlsplit(text).path
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
        if any(s in (".", "..") for s in decoded_segments(path)):
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

    def _in_scope(self, url: httpx.URL, endpoint: _Endpoint) -> bool:
        """Whether a next-page URL (from the server, or from a resume cursor) is on our origin
        and on the plan's own endpoint: pages of one read come from one endpoint."""
        if origin(url) != origin(self._base):
            return False
        path = url.raw_path.decode("ascii").split("?", 1)[0]
        if self._prefix and not path.startswith(self._prefix + "/"):
            return False
        return self._match_path(path[len(self._prefix) :])[0] is endpoint

    # -- reading ---------------------------------------------------------------------------

    async def batches(self, plan: Plan, cursor: JSON = None) -> AsyncIterator[Batch]:
        """Read ``plan`` page by page from ``cursor``; see the module docstring."""
        endpoint = self._endpoints.get(plan.target)
        if plan.source != self.name or endpoint is None:
            raise self._refuse(plan.target, f"the plan is not one of source {self.name!r}'s")
        request = self._request(endpoint, plan.params)
        position: _Position | None = self._resume(cursor, endpoint)
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
                kind = _KINDS.get(type(item), "not an object")  # never the value itself
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

    def _resume(self, cursor: JSON, endpoint: _Endpoint) -> _Position:
        if cursor is None:
            return _Position()
        bad = InputError(
            f"source {self.name!r} cannot resume from that cursor ({type(cursor).__name__}): "
            "not one it wrote for this endpoint",
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
            if not self._in_scope(httpx.URL(link), endpoint):
                raise self._refuse(link, f"a resume link off GET {endpoint.template}")
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
        if page > 1:
            raise bad  # without pagination there is one page
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
        response, body = await self._wire.fetch(url, params, where)
        found, items = _dig(body, self.config.records)
        if body is None:  # 204 No Content, or a body of null: no records
            items = []
        elif self.config.records == "" and isinstance(body, dict):
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
                if not self._in_scope(target, request.endpoint):
                    raise HttpSourceError(
                        f"{where}: the next-page link leads off the endpoint "
                        f"({show_origin(target)}, or a path that is not "
                        f"{request.endpoint.template}); refused",
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

    async def close(self) -> None:
        await self._wire.close()
