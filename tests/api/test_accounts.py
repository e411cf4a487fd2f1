"""Accounts hold: no user oracle in login time, scrypt off the event loop at OWASP's cost with
rehash on login, throttling and lockout, sessions and tokens that end with a password change or
a disable, and a login that refuses ``Origin: null``."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from codara.auth import AuthError, Users

SCRYPT_COST = (2**17, 8, 1)  # OWASP

if TYPE_CHECKING:
    from conftest import Env  # tests/api/conftest.py


def _spy_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (n, thread id) of every real scrypt call; the real function still runs."""
    calls: list[tuple[int, int]] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append((int(kwargs["n"]), threading.get_ident()))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


async def test_unknown_disabled_and_real_users_cost_the_same_hash(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = Users(sqlite_env.app.store, sqlite_env.app.clock)
    await users.add("nopass", ["support"])  # a user with API tokens only
    await users.add("gone", ["support"], password=sqlite_env.password)
    async with sqlite_env.app.store.tx() as tx:
        await tx.execute("UPDATE codara_users SET disabled = 1 WHERE username = 'gone'")
    calls = _spy_scrypt(monkeypatch)
    counts = {}
    for name in ("alice", "nobody-here", "nopass", "gone"):
        before = len(calls)
        with pytest.raises(AuthError, match="wrong user name or password"):
            await users.login(name, "wrong password!")
        counts[name] = [n for n, _ in calls[before:]]
    assert counts == {name: [SCRYPT_COST[0]] for name in counts}, counts


async def test_scrypt_runs_in_a_thread_at_owasp_cost(
    sqlite_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCRYPT_COST == (2**17, 8, 1)
    users = Users(sqlite_env.app.store, sqlite_env.app.clock)
    calls = _spy_scrypt(monkeypatch)
    loop_thread = threading.get_ident()
    await users.add("eve", ["support"], password="a long password")
    await users.login("eve", "a long password")
    assert len(calls) == 2
    assert all(thread != loop_thread for _, thread in calls), "scrypt ran on the event loop"
    rows = await sqlite_env.app.store.execute_raw(
        "SELECT password_hash FROM codara_users WHERE username = 'eve'"
    )
    assert str(rows[0][0]).startswith(f"scrypt${2**17}$8$1$")


async def test_an_old_cost_hash_still_verifies_and_is_rehashed_on_login(sqlite_env: Env) -> None:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(b"legacy password", salt=salt, n=2**14, r=8, p=1, dklen=32)
    legacy = f"scrypt${salt.hex()}${digest.hex()}"
    async with sqlite_env.app.store.tx() as tx:
        await tx.execute(
            "INSERT INTO codara_users (username, password_hash, roles, disabled, created_at) "
            "VALUES ('old', ?, 'support', 0, 0)",
            (legacy,),
        )
    users = Users(sqlite_env.app.store, sqlite_env.app.clock)
    with pytest.raises(AuthError):
        await users.login("old", "not the password")
    who = await users.login("old", "legacy password")
    assert who.username == "old"
    rows = await sqlite_env.app.store.execute_raw(
        "SELECT password_hash FROM codara_users WHERE username = 'old'"
    )
    assert str(rows[0][0]).startswith(f"scrypt${2**17}$8$1$")
    assert (await users.login("old", "legacy password")).username == "old"


async def test_login_refuses_origin_null(sqlite_env: Env) -> None:
    """A sandboxed iframe on another site sends ``Origin: null``: it must not log in."""
    form = {"username": "alice", "password": sqlite_env.password}
    async with sqlite_env.client() as browser:
        r = await browser.post("/login", data=form, headers={"Origin": "null"})
        assert r.status_code == 403, r.text
        assert "codara_session" not in r.headers.get("set-cookie", "")
        r = await browser.post("/login", data=form, headers={"Origin": "http://testserver"})
        assert r.status_code == 303


async def test_the_runs_starter_may_not_claim_or_delegate_its_review(sqlite_env: Env) -> None:
    from codara.review import ForbiddenError, Principal, Reviews

    env = sqlite_env
    users = Users(env.app.store, env.app.clock)
    await users.add("alice", ["support"])  # alice starts the run and reviews support items
    run_id = await env.app.start_run(
        "refunds", {"amount": 50.0, "confidence": 0.1}, started_by="alice"
    )
    await env.app.work(until_idle=True)
    review_id = await env.review_of(run_id)
    reviews = Reviews(env.app.store, env.app.clock)
    alice = Principal("alice", frozenset({"support"}))
    with pytest.raises(ForbiddenError, match="started this run"):
        await reviews.claim(alice, review_id)
    with pytest.raises(ForbiddenError, match="started this run"):
        await reviews.delegate(alice, review_id, "dan")
    dan = Principal("dan", frozenset({"support"}))
    assert (await reviews.claim(dan, review_id)).assignee == "dan"


async def test_login_is_throttled_per_user_with_lockout_journaled(env: Env) -> None:
    """5 wrong passwords in 15 minutes lock the user for 15 minutes (429 + Retry-After), even
    with the right password, in the database (a second App sees it), and every attempt is a
    row of codara_login_events."""
    wrong = {"username": "carol", "password": "wrong password"}
    right = {"username": "carol", "password": env.password}
    async with env.client() as browser:
        for _ in range(5):
            env.clock.advance(10)
            assert (await browser.post("/login", data=wrong)).status_code == 401
        r = await browser.post("/login", data=right)
        assert r.status_code == 429, r.text
        assert 800 <= int(r.headers["retry-after"]) <= 900
    other = Users(env.app.store, env.app.clock)  # another process would see the same rows
    from codara.auth import LoginThrottledError

    with pytest.raises(LoginThrottledError):
        await other.login("carol", env.password)
    env.clock.advance(901)
    assert (await other.login("carol", env.password)).username == "carol"
    rows = await env.app.store.execute_raw(
        "SELECT outcome, COUNT(*) FROM codara_login_events WHERE username = 'carol' "
        "GROUP BY outcome ORDER BY outcome"
    )
    assert [(str(o), int(n)) for o, n in rows] == [
        ("failure", 5),
        ("locked", 2),
        ("lockout_user", 1),
        ("success", 1),
    ]


async def test_login_is_throttled_per_address(sqlite_env: Env) -> None:
    from codara.auth import LoginLimits, LoginThrottledError

    users = Users(sqlite_env.app.store, sqlite_env.app.clock, limits=LoginLimits(per_address=3))
    for name in ("u1", "u2", "u3"):  # one failure each: no user lock, but the address is
        with pytest.raises(AuthError):
            await users.login(name, "wrong password", address="203.0.113.9")
    with pytest.raises(LoginThrottledError):
        await users.login("alice", sqlite_env.password, address="203.0.113.9")
    assert (await users.login("alice", sqlite_env.password, address="198.51.100.1")).username


async def test_a_password_change_or_disable_ends_sessions_and_tokens(sqlite_env: Env) -> None:
    env = sqlite_env
    users = Users(env.app.store, env.app.clock)
    await users.add("pat", ["support"], password="first password")
    api = await users.create_token("pat", "ci")
    async with env.client() as browser:
        r = await browser.post("/login", data={"username": "pat", "password": "first password"})
        assert r.status_code == 303
        browser.cookies.set("codara_session", r.cookies["codara_session"])
        assert (await browser.get("/queue")).status_code == 200
        await users.add("pat", ["support"], password="second password")
        assert (await browser.get("/queue")).status_code == 303  # back to the login form
    with pytest.raises(AuthError):
        await users.authenticate(api)
    api = await users.create_token("pat", "ci")
    await users.disable("pat")
    await users.enable("pat")
    with pytest.raises(AuthError):
        await users.authenticate(api)


def test_login_limits_from_the_environment() -> None:
    from codara.auth import LoginLimits
    from codara.errors import InputError

    assert LoginLimits.from_env({}) == LoginLimits()
    got = LoginLimits.from_env(
        {"CODARA_LOGIN_MAX_FAILURES_PER_USER": "3", "CODARA_LOGIN_LOCKOUT_SECONDS": "60"}
    )
    assert (got.per_user, got.lockout, got.per_address) == (3, 60.0, 50)
    more = LoginLimits.from_env(
        {
            "CODARA_LOGIN_MAX_LOCKOUT_SECONDS": "7200",
            "CODARA_LOGIN_EVENTS_RETENTION_DAYS": "30",
            "CODARA_LOGIN_CONCURRENT_CHECKS": "1",
            "CODARA_LOGIN_MAX_WAITING": "4",
        }
    )
    assert (more.max_lockout, more.retention_days, more.concurrent_checks, more.max_waiting) == (
        7200.0,
        30.0,
        1,
        4,
    )
    with pytest.raises(InputError, match="CODARA_LOGIN_WINDOW_SECONDS"):
        LoginLimits.from_env({"CODARA_LOGIN_WINDOW_SECONDS": "soon"})
    for bad in ("0", "-3", "nan", "inf", "1e999"):
        with pytest.raises(InputError, match="CODARA_LOGIN_MAX_WAITING"):
            LoginLimits.from_env({"CODARA_LOGIN_MAX_WAITING": bad})
