"""What ``[sources.NAME]`` with ``kind = "http"`` declares, checked when it is loaded.

The endpoint templates are the source's scope (see :mod:`codara.sources._http`): each is a
path under ``base_url`` whose ``{name}`` placeholders each stand for one path segment.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from codara.sources._base import SourceConfig

__all__ = ["HttpSourceConfig"]

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
METHOD = re.compile(r"([A-Za-z]+)\s+(\S.*)")
"""``GET /path``: a method before a path (in a template or a request)."""
_LITERAL_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 header name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def _check_template(template: str) -> str:
    method = METHOD.fullmatch(template.strip())
    if method:
        if method.group(1).upper() != "GET":
            raise ValueError(f"endpoint {template!r}: only GET endpoints can be declared")
        template = method.group(2)
    if not template.startswith("/"):
        raise ValueError(f"endpoint {template!r} must start with /")
    literal = PLACEHOLDER.sub("", template)
    if not _LITERAL_OK.fullmatch(literal) or "{" in literal or "}" in literal:
        raise ValueError(f"endpoint {template!r} has characters a path template cannot hold")
    if "//" in template or any(s in (".", "..") for s in decoded_segments(template)):
        raise ValueError(f"endpoint {template!r} has an empty, '.' or '..' segment")
    names = PLACEHOLDER.findall(template)
    if len(set(names)) != len(names):
        raise ValueError(f"endpoint {template!r} names a placeholder twice")
    return template


def decoded_segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/")[1:]]
