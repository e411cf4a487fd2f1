"""The console's pages: log in, my queue, a review item, runs (server-rendered, Jinja2 + htmx).

Who is asking comes from the API's middleware (the identity in the ASGI scope). Every POST is
deliberate: it needs the session's CSRF token (hidden field or ``X-CSRF-Token`` header), and no
GET ever records a decision. After a decision the reviewer lands on the next open item.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from codara.auth import AuthError, LoginThrottledError, Users
from codara.auth._web import (
    CSRF_FIELD,
    CSRF_HEADER,
    SCOPE_KEY,
    SESSION_COOKIE,
    SESSION_TTL,
    WebIdentity,
    check_csrf,
    end_session,
    identity_in,
    start_session,
)
from codara.engine import App
from codara.errors import ConflictError, InputError, NotFoundError
from codara.review import PURPOSE_MAX, ForbiddenError, ReviewItem, Reviews

from ._view import DONE, holder, journal_rows, register_filters, safe_next, sort_by_deadline

__all__ = ["error_page", "router", "templates"]

templates = Jinja2Templates(directory=str(FilePath(__file__).parent / "templates"))
register_filters(templates.env)
router = APIRouter(include_in_schema=False)
_ID = r"^[A-Za-z0-9_-]{1,64}$"
ReviewId = Annotated[str, Path(pattern=_ID)]
RunId = Annotated[str, Path(pattern=_ID)]
RUN_STATUSES = (
    "queued",
    "running",
    "sleeping",
    "waiting",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
)
_OPEN = ("pending", "claimed")


def _app(request: Request) -> App:
    app: App = request.app.state.codara
    return app


def _identity(request: Request) -> WebIdentity:
    return identity_in(request.scope)


async def _checked(request: Request) -> WebIdentity:
    """The caller of a state-changing console request, once its CSRF token checks out."""
    identity = identity_in(request.scope)
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    check_csrf(identity, given)
    return identity


def _operator(identity: Annotated[WebIdentity, Depends(_identity)]) -> WebIdentity:
    if not identity.principal.is_operator:
        raise ForbiddenError(
            f"{identity.principal.username} may not see runs: it needs role operator or admin"
        )
    return identity


Me = Annotated[WebIdentity, Depends(_identity)]
Checked = Annotated[WebIdentity, Depends(_checked)]
Operator = Annotated[WebIdentity, Depends(_operator)]
OptText = Annotated[str | None, Form(max_length=4000)]


def _render(request: Request, name: str, code: int = 200, **context: Any) -> Response:
    app = _app(request)
    context.setdefault("identity", request.scope.get(SCOPE_KEY))
    context.setdefault("now", app.clock())
    done = request.query_params.get("done")
    if done in DONE:
        n = request.query_params.get("n", "")
        context.setdefault("flash", DONE[done].format(n=n if n.isdigit() else "some"))
    response = templates.TemplateResponse(request, name, context, status_code=code)
    if request.method == "GET" and request.headers.get("hx-request"):
        response.headers["HX-Push-Url"] = str(request.url.path) + (
            f"?{request.url.query}" if request.url.query else ""
        )
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, status: int, message: str, hint: str | None) -> Response:
    """An HTML error page for console paths (the app's error handlers call it)."""
    return _render(request, "error.html", status, status=status, message=message, hint=hint)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- signing in --------------------------------------------------------------------------------
@router.get("/login")
async def login_page(request: Request, next: str = "/queue") -> Response:
    return _render(request, "login.html", identity=None, next=safe_next(next))


@router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/queue",
) -> Response:
    origin = request.headers.get("origin")
    # "null" is what a sandboxed iframe (or a redirect chain) sends: another site could log
    # the victim in as the attacker through it, so it is refused like any foreign origin.
    if origin and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host")):
        raise ForbiddenError("a login from another site is refused")
    app = _app(request)
    try:
        address = request.client.host if request.client else ""
        _, token = await start_session(
            Users(app.store, app.clock), username, password, address=address
        )
    except LoginThrottledError as exc:
        response = _render(
            request, "login.html", 429, identity=None, next=safe_next(next),
            username=username, error=exc.message,
        )  # fmt: skip
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
    except AuthError as exc:
        return _render(
            request, "login.html", 401, identity=None, next=safe_next(next),
            username=username, error=exc.message,
        )  # fmt: skip
    previous = request.cookies.get(SESSION_COOKIE)
    if previous and previous != token:  # one browser, one session: end the one it had
        await Users(app.store, app.clock).revoke(previous)
    response = _see_other(safe_next(next))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=int(SESSION_TTL), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request, identity: Checked) -> Response:
    app = _app(request)
    await end_session(Users(app.store, app.clock), identity)
    response = _see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
async def home(_: Me) -> Response:
    return _see_other("/queue")


# -- my queue ----------------------------------------------------------------------------------
@router.get("/queue")
async def queue(
    request: Request,
    identity: Me,
    role: Annotated[str | None, Query(pattern=r"^[a-z0-9_-]{0,50}$")] = None,
    status: str = "open",
) -> Response:
    who = identity.principal
    reviews = Reviews.of(_app(request))
    status = status if status in ("open", "pending", "claimed", "decided") else "open"
    role = role or None
    counts = await reviews.counts(who)
    items = await reviews.queue(who, status=status, role=role, limit=200)
    roles = sorted({c["role"] for c in counts} | (set() if who.is_operator else set(who.roles)))
    return _render(
        request, "queue.html", items=sort_by_deadline(items), counts=counts, roles=roles,
        role=role, status=status,
    )  # fmt: skip


@router.post("/queue/bulk-approve")
async def bulk_approve(
    request: Request,
    identity: Checked,
    ids: Annotated[list[str], Form()] = [],  # noqa: B006
) -> Response:
    who = identity.principal
    reviews = Reviews.of(_app(request))
    chosen = list(dict.fromkeys(ids))[:200]
    if any(not re.fullmatch(_ID, i) for i in chosen):
        raise InputError("malformed review id in the selection")
    if not chosen:
        raise InputError("select at least one low-risk item", hint="tick the boxes first")
    for review_id in chosen:  # check every one before deciding any
        if not (await reviews.get(who, review_id)).low_risk:
            raise InputError(f"review {review_id} is not marked low-risk; decide it on its own")
    await reviews.bulk_approve(who, chosen)
    return _see_other("/queue?" + urlencode({"done": "bulk", "n": len(chosen)}))


# -- one review item ---------------------------------------------------------------------------
async def _item_page(
    request: Request, identity: WebIdentity, review_id: str, status: int = 200, **extra: Any
) -> Response:
    app = _app(request)
    who = identity.principal
    reviews = Reviews.of(app)
    item = await reviews.get(who, review_id)
    history = await reviews.history(who, review_id)
    journal = await app.journal(item.run_id)
    ids = [i.id for i in sort_by_deadline(await reviews.queue(who, limit=200))]
    at = ids.index(review_id) if review_id in ids else -1
    prev_id = ids[at - 1] if at > 0 else None
    next_id = ids[at + 1] if 0 <= at < len(ids) - 1 else (ids[0] if at < 0 and ids else None)
    may_decide = item.status in _OPEN and _may_act(identity, item, app.clock())
    extra.setdefault("proposal_text", json.dumps(item.proposal, indent=2, ensure_ascii=False))
    extra.setdefault("revealable", await reviews.revealable(who, review_id))
    return _render(
        request, "item.html", status, item=item, history=history,
        journal=journal_rows(journal), prev_id=prev_id, next_id=next_id,
        may_decide=may_decide, held_by=holder(item, app.clock()), **extra,
    )  # fmt: skip


async def _after_decision(request: Request, identity: WebIdentity, done: str) -> Response:
    app = _app(request)
    items = sort_by_deadline(await Reviews.of(app).queue(identity.principal))
    now = app.clock()
    mine = [i for i in items if _may_act(identity, i, now)]
    if mine:
        return _see_other(f"/reviews/{mine[0].id}?done={done}")
    return _see_other(f"/queue?done={done}")


def _may_act(identity: WebIdentity, item: ReviewItem, now: float) -> bool:
    who = identity.principal
    return (
        who.may_decide(item.role)
        and holder(item, now) in (None, who.username)
        and item.initiator != who.username
        and who.username not in item.approvals
    )


@router.get("/reviews/{review_id}")
async def item_page(request: Request, identity: Me, review_id: ReviewId) -> Response:
    return await _item_page(request, identity, review_id)


async def _decide(
    request: Request,
    identity: WebIdentity,
    review_id: str,
    done: str,
    action: Callable[[], Awaitable[object]],
    **form: Any,
) -> Response:
    try:
        await action()
    except (ConflictError, InputError) as exc:
        return await _item_page(
            request, identity, review_id, exc.http_status, error=exc.message, hint=exc.hint,
            **form,
        )  # fmt: skip
    return await _after_decision(request, identity, done)


@router.post("/reviews/{review_id}/approve")
async def approve(
    request: Request, identity: Checked, review_id: ReviewId,
    comment: OptText = None, version: Annotated[int | None, Form(ge=0)] = None,
) -> Response:  # fmt: skip
    reviews = Reviews.of(_app(request))
    return await _decide(
        request, identity, review_id, "approved",
        lambda: reviews.approve(identity.principal, review_id, comment=comment, version=version),
    )  # fmt: skip


@router.post("/reviews/{review_id}/edit")
async def edit(
    request: Request, identity: Checked, review_id: ReviewId,
    proposal: Annotated[str, Form(max_length=100_000)],
    comment: OptText = None, version: Annotated[int | None, Form(ge=0)] = None,
) -> Response:  # fmt: skip
    try:
        value = json.loads(proposal)
    except (ValueError, RecursionError) as exc:
        return await _item_page(
            request, identity, review_id, 422, proposal_text=proposal, edit_open=True,
            error=f"the edited proposal is not valid JSON: {exc}",
            hint="keep the quotes, commas and braces of the original",
        )  # fmt: skip
    reviews = Reviews.of(_app(request))
    return await _decide(
        request, identity, review_id, "edited",
        lambda: reviews.edit(identity.principal, review_id, value, comment=comment,
                             version=version),
        proposal_text=proposal, edit_open=True,
    )  # fmt: skip


@router.post("/reviews/{review_id}/reject")
async def reject(
    request: Request, identity: Checked, review_id: ReviewId,
    reason_code: Annotated[str, Form(min_length=1, max_length=100)],
    comment: OptText = None, version: Annotated[int | None, Form(ge=0)] = None,
) -> Response:  # fmt: skip
    reviews = Reviews.of(_app(request))
    return await _decide(
        request, identity, review_id, "rejected",
        lambda: reviews.reject(identity.principal, review_id, reason_code, comment=comment,
                               version=version),
        reject_open=True,
    )  # fmt: skip


@router.post("/reviews/{review_id}/reveal")
async def reveal(
    request: Request, identity: Checked, review_id: ReviewId,
    token: Annotated[str, Form(min_length=1, max_length=100)],
    purpose: Annotated[str, Form(max_length=PURPOSE_MAX)] = "",
) -> Response:  # fmt: skip
    """The item page again, with the original behind ``token`` shown once (no-store)."""
    reviews = Reviews.of(_app(request))
    try:
        shown = await reviews.reveal(identity.principal, review_id, token, purpose=purpose)
    except (ConflictError, InputError, NotFoundError) as exc:
        return await _item_page(
            request, identity, review_id, exc.http_status, error=exc.message, hint=exc.hint
        )
    return await _item_page(request, identity, review_id, revealed=shown)


@router.post("/reviews/{review_id}/claim")
async def claim(request: Request, identity: Checked, review_id: ReviewId) -> Response:
    reviews = Reviews.of(_app(request))
    try:
        await reviews.claim(identity.principal, review_id)
    except ConflictError as exc:
        return await _item_page(request, identity, review_id, 409, error=exc.message)
    return _see_other(f"/reviews/{review_id}?done=claimed")


@router.post("/reviews/{review_id}/unclaim")
async def unclaim(request: Request, identity: Checked, review_id: ReviewId) -> Response:
    reviews = Reviews.of(_app(request))
    try:
        await reviews.unclaim(identity.principal, review_id)
    except ConflictError as exc:
        return await _item_page(request, identity, review_id, 409, error=exc.message)
    return _see_other(f"/reviews/{review_id}?done=unclaimed")


# -- runs (operators) --------------------------------------------------------------------------
@router.get("/runs")
async def runs_page(
    request: Request,
    identity: Operator,
    status: str | None = None,
    workflow: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:@ -]{0,200}$")] = None,
) -> Response:
    status = status if status in RUN_STATUSES else None
    workflow = (workflow or "").strip() or None
    runs = await _app(request).store.list_runs(status=status, workflow=workflow, limit=200)
    counts = await _app(request).store.count_runs()
    return _render(
        request, "runs.html", runs=runs, counts=counts, status=status, workflow=workflow,
        statuses=RUN_STATUSES,
    )  # fmt: skip


@router.get("/runs/{run_id}")
async def run_page(request: Request, identity: Operator, run_id: RunId) -> Response:
    app = _app(request)
    reviews = Reviews.of(app)
    record = await app.get_run(run_id)
    journal = await app.journal(run_id)
    items = [
        *await reviews.queue(identity.principal, status="open", run_id=run_id),
        *await reviews.queue(identity.principal, status="decided", run_id=run_id),
    ]
    return _render(request, "run.html", run=record, journal=journal_rows(journal), reviews=items)


@router.post("/runs/{run_id}/cancel")
async def cancel_run(request: Request, identity: Checked, run_id: RunId) -> Response:
    _operator(identity)
    await _app(request).cancel(run_id)
    return _see_other(f"/runs/{run_id}?done=cancelled")
