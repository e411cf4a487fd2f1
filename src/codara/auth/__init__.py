"""Users, roles, API tokens and console sessions: authentication that works self-hosted.

Passwords are hashed with scrypt (standard library); tokens are random 32-byte secrets of
which only the SHA-256 is stored. Roles: ``admin`` (everything), ``operator`` (runs and all
queues), and the reviewer roles that policies name (``fraud``, ``support``, ...).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Sequence

from codara.errors import InputError, UserError
from codara.review import Principal
from codara.store import Store, TokenRecord
from codara.store import reviews as repo

__all__ = ["AuthError", "Users", "hash_password", "verify_password"]

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_ROLE = re.compile(r"^[a-z0-9_-]{1,50}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class AuthError(UserError):
    code = "unauthenticated"
    http_status = 401
    exit_code = 15


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, digest = stored.split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(got.hex(), digest)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

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
        hashed = hash_password(password) if password is not None else None
        async with self.store.tx() as tx:
            await repo.upsert_user(tx, username, hashed, ",".join(sorted(set(roles))), self.clock())

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

    async def login(self, username: str, password: str) -> Principal:
        if not _NAME.match(username):
            raise AuthError("wrong user name or password")
        async with self.store.tx() as tx:
            user = await repo.get_user(tx, username)
        if user is None or user.disabled or not verify_password(password, user.password_hash):
            raise AuthError("wrong user name or password")
        return Principal(user.username, frozenset(user.roles.split(",")))

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
