"""Login throttling holds under pressure: the lockout grows with every failure past the limit
(journaled with its end), concurrent attempts cannot slip past the limit before they are
counted, password checks are bounded per process (scrypt needs 128 MiB each), old events are
pruned, an admin can unlock a user, and the per-address limit sees the client behind a trusted
proxy, not the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from codara.auth import AuthError, LoginLimits, LoginThrottledError, Users

if TYPE_CHECKING:
    from conftest import Env  # tests/api/conftest.py


async def _outcomes(env: Env, username: str) -> list[tuple[str, float | None]]:
    rows = await env.app.store.execute_raw(
        "SELECT outcome, until FROM codara_login_events WHERE username = ? ORDER BY id",
        (username,),
    )
    return [(str(o), None if u is None else float(u)) for o, u in rows]


async def test_the_lockout_doubles_with_each_failure_after_it_up_to_the_maximum(env: Env) -> None:
    limits = LoginLimits(per_user=3, lockout=60, max_lockout=200)
    users = Users(env.app.store, env.app.clock, limits=limits)
    for _ in range(3):
        with pytest.raises(AuthError):
            await users.login("carol", "wrong password")
    locks = []
    for _ in range(4):  # each lockout ends, one more wrong password: 60, 120, 200 (cap), 200
        with pytest.raises(LoginThrottledError) as locked:
            await users.login("carol", env.password)
        locks.append(round(locked.value.retry_after))
        env.clock.advance(locked.value.retry_after + 1)
        with pytest.raises(AuthError):
            await users.login("carol", "wrong password")
    assert locks == [60, 120, 200, 200]
    lockouts = [(o, u) for o, u in await _outcomes(env, "carol") if o == "lockout_user"]
    assert len(lockouts) == 5
    start = env.clock()
    assert lockouts[-1][1] == pytest.approx(start + 200)
    # the right password once the lockout is over ends the streak: the next failure is the
    # first of a new one (no lockout)
    env.clock.advance(201)
    assert (await users.login("carol", env.password)).username == "carol"
    with pytest.raises(AuthError):
        await users.login("carol", "wrong password")
    assert (await users.login("carol", env.password)).username == "carol"


async def test_a_streak_ends_after_a_quiet_window(env: Env) -> None:
    users = Users(env.app.store, env.app.clock, limits=LoginLimits(per_user=3, window=100))
    for _ in range(5):  # two failures, then a quiet window, again and again: never 3 in a row
        for _ in range(2):
            with pytest.raises(AuthError):
                await users.login("carol", "wrong password")
        env.clock.advance(101)
    assert (await users.login("carol", env.password)).username == "carol"


async def test_concurrent_attempts_are_counted_before_any_is_checked(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 wrong passwords at once against a limit of 5: only 5 reach scrypt, 15 are refused
    as locked (the charge is made under the row lock before the check), on both databases."""
    checked: list[int] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        checked.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    limits = LoginLimits(per_user=5, concurrent_checks=20, max_waiting=100)
    # separate Users objects, as separate requests (or processes) would have
    attempts = [
        Users(env.app.store, env.app.clock, limits=limits).login("carol", f"wrong {i}")
        for i in range(20)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["AuthError"] * 5 + ["LoginThrottledError"] * 15, kinds
    assert len(checked) == 5
    outcomes = [o for o, _ in await _outcomes(env, "carol")]
    assert outcomes.count("failure") == 5
    assert outcomes.count("locked") == 15


async def test_password_checks_are_bounded_per_process(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``concurrent_checks`` scrypt calls at once (each needs 128 MiB); beyond
    ``max_waiting`` queued logins the next is answered 429 at once, before it is counted."""
    env = sqlite_env
    lock = threading.Lock()
    running = [0]
    peak = [0]
    real: Callable[..., bytes] = hashlib.scrypt

    def tracking(*args: Any, **kwargs: Any) -> bytes:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(hashlib, "scrypt", tracking)
    limits = LoginLimits(per_user=100, per_address=100, concurrent_checks=2, max_waiting=100)
    names = ["alice", "dan", "carol", "olga", "root", "alice"]
    logins = [
        Users(env.app.store, env.app.clock, limits=limits).login(n, env.password) for n in names
    ]
    assert all(p.username for p in await asyncio.gather(*logins))
    assert peak[0] == 2

    busy = LoginLimits(concurrent_checks=1, max_waiting=1)
    three = [
        Users(env.app.store, env.app.clock, limits=busy).login("dan", env.password)
        for _ in range(3)
    ]
    results = await asyncio.gather(*three, return_exceptions=True)
    refused = [r for r in results if isinstance(r, LoginThrottledError)]
    assert len(refused) == 1
    assert "busy" in str(refused[0])
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 2
    assert [o for o, _ in await _outcomes(env, "dan")].count("locked") == 0


async def test_old_events_and_ended_streaks_are_pruned(env: Env) -> None:
    limits = LoginLimits(per_user=3, window=60, retention_days=1)
    users = Users(env.app.store, env.app.clock, limits=limits)
    with pytest.raises(AuthError):
        await users.login("ghost", "wrong password")
    with pytest.raises(AuthError):
        await users.login("carol", "wrong password")
    env.clock.advance(2 * 86400)
    assert (await users.login("alice", env.password)).username == "alice"
    events = await env.app.store.execute_raw("SELECT username FROM codara_login_events")
    assert [str(r[0]) for r in events] == ["alice"]
    keys = await env.app.store.execute_raw("SELECT key FROM codara_login_throttle ORDER BY key")
    assert [str(r[0]) for r in keys] == ["user:alice"]  # its own row, reset by the success


async def test_an_admin_unlocks_a_user(env: Env) -> None:
    users = Users(env.app.store, env.app.clock, limits=LoginLimits(per_user=2))
    for _ in range(2):
        with pytest.raises(AuthError):
            await users.login("carol", "wrong password")
    with pytest.raises(LoginThrottledError):
        await users.login("carol", env.password)
    assert await users.unlock("carol") is True
    assert (await users.login("carol", env.password)).username == "carol"
    assert await users.unlock("carol") is False
    assert "unlocked" in [o for o, _ in await _outcomes(env, "carol")]


async def _login(env: Env, client: tuple[str, int], forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    transport = httpx.ASGITransport(app=env.api, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.post(
            "/login", data={"username": "nobody", "password": "wrong password"}, headers=headers
        )
    return r.status_code


async def test_the_address_behind_a_trusted_proxy_is_the_forwarded_one(sqlite_env: Env) -> None:
    """[server] trusted_proxies defaults to the loopback addresses: a login through a local
    proxy is throttled by the client's address it forwards; a client that is not a trusted
    proxy cannot choose its address with the header."""
    env = sqlite_env
    await _login(env, ("127.0.0.1", 5000), "203.0.113.9")
    await _login(env, ("198.51.100.7", 5000), "192.0.2.44")  # not a proxy: header ignored
    rows = await env.app.store.execute_raw("SELECT address FROM codara_login_events ORDER BY id")
    assert [str(r[0]) for r in rows] == ["203.0.113.9", "198.51.100.7"]


async def test_no_trusted_proxies_means_the_header_is_ignored(sqlite_env: Env) -> None:
    from codara.api import create_app

    env = sqlite_env
    settings = env.app.settings
    server = settings.server.model_copy(update={"trusted_proxies": ""})
    env.app.settings = settings.model_copy(update={"server": server})
    env.api = create_app(env.app)  # the app is open already (the fixture's lifespan)
    await _login(env, ("127.0.0.1", 5000), "203.0.113.9")
    rows = await env.app.store.execute_raw("SELECT address FROM codara_login_events")
    assert [str(r[0]) for r in rows] == ["127.0.0.1"]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    from codara.config import load_settings
    from codara.errors import ConfigError

    ok = load_settings(environ={"CODARA_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    assert ok.server.trusted_proxies == "10.0.0.0/8, 127.0.0.1"
    with pytest.raises(ConfigError, match="not an IP address or network"):
        load_settings(environ={"CODARA_TRUSTED_PROXIES": "proxy.example.com"})
