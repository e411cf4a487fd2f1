"""``codara review list|show|claim|unclaim|reveal|approve|edit|reject``: the queue in a terminal.

The CLI reaches the database directly, so it is trusted like an operator console: it acts as
the user named by ``--user`` (or ``CODARA_USER``), who must exist in ``codara_users`` and is
held to that user's roles. Every command goes through :class:`~codara.review.Reviews`, the
service the API uses, so the rules are the same: optimistic concurrency (of two people
deciding the same item one wins, the other gets exit 12), roles (exit 14), four-eyes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from codara.errors import ConflictError, InputError, NotFoundError, UserError

from ._loader import Options, open_app, options, parse_json
from ._output import (
    err_console,
    fmt_time,
    guard,
    out_console,
    print_json,
    status_text,
    truncate,
)

if TYPE_CHECKING:  # the review layer (and its CEL policies) loads when a command runs
    from rich.table import Table

    from codara.engine import App
    from codara.review import Principal, Revealed, ReviewItem, Reviews

__all__ = ["USER_ENV", "acting_user", "review_app"]

T = TypeVar("T")
USER_ENV = "CODARA_USER"
STATUSES = ("open", "decided", "pending", "claimed", "closed")

review_app = typer.Typer(
    help="The review queue: list, show, claim and decide items (as --user / CODARA_USER).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ReviewIdArg = Annotated[str, typer.Argument(help="The review's id (see `codara review list`).")]
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user",
        "-u",
        envvar=USER_ENV,
        show_envvar=True,
        help="Act as this user (must exist in codara_users; its roles apply).",
    ),
]
CommentOpt = Annotated[
    str | None, typer.Option("--comment", "-m", help="A note kept with the decision.")
]
VersionOpt = Annotated[
    int | None,
    typer.Option(
        "--expect-version",
        min=0,
        help="Refuse (exit 12) unless the item is still at this version (as shown by "
        "`review show`): you decide on exactly what you looked at.",
    ),
]


# -- acting as a user --------------------------------------------------------------------------
def _username(user: str | None, doing: str) -> str:
    name = (user or "").strip()
    if not name:
        raise UserError(
            f"no user to act as: {doing}",
            hint=f"pass --user NAME or set {USER_ENV}=NAME",
        )
    return name


async def acting_user(
    app: App, user: str | None, *, doing: str = "review commands act as a user of this Codara"
) -> Principal:
    """The principal ``user`` (--user / CODARA_USER) stands for, with its roles; ``doing``
    says why a user is needed when none is given."""
    from codara.auth import AuthError, Users

    name = _username(user, doing)
    try:
        return await Users(app.store, app.clock).principal(name)
    except AuthError:
        raise AuthError(
            f"no active user {name!r} in {app.store.url_redacted}",
            hint=f"check --user / {USER_ENV}, or have an admin add the user with its roles "
            "(`codara users add`)",
        ) from None


@asynccontextmanager
async def _session(opts: Options, user: str | None) -> AsyncIterator[tuple[Reviews, Principal]]:
    """The review service on the CLI's store, and the principal ``user`` stands for."""
    from codara.review import Reviews

    async with open_app(opts, workflows=False) as app:
        who = await acting_user(app, user)
        yield Reviews.of(app), who


def _run(opts: Options, review_id: str | None, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``body`` under :func:`guard`, giving the service's errors review-specific hints."""
    import asyncio

    def call() -> T:
        try:
            return asyncio.run(body())
        except NotFoundError as exc:
            if review_id is not None and exc.message.startswith("no review"):
                exc.hint = exc.hint or "list open reviews with `codara review list`"
            raise
        except ConflictError as exc:
            if review_id is not None:
                exc.hint = exc.hint or f"see its current state: `codara review show {review_id}`"
            raise

    return guard(opts.json, call)


# -- formatting --------------------------------------------------------------------------------
def _item_dict(item: ReviewItem) -> dict[str, Any]:
    return item.model_dump(mode="json")


def _due(due_at: float | None, now: float) -> str:
    if due_at is None:
        return "-"
    left = due_at - now
    span = abs(left)
    if span < 120:
        amount = f"{span:.0f} s"
    elif span < 7200:
        amount = f"{span / 60:.0f} min"
    elif span < 172_800:
        amount = f"{span / 3600:.1f} h"
    else:
        amount = f"{span / 86400:.1f} d"
    return f"{fmt_time(due_at)} ({'in ' + amount if left >= 0 else 'overdue by ' + amount})"


def _holder(item: ReviewItem, now: float) -> str | None:
    if item.status != "claimed" or item.assignee is None:
        return None
    if item.claim_expires_at is not None and item.claim_expires_at <= now:
        return None
    return item.assignee


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _queue_table(items: list[ReviewItem], now: float) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for column in ("id", "status", "role", "prio", "due", "workflow / step", "run", "reason"):
        table.add_column(column, no_wrap=column not in ("reason", "due"))
    for item in items:
        holder = _holder(item, now)
        if item.status == "decided":
            status = Text(f"decided ({item.outcome})", style="green")
        else:
            status = Text(f"claimed by {holder}" if holder else "pending", style="yellow")
        table.add_row(
            item.id,
            status,
            item.role,
            str(item.priority),
            _due(item.due_at, now) if item.status != "decided" else fmt_time(item.decided_at),
            f"{item.workflow} / {item.step}",
            item.run_id,
            truncate(item.reason, 60),
        )
    return table


def _show(item: ReviewItem, history: list[dict[str, Any]], now: float) -> None:
    from rich.table import Table
    from rich.text import Text

    console = out_console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("review", item.id)
    holder = _holder(item, now)
    if item.status == "decided":
        status = Text.assemble(status_text("decided"), f" ({item.outcome})")
    elif holder is not None:
        until = fmt_time(item.claim_expires_at) if item.claim_expires_at else "-"
        status = Text(f"claimed by {holder} until {until}", style="yellow")
    else:
        status = Text("pending", style="yellow")
    grid.add_row("status", status)
    grid.add_row("version", str(item.version))
    grid.add_row(
        "role",
        item.role + (f" (escalated {item.escalation_level}x)" if item.escalation_level else ""),
    )
    grid.add_row("priority", str(item.priority) + ("  low-risk" if item.low_risk else ""))
    grid.add_row("run", f"{item.run_id}  ({item.workflow}, step {item.step})")
    grid.add_row("created", fmt_time(item.created_at))
    if item.status != "decided":
        timeout = item.on_timeout + (f" -> {item.escalate_to}" if item.escalate_to else "")
        grid.add_row("due", f"{_due(item.due_at, now)}; when it passes: {timeout}")
    else:
        grid.add_row("decided", fmt_time(item.decided_at))
    if item.approvals_required > 1:
        got = ", ".join(item.approvals) or "none yet"
        grid.add_row("approvals", f"{len(item.approvals)} of {item.approvals_required} ({got})")
    if item.initiator:
        grid.add_row("started by", f"{item.initiator} (may not decide it)")
    policy = item.policy or "-"
    if item.policy_version:
        policy += f" (version {item.policy_version})"
    grid.add_row("policy", policy)
    grid.add_row("reason", item.reason or "-")
    if item.reject_reasons:
        grid.add_row("reject codes", ", ".join(item.reject_reasons))
    grid.add_row("proposal", _pretty(item.proposal))
    grid.add_row("context", _pretty(item.context))
    if item.result is not None:
        r = item.result
        line = f"{r.outcome} by {', '.join(r.reviewers)}"
        if r.reason_code:
            line += f", reason {r.reason_code}"
        if r.by_deadline:
            line += " (deadline default)"
        grid.add_row("result", line)
        if r.proposal != item.proposal:
            grid.add_row("as decided", _pretty(r.proposal))
        if r.comment:
            grid.add_row("comment", r.comment)
        for change in r.diff:
            before = json.dumps(change.get("before"), ensure_ascii=False, default=str)
            after = json.dumps(change.get("after"), ensure_ascii=False, default=str)
            grid.add_row("changed", f"{change['path']}: {before} -> {after}")
    console.print(grid)
    table = Table(title="history", title_justify="left", header_style="bold")
    for column in ("at", "actor", "action", "detail"):
        table.add_column(column, no_wrap=column != "detail", overflow="fold")
    for event in history:
        detail = event["detail"]
        table.add_row(
            fmt_time(event["at"]),
            event["actor"],
            event["action"],
            "" if detail is None else json.dumps(detail, ensure_ascii=False, default=str),
        )
    console.print(table)


def _report(action: str, item: ReviewItem, as_json: bool) -> None:
    """After an action: the item as JSON, or one line on stderr saying what happens next."""
    from rich.text import Text

    if as_json:
        print_json({"review": _item_dict(item)})
        return
    if item.status == "decided":
        then = f"decided ({item.outcome}); run {item.run_id} resumes"
    elif action == "claim":
        then = f"claimed by {item.assignee} until {fmt_time(item.claim_expires_at)}"
    elif action == "unclaim":
        then = "back in the queue"
    else:
        then = (
            f"{len(item.approvals)} of {item.approvals_required} approvals; it needs another "
            "reviewer of the role"
        )
    err_console().print(Text.assemble(f"review {item.id} ({action}): ", then), soft_wrap=True)


# -- proposals ---------------------------------------------------------------------------------
def _parse_proposal(text: str, what: str) -> Any:
    return parse_json(
        text,
        what,
        hint="give the whole edited proposal as JSON (strings in double quotes); "
        "`codara review show ID --json` prints the current one to start from",
    )


def _read_proposal(path: Path) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(
            f"the proposal file {path} does not exist", hint="check the path"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"the proposal file {path} is not UTF-8 text (byte {exc.start})",
            hint="save it as UTF-8",
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read the proposal file {path}: {exc.strerror or exc}") from None


def _proposal(proposal: str | None, proposal_file: Path | None) -> Any:
    if (proposal is None) == (proposal_file is None):
        raise InputError(
            "give the edited proposal with --proposal JSON or --proposal-file FILE (one of them)",
            hint="`codara review show ID --json` prints the current proposal to start from",
        )
    if proposal is not None:
        return _parse_proposal(proposal, "--proposal")
    assert proposal_file is not None
    where = "the proposal on stdin" if str(proposal_file) == "-" else f"the file {proposal_file}"
    return _parse_proposal(_read_proposal(proposal_file), where)


# -- commands ----------------------------------------------------------------------------------
@review_app.command("list")
def list_command(
    ctx: typer.Context,
    status: Annotated[
        str, typer.Option("--status", "-s", help=f"Which items: {', '.join(STATUSES)}.")
    ] = "open",
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="Only this role's items.")
    ] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run's items.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=10_000, help="At most this many.")
    ] = 100,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the items you may see, most urgent first (priority, then deadline, then age)."""
    opts = options(ctx, json_out)

    async def body() -> list[ReviewItem]:
        if status not in STATUSES:
            raise InputError(
                f"unknown status {status!r}", hint=f"use one of: {', '.join(STATUSES)}"
            )
        async with _session(opts, user) as (reviews, who):
            return await reviews.queue(who, status=status, role=role, run_id=run_id, limit=limit)

    items = _run(opts, None, body)
    if opts.json:
        print_json({"reviews": [_item_dict(i) for i in items]})
    elif not items:
        err_console().print(f"no {status} reviews" + (f" for role {role}" if role else ""))
    else:
        out_console().print(_queue_table(items, time.time()))


@review_app.command("show")
def show_command(
    ctx: typer.Context, review_id: ReviewIdArg, user: UserOpt = None, json_out: JsonOpt = False
) -> None:
    """Show an item: the proposal, its context, the policy and reason, and its history."""
    opts = options(ctx, json_out)

    async def body() -> tuple[ReviewItem, list[dict[str, Any]]]:
        async with _session(opts, user) as (reviews, who):
            item = await reviews.get(who, review_id)
            return item, await reviews.history(who, review_id)

    item, history = _run(opts, review_id, body)
    if opts.json:
        print_json({"review": _item_dict(item), "history": history})
    else:
        _show(item, history, time.time())


@review_app.command("claim")
def claim_command(
    ctx: typer.Context,
    review_id: ReviewIdArg,
    ttl: Annotated[
        float,
        typer.Option("--ttl", min=1, help="Seconds the reservation lasts (colleagues skip it)."),
    ] = 900.0,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reserve an item for yourself for a while, so that colleagues pick other ones."""
    opts = options(ctx, json_out)

    async def body() -> ReviewItem:
        async with _session(opts, user) as (reviews, who):
            return await reviews.claim(who, review_id, ttl=ttl)

    _report("claim", _run(opts, review_id, body), opts.json)


@review_app.command("unclaim")
def unclaim_command(
    ctx: typer.Context, review_id: ReviewIdArg, user: UserOpt = None, json_out: JsonOpt = False
) -> None:
    """Give a claimed item back to the queue."""
    opts = options(ctx, json_out)

    async def body() -> ReviewItem:
        async with _session(opts, user) as (reviews, who):
            return await reviews.unclaim(who, review_id)

    _report("unclaim", _run(opts, review_id, body), opts.json)


@review_app.command("reveal")
def reveal_command(
    ctx: typer.Context,
    review_id: ReviewIdArg,
    token: Annotated[
        str, typer.Argument(help="A token the item shows, like '<card:cf5b63d5ab01>'.")
    ],
    purpose: Annotated[
        str, typer.Option("--purpose", "-p", help="Why you need the original (kept with it).")
    ],
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the original behind a token of an open item you may decide, if [privacy] reveal
    lets one of your roles see its kind. Recorded in the item's history and in
    codara_unmask_events; the value itself is printed here only."""
    opts = options(ctx, json_out)

    async def body() -> Revealed:
        async with _session(opts, user) as (reviews, who):
            return await reviews.reveal(who, review_id, token, purpose=purpose)

    shown = _run(opts, review_id, body)
    if opts.json:
        print_json({"token": shown.token, "kind": shown.kind, "value": shown.value})
    else:
        out_console().print(shown.value, markup=False, highlight=False)
        err_console().print(f"{shown.kind} behind {shown.token}: recorded in the item's history")


@review_app.command("approve")
def approve_command(
    ctx: typer.Context,
    review_id: ReviewIdArg,
    comment: CommentOpt = None,
    expect_version: VersionOpt = None,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve the proposal as it is; the waiting run resumes (four-eyes: once enough approved).

    Exit codes: 0 done, 6 no such review, 12 decided or claimed by someone else meanwhile,
    14 you do not hold the item's role (or started its run), 15 unknown user.
    """
    opts = options(ctx, json_out)

    async def body() -> ReviewItem:
        async with _session(opts, user) as (reviews, who):
            return await reviews.approve(who, review_id, comment=comment, version=expect_version)

    _report("approve", _run(opts, review_id, body), opts.json)


@review_app.command("edit")
def edit_command(
    ctx: typer.Context,
    review_id: ReviewIdArg,
    proposal: Annotated[
        str | None, typer.Option("--proposal", "-p", help="The edited proposal as JSON.")
    ] = None,
    proposal_file: Annotated[
        Path | None,
        typer.Option(
            "--proposal-file", "-f", help="Read the edited proposal (JSON) from a file; - is stdin."
        ),
    ] = None,
    comment: CommentOpt = None,
    expect_version: VersionOpt = None,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Replace the proposal with an edited one (checked against its type) and approve it.

    Exit codes as for approve, and 4 when the JSON is malformed or does not fit the proposal.
    """
    opts = options(ctx, json_out)

    async def body() -> ReviewItem:
        value = _proposal(proposal, proposal_file)  # a bad proposal fails before the store opens
        async with _session(opts, user) as (reviews, who):
            return await reviews.edit(
                who, review_id, value, comment=comment, version=expect_version
            )

    _report("edit", _run(opts, review_id, body), opts.json)


@review_app.command("reject")
def reject_command(
    ctx: typer.Context,
    review_id: ReviewIdArg,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", "-r", help="A coded reason (the workflow's reject_reasons, see show)."
        ),
    ],
    comment: CommentOpt = None,
    expect_version: VersionOpt = None,
    user: UserOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reject the proposal with a coded reason; the waiting run resumes and does not act."""
    opts = options(ctx, json_out)

    async def body() -> ReviewItem:
        async with _session(opts, user) as (reviews, who):
            return await reviews.reject(
                who, review_id, reason, comment=comment, version=expect_version
            )

    _report("reject", _run(opts, review_id, body), opts.json)
