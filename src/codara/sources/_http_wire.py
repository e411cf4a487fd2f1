"""The wire under an HTTP source: one GET of one page, with retries, on one origin.

:class:`Wire` sends the source's headers (the credential among them) only to the base URL's
origin: it follows redirects by hand and refuses one to another origin before connecting.
It retries connection errors, timeouts, 5xx (but 501) and 429, waiting ``Retry-After``
(capped at ``retry_after_max``, which it logs) or a jittered doubling backoff; any other
4xx is final. A 2xx body must be JSON by content type and parse, within ``max_page_bytes``.
Errors name the source, the endpoint template and the page, never the query (it may hold
personal data) nor the credential (blanked out of body excerpts).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import random
from collections.abc import Mapping
from typing import Any

import httpx

from codara.errors import SourceError
from codara.sources._http_config import HttpSourceConfig

__all__ = ["HttpSourceError", "Wire", "origin", "retry_after", "show_origin"]

log = logging.getLogger("codara.sources.http")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_EXCERPT = 200


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


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host.lower(), url.port or default)


def show_origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


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


class Wire:
    """GETs to ``config.base_url``'s origin with ``headers``; ``secrets`` are blanked out of
    anything the server sends back that ends up in an error."""

    def __init__(
        self,
        config: HttpSourceConfig,
        headers: Mapping[str, str],
        secrets: tuple[str, ...],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._base = httpx.URL(config.base_url)
        self._headers = dict(headers)
        self._secrets = secrets
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout),
                follow_redirects=False,  # followed by hand, on our origin only
                trust_env=False,  # no proxy or credentials from the ambient environment
                transport=self._transport,
            )
        return self._client

    async def fetch(
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
            except httpx.DecodingError:
                raise HttpSourceError(
                    f"{where}: the body does not decode as its Content-Encoding says",
                    hint="the server or a proxy sent a corrupt compressed reply",
                ) from None
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
                "%s: %s (attempt %d of %d); retrying in %.3f s",
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
            if origin(url) != origin(self._base):  # never send the credential elsewhere
                raise HttpSourceError(
                    f"{where}: redirected to {show_origin(url)}, another origin than the "
                    f"source's {show_origin(self._base)}; refused",
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
