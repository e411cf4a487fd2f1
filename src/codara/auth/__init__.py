"""Users, roles, API tokens and console sessions: authentication that works self-hosted.

Passwords are hashed with scrypt (standard library); tokens are random 32-byte secrets of
which only the SHA-256 is stored. Roles: ``admin`` (everything), ``operator`` (runs and all
queues), and the reviewer roles that policies name (``fraud``, ``support``, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence

from codara.auth._throttle import (
    CheckSlot,
    LoginLimits,
    LoginThrottledError,
    charge,
    keys,
    prune,
    settle,
)
from codara.errors import InputError, UserError
from codara.review import Principal
from codara.store import Store, TokenRecord, Tx
from codara.store import reviews as repo

__all__ = [
    "SCRYPT_COST",
    "AuthError",
    "LoginLimits",
    "LoginThrottledError",
    "Users",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_ROLE = re.compile(r"^[a-z0-9_-]{1,50}$")
# OWASP's recommendation for scrypt: N = 2^17, r = 8, p = 1 (128 MiB, so maxmem must allow it).
SCRYPT_COST = (2**17, 8, 1)
# Hashes written before the cost was stored in the string ("scrypt$salt$digest") used this.
_LEGACY_COST = (2**14, 8, 1)
_MAX_N = 2**20
_ID_LEN = 16  # a token's id: the first hex digits of its SHA-256


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The key derivation every hash and check goes through (CPU- and memory-hard)."""
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=129 * r * n + 2**20
    )


class AuthError(UserError):
    code = "unauthenticated"
    http_status = 401
    exit_code = 15


def hash_password(password: str, cost: tuple[int, int, int] = SCRYPT_COST) -> str:
    """``scrypt$N$r$p$salt$digest``: the cost travels with the hash, so it can be raised."""
    n, r, p = cost
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _parse(stored: str) -> tuple[tuple[int, int, int], bytes, str] | None:
    parts = stored.split("$")
    try:
        if len(parts) == 3 and parts[0] == "scrypt":
            return _LEGACY_COST, bytes.fromhex(parts[1]), parts[2]
        if len(parts) == 6 and parts[0] == "scrypt":
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if 2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16:
                return (n, r, p), bytes.fromhex(parts[4]), parts[5]
    except ValueError:
        return None
    return None


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches ``stored`` (either format). An unusable ``stored`` is
    checked against a dummy hash, so that the answer takes as long either way."""
    parsed = _parse(stored) if stored else None
    if parsed is None:
        _dummy_check(password)
        return False
    (n, r, p), salt, digest = parsed
    got = _scrypt(password, salt, n, r, p)
    return hmac.compare_digest(got.hex(), digest)


def needs_rehash(stored: str | None) -> bool:
    """True for a hash made with another cost than :data:`SCRYPT_COST`."""
    parsed = _parse(stored) if stored else None
    return parsed is not None and parsed[0] != SCRYPT_COST


_DUMMY_SALT = secrets.token_bytes(16)


def _dummy_check(password: str) -> None:
    """Spend what checking a real password spends (for unknown or disabled users)."""
    _scrypt(password, _DUMMY_SALT, *SCRYPT_COST)


async def _login_event(
    tx: Tx, at: float, username: str, address: str, outcome: str, until: float | None = None
) -> None:
    await tx.execute(
        "INSERT INTO codara_login_events (at, username, address, outcome, until) "
        "VALUES (?, ?, ?, ?, ?)",
        (at, username, address, outcome, until),
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    def __init__(
        self, store: Store, clock: Callable[[], float], *, limits: LoginLimits | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self._limits = limits

    @property
    def limits(self) -> LoginLimits:
        """The login limits, from the ``CODARA_LOGIN_*`` variables unless given. Read at the
        first login, not when a Users is made: the API makes one for every request."""
        if self._limits is None:
            self._limits = LoginLimits.from_env()
        return self._limits

    async def add(self, username: str, roles: Sequence[str], password: str | None = None) -> None:
        """Create or update a user (roles replace the old ones)."""
        if not _NAME.match(username):
            raise InputError(
                f"invalid user name {username!r}",
                hint="use letters, digits and _ . @ - (at most 100)",
            )
        bad = [r for r in roles if not _ROLE.match(r)]
        if bad or not roles:
            raise InputError(
                f"invalid roles {bad or list(roles)!r}",
                hint="give at least one role of lower-case letters, digits, _ or -",
            )
        if password is not None and len(password) < 8:
            raise InputError("the password must have at least 8 characters")
        hashed = await asyncio.to_thread(hash_password, password) if password else None
        async with self.store.tx() as tx:
            await repo.upsert_user(tx, username, hashed, ",".join(sorted(set(roles))), self.clock())
            if hashed is not None:  # a new password ends every session and token it had
                await repo.revoke_tokens(tx, username=username)

    async def disable(self, username: str) -> None:
        """Refuse the user from now on and revoke all its sessions and API tokens."""
        async with self.store.tx() as tx:
            await self._set_disabled(tx, username, 1)
            await repo.revoke_tokens(tx, username=username)

    async def enable(self, username: str) -> None:
        """Let a disabled user in again (its old tokens stay revoked)."""
        async with self.store.tx() as tx:
            await self._set_disabled(tx, username, 0)

    @staticmethod
    async def _set_disabled(tx: Tx, username: str, disabled: int) -> None:
        if await repo.get_user(tx, username) is None:
            raise InputError(f"no user {username[:100]!r}", hint="list them: codara users list")
        await tx.execute(
            "UPDATE codara_users SET disabled = ? WHERE username = ?", (disabled, username)
        )

    async def tokens(self) -> list[dict[str, object]]:
        """Every API token and live session, by id (a prefix of its hash, never the secret)."""
        async with self.store.tx() as tx:
            rows = await tx.fetchall(
                "SELECT token_hash, username, name, kind, created_at, expires_at, revoked "
                "FROM codara_tokens ORDER BY username, created_at"
            )
        keys = ("username", "name", "kind", "created_at", "expires_at", "revoked")
        return [
            {"id": str(r[0])[:_ID_LEN], **dict(zip(keys, r[1:], strict=True))}
            | {"revoked": bool(r[6])}
            for r in rows
        ]

    async def revoke_id(self, token_id: str) -> None:
        """Revoke the one token whose id (as ``tokens()`` shows it) is ``token_id``."""
        if not re.fullmatch(f"[0-9a-f]{{{_ID_LEN}}}", token_id):
            raise InputError(
                f"invalid token id {token_id[:80]!r}", hint="see the ids: codara tokens list"
            )
        async with self.store.tx() as tx:
            rows = await tx.fetchall(
                "SELECT token_hash FROM codara_tokens WHERE token_hash LIKE ?", (token_id + "%",)
            )
            if len(rows) != 1:
                raise InputError(
                    f"no token with id {token_id}", hint="see the ids: codara tokens list"
                )
            await tx.execute(
                "UPDATE codara_tokens SET revoked = 1 WHERE token_hash = ?", (rows[0][0],)
            )

    async def list(self) -> list[tuple[str, list[str], bool]]:
        async with self.store.tx() as tx:
            users = await repo.list_users(tx)
        return [(u.username, u.roles.split(","), bool(u.disabled)) for u in users]

    async def principal(self, username: str) -> Principal:
        if not _NAME.match(username):
            raise AuthError(f"no active user {username[:100]!r}")
        async with self.store.tx() as tx:
            user = await repo.get_user(tx, username)
        if user is None or user.disabled:
            raise AuthError(f"no active user {username!r}")
        return Principal(user.username, frozenset(user.roles.split(",")))

    async def login(self, username: str, password: str, *, address: str = "") -> Principal:
        """Check a password. Unknown, disabled and password-less users cost the same scrypt
        as real ones (no timing oracle); the check runs in a thread, off the event loop, in one
        of a bounded number of slots; a hash of an older cost is replaced by one of
        :data:`SCRYPT_COST` on success. The attempt is counted against the user's and the
        address's limits before the password is checked (see :mod:`codara.auth._throttle`);
        a locked one raises :class:`LoginThrottledError`. Every attempt and every lockout is a
        row of ``codara_login_events``."""
        if not _NAME.match(username):
            raise AuthError("wrong user name or password")
        address = address[:100]
        limits = self.limits
        async with CheckSlot(limits):
            now = self.clock()
            async with self.store.tx() as tx:
                wait, charges = await charge(tx, limits, keys(username, address, limits), now)
                if wait > 0:
                    await _login_event(tx, now, username, address, "locked", now + wait)
                user = await repo.get_user(tx, username)
            if wait > 0:
                raise LoginThrottledError(
                    "too many failed logins: try again later",
                    retry_after=wait,
                    hint=f"wait {int(wait) + 1} s, or ask an admin: codara users unlock NAME",
                )
            stored = None if user is None or user.disabled else user.password_hash
            ok = await asyncio.to_thread(verify_password, password, stored)
            fresh = None
            if ok and needs_rehash(stored):
                fresh = await asyncio.to_thread(hash_password, password)
        async with self.store.tx() as tx:
            await _login_event(tx, now, username, address, "success" if ok else "failure")
            for outcome, until in await settle(tx, charges, ok):
                await _login_event(tx, now, username, address, outcome, until)
            await prune(tx, limits, now)
            await tx.execute(  # expired and revoked sessions are of no use: drop them
                "DELETE FROM codara_tokens WHERE kind = 'session' AND (revoked = 1 OR "
                "(expires_at IS NOT NULL AND expires_at <= ?))",
                (now,),
            )
            if user is not None and fresh is not None:
                await tx.execute(
                    "UPDATE codara_users SET password_hash = ? WHERE username = ? "
                    "AND password_hash = ?",
                    (fresh, user.username, stored),
                )
        if user is None or not ok:
            raise AuthError("wrong user name or password")
        return Principal(user.username, frozenset(user.roles.split(",")))

    async def unlock(self, username: str) -> bool:
        """End ``username``'s failure streak and lockout (an admin's decision, journaled as
        ``unlocked``); False if it had none."""
        if not _NAME.match(username):
            raise InputError(f"invalid user name {username[:100]!r}")
        async with self.store.tx() as tx:
            n = await tx.execute(
                "DELETE FROM codara_login_throttle WHERE key = ? AND failures > 0",
                (f"user:{username}",),
            )
            if n:
                await _login_event(tx, self.clock(), username, "", "unlocked")
        return n > 0

    async def create_token(
        self, username: str, name: str, *, kind: str = "api", ttl: float | None = None
    ) -> str:
        """A new secret token for ``username``; shown once, only its hash is stored."""
        await self.principal(username)
        token = f"cdr_{secrets.token_urlsafe(32)}"
        now = self.clock()
        record = TokenRecord(
            _token_hash(token), username, name, kind, now, None if ttl is None else now + ttl, 0
        )
        async with self.store.tx() as tx:
            await repo.insert_token(tx, record)
        return token

    async def authenticate(self, token: str) -> Principal:
        async with self.store.tx() as tx:
            record = await repo.get_token(tx, _token_hash(token))
        if record is None or record.revoked:
            raise AuthError("unknown or revoked token", hint="create one: codara tokens create")
        if record.expires_at is not None and record.expires_at <= self.clock():
            raise AuthError("the token has expired", hint="log in again")
        return await self.principal(record.username)

    async def revoke(self, token: str) -> None:
        async with self.store.tx() as tx:
            await tx.execute(
                "UPDATE codara_tokens SET revoked = 1 WHERE token_hash = ?", (_token_hash(token),)
            )
