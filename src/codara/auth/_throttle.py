"""Login throttling: per-user and per-address failure streaks, a lockout that doubles with
every failure past the limit, and a bound on concurrent password checks.

State lives in ``codara_login_throttle`` (one row per ``user:NAME`` and ``addr:ADDRESS``) and
is changed *before* the password is checked, under the row lock (``FOR UPDATE`` on
PostgreSQL, the write lock on SQLite): every attempt is charged as a failure first and refunded
if the password was right. Concurrent attempts therefore cannot all pass the check before any
of them is counted, and a lockout holds across processes and restarts. A process killed
between the charge and the refund leaves the attempt counted as a failure (the safe side).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from codara.errors import InputError, UserError
from codara.store import Tx

__all__ = ["LoginLimits", "LoginThrottledError"]


class LoginThrottledError(UserError):
    """Too many failed logins for this user or from this address: wait ``retry_after``."""

    code = "login_throttled"
    http_status = 429
    exit_code = 15

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginLimits:
    """``per_user`` (or ``per_address``) failures in a row, each within ``window`` seconds of
    the one before (or of the end of a lockout), lock logins for ``lockout`` seconds; every
    further failure after a lockout doubles it, up to ``max_lockout``. A successful login ends
    the user's streak. At most ``concurrent_checks`` password checks run at once per process
    (scrypt at OWASP's cost needs 128 MiB each); beyond ``max_waiting`` queued ones a login is
    answered 429 at once. Login events older than ``retention_days`` are deleted."""

    per_user: int = 5
    per_address: int = 50
    window: float = 900.0
    lockout: float = 900.0
    max_lockout: float = 86400.0
    retention_days: float = 90.0
    concurrent_checks: int = 2
    max_waiting: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoginLimits:
        """The defaults, each overridden by its ``CODARA_LOGIN_*`` variable if set."""
        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for field, var in LIMIT_VARS.items():
            raw = env.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not 1 <= value <= 1e9:
                raise InputError(
                    f"{var}={raw[:50]!r} is not a number from 1 to 1e9",
                    hint=f"unset it for the default, or give e.g. {var}=10",
                )
            values[field] = value
        d = cls()
        return cls(
            per_user=int(values.get("per_user", d.per_user)),
            per_address=int(values.get("per_address", d.per_address)),
            window=values.get("window", d.window),
            lockout=values.get("lockout", d.lockout),
            max_lockout=values.get("max_lockout", d.max_lockout),
            retention_days=values.get("retention_days", d.retention_days),
            concurrent_checks=int(values.get("concurrent_checks", d.concurrent_checks)),
            max_waiting=int(values.get("max_waiting", d.max_waiting)),
        )

    def lock_for(self, over: int) -> float:
        """The lockout after the ``over``-th failure past the limit (0: the first)."""
        return min(self.lockout * 2.0 ** min(over, 40), max(self.max_lockout, self.lockout))


LIMIT_VARS = {
    "per_user": "CODARA_LOGIN_MAX_FAILURES_PER_USER",
    "per_address": "CODARA_LOGIN_MAX_FAILURES_PER_ADDRESS",
    "window": "CODARA_LOGIN_WINDOW_SECONDS",
    "lockout": "CODARA_LOGIN_LOCKOUT_SECONDS",
    "max_lockout": "CODARA_LOGIN_MAX_LOCKOUT_SECONDS",
    "retention_days": "CODARA_LOGIN_EVENTS_RETENTION_DAYS",
    "concurrent_checks": "CODARA_LOGIN_CONCURRENT_CHECKS",
    "max_waiting": "CODARA_LOGIN_MAX_WAITING",
}


@dataclass
class Charge:
    """One throttle row as an attempt found it and what the attempt made of it."""

    key: str
    limit: int
    failures: int  # after the charge
    until: float  # the lockout the charge set (or the old one)
    before_until: float  # the lockout before the charge


_LOCKOUT = {"user": "lockout_user", "addr": "lockout_address"}
"""The login event a failure that starts a lockout of a key of each kind is journaled as."""


def keys(username: str, address: str, limits: LoginLimits) -> list[tuple[str, int]]:
    out = [(f"user:{username}", limits.per_user)]
    if address:
        out.append((f"addr:{address}", limits.per_address))
    return out


async def charge(
    tx: Tx, limits: LoginLimits, wanted: Sequence[tuple[str, int]], now: float
) -> tuple[float, list[Charge]]:
    """Count an attempt as a failure of each key, unless one is locked: then nothing changes
    and the first value is the seconds until the lockout ends."""
    for key, _ in wanted:
        await tx.execute(
            "INSERT INTO codara_login_throttle (key, failures, last_failure, locked_until) "
            "VALUES (?, 0, 0, 0) ON CONFLICT (key) DO NOTHING",
            (key,),
        )
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    found: list[tuple[str, int, int, float, float]] = []
    for key, limit in wanted:
        rows = await tx.fetchall(
            "SELECT failures, last_failure, locked_until FROM codara_login_throttle "
            "WHERE key = ?" + lock,
            (key,),
        )
        failures, last, until = rows[0]
        found.append((key, limit, int(failures), float(last), float(until)))
    wait = max((until - now for *_, until in found), default=0.0)
    if wait > 0:
        return wait, []
    charges = []
    for key, limit, failures, last, until in found:
        if now > max(last, until) + limits.window:  # the streak is over
            failures = 0
        failures += 1
        new_until = now + limits.lock_for(failures - limit) if failures >= limit else until
        await tx.execute(
            "UPDATE codara_login_throttle SET failures = ?, last_failure = ?, locked_until = ? "
            "WHERE key = ?",
            (failures, now, new_until, key),
        )
        charges.append(Charge(key, limit, failures, new_until, until))
    return 0.0, charges


async def settle(tx: Tx, charges: Sequence[Charge], ok: bool) -> list[tuple[str, float]]:
    """After the password check: refund a right password (the user's streak ends; the
    address gets its failure back), or report the lockouts a wrong one started."""
    if not ok:
        return [
            (_LOCKOUT[c.key.split(":", 1)[0]], c.until) for c in charges if c.failures >= c.limit
        ]
    for c in charges:
        if c.key.startswith("user:"):
            await tx.execute(
                "UPDATE codara_login_throttle SET failures = 0, locked_until = 0 WHERE key = ?",
                (c.key,),
            )
        else:  # one success from an address does not forgive that address's other failures
            await tx.execute(
                "UPDATE codara_login_throttle SET failures = CASE WHEN failures > 0 THEN "
                "failures - 1 ELSE 0 END, locked_until = CASE WHEN locked_until = ? THEN ? "
                "ELSE locked_until END WHERE key = ?",
                (c.until, c.before_until, c.key),
            )
    return []


async def prune(tx: Tx, limits: LoginLimits, now: float) -> None:
    """Drop login events past their retention and throttle rows whose streak is over."""
    await tx.execute(
        "DELETE FROM codara_login_events WHERE at < ?", (now - limits.retention_days * 86400,)
    )
    await tx.execute(
        "DELETE FROM codara_login_throttle WHERE last_failure < ? AND locked_until < ?",
        (now - limits.window, now - limits.window),
    )


class _Slots:
    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.waiting = 0


# The slots of each event loop, by size (every Users of a process normally has one size).
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Slots]] = (
    weakref.WeakKeyDictionary()
)


class CheckSlot:
    """``async with CheckSlot(limits):`` one of the process's password-check slots, or
    :class:`LoginThrottledError` at once if ``max_waiting`` logins already wait for one."""

    def __init__(self, limits: LoginLimits) -> None:
        sizes = _SLOTS.setdefault(asyncio.get_running_loop(), {})
        size = limits.concurrent_checks
        self._slots = sizes.get(size) or sizes.setdefault(size, _Slots(size))
        self._limits = limits

    async def __aenter__(self) -> None:
        slots = self._slots
        if slots.waiting >= self._limits.max_waiting:
            raise LoginThrottledError(
                "the server is busy checking other logins: try again in a moment",
                retry_after=1.0,
                hint="raise CODARA_LOGIN_MAX_WAITING if this is legitimate load",
            )
        slots.waiting += 1
        try:
            await slots.semaphore.acquire()
        finally:
            slots.waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        self._slots.semaphore.release()
