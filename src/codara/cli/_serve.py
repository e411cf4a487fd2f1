"""``codara serve`` (REST API and console), ``codara users ...`` and ``codara tokens ...``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from codara.errors import InputError

from ._loader import load_cli_settings, open_app, options
from ._output import err_console, guard, log_to_stderr, out_console, print_json

if TYPE_CHECKING:  # the server, the engine and the accounts load in the command that uses them
    from fastapi import FastAPI

    from codara.auth import Users
    from codara.engine import App, Client

__all__ = ["serve_command", "tokens_app", "users_app"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

users_app = typer.Typer(
    help="Manage the users of the console and the API, and their roles.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
tokens_app = typer.Typer(
    help="Create and revoke API tokens.", no_args_is_help=True, rich_markup_mode=None
)


# -- codara serve ------------------------------------------------------------------------------
def run_server(api: FastAPI, host: str, port: int, log_level: str) -> None:
    """Serve ``api`` with uvicorn until SIGTERM or Ctrl-C (tests replace this)."""
    import uvicorn

    # Forwarded headers are handled by the app itself ([server] trusted_proxies), so that
    # they mean the same under any ASGI server; uvicorn's own handling would apply twice.
    uvicorn.run(api, host=host, port=port, log_level=log_level, proxy_headers=False)


def serve_command(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: all interfaces).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 8000,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Serve the REST API (/api, spec at /openapi.json) and the review console (/).

    Every route except /login, /healthz and /static needs an API token or a console
    session: create users with `codara users add` first. Serving needs only the database
    URL, not the workflow code: it starts the workflows a worker has registered (newest
    version, input checked against its schema). It runs no workflows: start `codara worker`
    too. Refuses an out-of-date schema (exit 9: run `codara db upgrade`).
    """
    import asyncio

    opts = options(ctx)

    def body() -> int:
        level = log_level.lower()
        if level not in ("debug", "info", "warning", "error"):
            raise InputError(
                f"unknown log level {log_level!r}", hint="use debug, info, warning or error"
            )
        from codara.api import create_app  # FastAPI loads only for this command
        from codara.engine import Client
        from codara.store import parse_url

        # A Client, not an App: the server imports no workflow code (review deadlines and
        # other tickers run in workers).
        client = Client(settings=load_cli_settings(opts), migrate="check")
        asyncio.run(_check_store(client))  # fail with exit 8 / 9 before binding the port
        with log_to_stderr(level):
            err_console().print(
                f"codara: serving the API and console on http://{host}:{port}/ "
                f"(store {parse_url(client.settings.store.url).redacted()})"
            )
            run_server(create_app(client), host, port, level)
        return 0

    guard(opts.json, body)


async def _check_store(client: Client) -> None:
    async with client:
        pass


# -- codara users ------------------------------------------------------------------------------
def _users(app: App) -> Users:
    from codara.auth import Users

    return Users(app.store, app.clock)


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user name (letters, digits, _ . @ -).")],
    role: Annotated[
        list[str],
        typer.Option(
            "--role",
            "-r",
            help="A role (repeat for several): admin, operator, or a reviewer role that "
            "policies name (support, finance, ...). Replaces the user's roles.",
        ),
    ],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the console password from the first line of stdin (at least 8 "
            "characters). Without it the user signs in with API tokens only, or keeps the "
            "password it has.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create user NAME, or update its roles (and password)."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> list[str]:
        password = None
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise InputError("no password on stdin", hint="echo 'secret' | codara users add")
        async with open_app(opts, workflows=False, migrate="create-if-empty") as app:
            await _users(app).add(name, role, password=password)
        return sorted(set(role))

    roles = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"username": name, "roles": roles, "password_set": password_stdin})
    else:
        err_console().print(f"user {name} saved with role(s) {', '.join(roles)}")


@users_app.command("list")
def users_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the users and their roles."""
    import asyncio

    from rich.table import Table
    from rich.text import Text

    opts = options(ctx, json_out)

    async def body() -> list[tuple[str, list[str], bool]]:
        async with open_app(opts, workflows=False) as app:
            return await _users(app).list()

    users = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"users": [{"username": u, "roles": r, "disabled": d} for u, r, d in users]})
        return
    if not users:
        err_console().print("no users yet: codara users add NAME --role admin --password-stdin")
        return
    table = Table(header_style="bold")
    for column in ("user", "roles", "state"):
        table.add_column(column)
    for username, roles, disabled in users:
        state = Text("disabled", style="red") if disabled else Text("active", style="green")
        table.add_row(username, ", ".join(roles), state)
    out_console().print(table)


def _set_disabled(ctx: typer.Context, name: str, disabled: bool, json_out: bool) -> None:
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> None:
        async with open_app(opts, workflows=False) as app:
            users = _users(app)
            await (users.disable(name) if disabled else users.enable(name))

    guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"username": name, "disabled": disabled})
    elif disabled:
        err_console().print(f"user {name} disabled; its sessions and tokens are revoked")
    else:
        err_console().print(f"user {name} enabled (create new tokens: codara tokens create)")


UserArg = Annotated[str, typer.Argument(help="The user name.")]


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: UserArg, json_out: JsonOpt = False) -> None:
    """Refuse user NAME from now on and revoke all its sessions and API tokens."""
    _set_disabled(ctx, name, True, json_out)


@users_app.command("enable")
def users_enable(ctx: typer.Context, name: UserArg, json_out: JsonOpt = False) -> None:
    """Let a disabled user in again (its revoked tokens stay revoked)."""
    _set_disabled(ctx, name, False, json_out)


@users_app.command("unlock")
def users_unlock(ctx: typer.Context, name: UserArg, json_out: JsonOpt = False) -> None:
    """End user NAME's login lockout and failure streak now (journaled as `unlocked`)."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> bool:
        async with open_app(opts, workflows=False) as app:
            return await _users(app).unlock(name)

    had = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"username": name, "was_throttled": had})
    elif had:
        err_console().print(f"user {name} unlocked: its failure streak is forgotten")
    else:
        err_console().print(f"user {name} had no failed logins to forget")


# -- codara tokens -----------------------------------------------------------------------------
@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user the token acts as.")],
    name: Annotated[
        str, typer.Option("--name", "-n", help="What the token is for (shown in listings).")
    ] = "api",
    ttl: Annotated[
        float | None,
        typer.Option("--ttl", min=60, help="Seconds until it expires (default: never)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API token for USER and print it (once: only its hash is stored)."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> str:
        async with open_app(opts, workflows=False) as app:
            return await _users(app).create_token(user, name, ttl=ttl)

    token = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"token": token, "user": user, "name": name})
        return
    print(token)
    err_console().print(
        "store it now: it is not shown again. Use it as 'Authorization: Bearer <token>'."
    )


@tokens_app.command("list")
def tokens_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List API tokens and console sessions by id (their secrets are never stored)."""
    import asyncio

    from rich.table import Table
    from rich.text import Text

    opts = options(ctx, json_out)

    async def body() -> list[dict[str, object]]:
        async with open_app(opts, workflows=False) as app:
            return await _users(app).tokens()

    tokens = guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"tokens": tokens})
        return
    table = Table(header_style="bold")
    for column in ("id", "user", "name", "kind", "state"):
        table.add_column(column)
    for t in tokens:
        state = Text("revoked", style="red") if t["revoked"] else Text("active", style="green")
        table.add_row(str(t["id"]), str(t["username"]), str(t["name"]), str(t["kind"]), state)
    out_console().print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token: Annotated[
        str,
        typer.Argument(help="The id `codara tokens list` shows (or the token itself)."),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token (an API token or a console session) at once."""
    import asyncio

    opts = options(ctx, json_out)

    async def body() -> None:
        async with open_app(opts, workflows=False) as app:
            users = _users(app)
            value = token.strip()
            await (users.revoke(value) if value.startswith("cdr_") else users.revoke_id(value))

    guard(opts.json, lambda: asyncio.run(body()))
    if opts.json:
        print_json({"revoked": True})
    else:
        err_console().print("token revoked; requests with it are refused from now on")
