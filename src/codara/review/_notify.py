"""Webhook notifications of review events, signed, best effort, never in the way.

``WebhookNotifier(url)`` is the ``notify`` callable :class:`~codara.review.Reviews` takes
(``await notify("escalated", item)``); :func:`notify_created` is the hook the gate calls once
the transaction that created an item has committed. Each event is one HTTP POST of JSON::

    {"event": "review.created", "review": {"id": ..., "run_id": ..., "workflow": ...,
     "step": ..., "role": ..., "due_at": ..., "priority": ..., "reason": ..., "url": ...}}

Only ids and routing fields are sent, never the proposal or its context (they may hold
personal data): the receiver fetches the item through the API if it needs more.

Headers: ``X-Codara-Event`` (e.g. ``review.created``), ``X-Codara-Delivery`` (the same for
every attempt of one notification: deduplicate on it), ``X-Codara-Timestamp`` (Unix seconds
when this attempt was signed) and ``X-Codara-Signature: sha256=<hex>``, the HMAC-SHA256 with
the shared secret of ``f"{timestamp}.".encode() + body`` (the raw body bytes). A receiver
recomputes it, compares in constant time, and refuses timestamps more than a few minutes
old: a captured request cannot be replayed later (see :func:`verify_signature`).

Delivery is best effort: :meth:`WebhookNotifier.__call__` hands the POST to a background task
and returns at once, so a slow or dead endpoint never holds up a decision, a deadline sweep
or a run. A failed attempt (connection error, timeout, HTTP 429 or 5xx) is retried with
exponential backoff; other 4xx answers are not retried. Failures are logged, never raised.
Notifications live in memory: one whose process stops before it is delivered is lost.

Configuration (``codara.toml``; the secret only ever comes from the environment)::

    [notifications]
    webhook_url = "https://hooks.example.com/codara"
    secret_env = "CODARA_WEBHOOK_SECRET"                        # the default
    review_url = "https://codara.example.com/reviews/{id}"      # optional: link in events
    timeout = 5                                                 # seconds per attempt
    attempts = 4                                                # first try + 3 retries
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codara.config import Settings
from codara.errors import ConfigError
from codara.review._items import ReviewItem
from codara.review._service import Notify
from codara.store import ReviewRecord

if TYPE_CHECKING:  # httpx loads when a webhook is first delivered
    import httpx

__all__ = [
    "DEFAULT_SECRET_ENV",
    "EVENTS",
    "NotificationSettings",
    "WebhookNotifier",
    "notifier_from_settings",
    "notify_created",
    "review_payload",
    "sign",
    "verify_signature",
]

log = logging.getLogger("codara.notify")

DEFAULT_SECRET_ENV = "CODARA_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
EVENTS = ("created", "escalated", "expired", "due_soon")
EVENT_HEADER = "X-Codara-Event"
DELIVERY_HEADER = "X-Codara-Delivery"
TIMESTAMP_HEADER = "X-Codara-Timestamp"
SIGNATURE_HEADER = "X-Codara-Signature"
MAX_PENDING = 1000
"""Deliveries in flight per notifier; beyond this new events are dropped (and logged), so a
dead endpoint cannot make a process accumulate tasks without bound."""


class NotificationSettings(BaseModel):
    """``[notifications]`` in ``codara.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url: str | None = None
    secret_env: str = Field(default=DEFAULT_SECRET_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    review_url: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=120)
    attempts: int = Field(default=4, ge=1, le=10)


# -- the wire format ---------------------------------------------------------------------------
def _event_name(event: str) -> str:
    short = event.removeprefix("review.")
    if short not in EVENTS:
        raise ValueError(f"unknown review event {event!r} (known: {', '.join(EVENTS)})")
    return f"review.{short}"


def review_payload(
    event: str, item: ReviewItem, *, review_url: str | None = None
) -> dict[str, Any]:
    """The JSON document sent for ``event``: ids and routing fields only."""
    review: dict[str, Any] = {
        "id": item.id,
        "run_id": item.run_id,
        "workflow": item.workflow,
        "step": item.step,
        "role": item.role,
        "due_at": item.due_at,
        "priority": item.priority,
        "reason": item.reason,
    }
    if review_url:
        review["url"] = review_url.replace("{id}", item.id)
    return {"event": _event_name(event), "review": review}


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` with ``secret``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: bytes | str,
    body: bytes,
    *,
    timestamp: str,
    signature: str,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent.

    ``body`` must be the raw request body, byte for byte (not re-serialised JSON).
    """
    key = secret.encode() if isinstance(secret, str) else secret
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


def _where(url: str) -> str:
    """The URL without path or query for logs: webhook paths often carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- the notifier ------------------------------------------------------------------------------
class WebhookNotifier:
    """POSTs signed review events to ``url``; the shared secret comes from ``secret_env``.

    Raises :class:`~codara.errors.ConfigError` at once if the URL is not http(s) or the
    secret variable is unset: an unsigned webhook is never sent.
    """

    def __init__(
        self,
        url: str,
        secret_env: str = DEFAULT_SECRET_ENV,
        timeout: float = 5,
        *,
        attempts: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        review_url: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"[notifications] webhook_url must be an http(s) URL, not {url!r}",
                hint='write it as webhook_url = "https://hooks.example.com/codara"',
            )
        env = os.environ if environ is None else environ
        secret = env.get(secret_env, "")
        if not secret.strip():
            raise ConfigError(
                f"webhook notifications to {_where(url)} need a signing secret, but the "
                f"environment variable {secret_env} is not set",
                hint=f"export {secret_env}=<a long random string shared with the receiver> "
                "(secrets are read only from the environment)",
            )
        self.url = url
        self.secret_env = secret_env
        self.timeout = float(timeout)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.review_url = review_url
        self.clock = clock
        self._secret = secret.encode()
        self._transport = transport
        self._tasks: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def __repr__(self) -> str:  # never shows the secret
        return f"WebhookNotifier({_where(self.url)!r}, secret_env={self.secret_env!r})"

    # ``Notify``: what Reviews and the gate call.
    async def __call__(self, event: str, item: ReviewItem) -> None:
        """Queue ``event`` for delivery in the background; return at once, never raise."""
        try:
            payload = review_payload(event, item, review_url=self.review_url)
        except Exception:
            log.exception("review %s: cannot build the %r notification", item.id, event)
            return
        if len(self._tasks) >= MAX_PENDING:
            self.dropped += 1
            log.error(
                "review %s: %s notification dropped: %d deliveries to %s still pending",
                item.id,
                payload["event"],
                len(self._tasks),
                _where(self.url),
            )
            return
        # An empty context: the delivery is not a branch of the workflow that triggered it
        # (a replay does not notify again, so it must not take a branch number).
        task = asyncio.get_running_loop().create_task(
            self._deliver(payload, _delivery_id(payload["event"], item)),
            name=f"notify {payload['event']} {item.id}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, event: str, item: ReviewItem) -> bool:
        """Deliver ``event`` now, with retries; True once the endpoint answered 2xx.

        Never raises (except when cancelled): failures are logged and give False.
        """
        try:
            payload = review_payload(event, item, review_url=self.review_url)
        except Exception:
            log.exception("review %s: cannot build the %r notification", item.id, event)
            return False
        return await self._deliver(payload, _delivery_id(payload["event"], item))

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds) for the deliveries in flight, e.g. at shutdown."""
        if not self._tasks:
            return
        await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _deliver(self, payload: dict[str, Any], delivery: str) -> bool:
        event = payload["event"]
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        review_id = payload["review"]["id"]
        problem = "not tried"
        import httpx

        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, transport=self._transport, follow_redirects=False
            ) as client:
                for attempt in range(1, self.attempts + 1):
                    timestamp = str(int(self.clock()))
                    headers = {
                        "Content-Type": "application/json",
                        "User-Agent": "codara-webhook/1",
                        EVENT_HEADER: event,
                        DELIVERY_HEADER: delivery,
                        TIMESTAMP_HEADER: timestamp,
                        SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                    }
                    retry_after: float | None = None
                    try:
                        response = await client.post(self.url, content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    else:
                        if response.is_success:
                            self.delivered += 1
                            log.debug("review %s: %s delivered", review_id, event)
                            return True
                        problem = f"HTTP {response.status_code}"
                        if response.status_code != 429 and response.status_code < 500:
                            break  # the receiver refuses it: retrying will not help
                        retry_after = _retry_after(response)
                    if attempt < self.attempts:
                        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                        delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy
                        if retry_after is not None:
                            delay = min(self.max_backoff, max(delay, retry_after))
                        log.info(
                            "review %s: %s to %s failed (%s); attempt %d of %d in %.1f s",
                            review_id,
                            event,
                            _where(self.url),
                            problem,
                            attempt + 1,
                            self.attempts,
                            delay,
                        )
                        await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.warning("review %s: %s notification cancelled before delivery", review_id, event)
            raise
        except Exception as exc:  # a bug or a broken transport: still never the caller's problem
            problem = f"unexpected {type(exc).__name__}: {exc}"
        self.failed += 1
        log.error(
            "review %s: %s notification to %s not delivered (%s); the review itself is unaffected",
            review_id,
            event,
            _where(self.url),
            problem,
        )
        return False


def _delivery_id(event: str, item: ReviewItem) -> str:
    """The same for every attempt (and process) sending this notification: receivers dedupe."""
    return f"{item.id}.{event.removeprefix('review.')}.{item.escalation_level}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# -- wiring ------------------------------------------------------------------------------------
def notifier_from_settings(
    settings: Settings, *, environ: Mapping[str, str] | None = None
) -> WebhookNotifier | None:
    """The notifier ``[notifications]`` configures, or None when no ``webhook_url`` is set."""
    raw = dict(settings.section("notifications"))
    where = settings.source_file or "the configuration"
    if any(k in raw for k in ("secret", "webhook_secret")):
        raise ConfigError(
            f"[notifications] in {where} holds a secret; secrets are read only from the "
            "environment",
            hint=f"remove it and export {raw.get('secret_env', DEFAULT_SECRET_ENV)}=... instead",
        )
    try:
        cfg = NotificationSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"invalid [notifications] in {where}: {problems}",
            hint="keys: webhook_url, secret_env, review_url, timeout, attempts",
        ) from None
    if not cfg.webhook_url:
        return None
    return WebhookNotifier(
        cfg.webhook_url,
        cfg.secret_env,
        cfg.timeout,
        attempts=cfg.attempts,
        review_url=cfg.review_url,
        environ=environ,
    )


async def notify_created(notify: Notify | None, review: ReviewRecord | ReviewItem) -> None:
    """Tell ``notify`` that ``review`` was created; never raises.

    Call it from the gate only after the transaction that inserted the item has committed,
    and only when that transaction really ran (not when it was replayed from the journal),
    so that one item gives one ``review.created``.
    """
    if notify is None:
        return
    try:
        item = review if isinstance(review, ReviewItem) else ReviewItem.from_record(review)
        await notify("created", item)
    except Exception:
        log.exception("review %s: the created notification failed", review.id)
