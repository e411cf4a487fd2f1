"""The REST API under ``/api``: runs, reviews, signals and the caller.

Every route takes the caller as a :class:`~codara.review.Principal`; the review service decides
what each one may see and do, the run routes need role ``operator`` or ``admin``. Errors are
``{"error": {"code", "message", "hint"}}`` with the status of the Codara error: 400 (a body that
is not JSON), 401, 403, 404, 409 (the state changed: decided, claimed, finished), 422 (bad
input, or a rule no schema can state: each route's ``responses=`` says which).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, Field

from codara.api._auth import OPERATOR, codara_app, current_identity, current_principal
from codara.auth._web import WebIdentity
from codara.engine import App, check_signal_name
from codara.errors import InputError, PayloadTooLargeError
from codara.privacy import TOKEN
from codara.review import PURPOSE_MAX, Principal, ReviewItem, Reviews
from codara.store import JournalRecord, RunRecord

__all__ = ["MAX_DEPTH", "ErrorOut", "check_json_body", "router"]

_ID = r"^[A-Za-z0-9_-]{1,64}$"
_WORD = r"^[A-Za-z0-9_.:@-]{1,200}$"
_TEXT = r"^[^\x00]*$"
RunId = Annotated[str, Path(pattern=_ID, description="A run's id.")]
ReviewId = Annotated[str, Path(pattern=_ID, description="A review item's id.")]
Comment = Annotated[str | None, Field(max_length=4000, pattern=_TEXT)]
Version = Annotated[
    int | None,
    Field(ge=0, le=2**31, description="The item's version you decided on (409 if it changed)."),
]
RUN_STATUSES = Literal[
    "queued", "running", "sleeping", "waiting", "cancelling", "completed", "failed", "cancelled"
]


# -- models ------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str
    message: str
    hint: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


class ValidationErrorOut(ErrorOut):
    detail: list[dict[str, Any]] = []


class MeOut(BaseModel):
    username: str
    roles: list[str]
    is_operator: bool
    is_admin: bool
    via: Literal["bearer", "session"]


class RunOut(BaseModel):
    id: str
    workflow: str
    version: str
    status: str
    input: Any
    output: Any
    error: Any
    waiting_for: str | None
    ready_at: float | None
    attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None


class JournalRowOut(BaseModel):
    seq: int
    op: int
    kind: str
    name: str
    status: str
    input: Any
    output: Any
    error: Any
    started_at: float
    finished_at: float
    attempts: int
    hash: str


class RunListOut(BaseModel):
    runs: list[RunOut]


class RunDetailOut(BaseModel):
    run: RunOut
    journal: list[JournalRowOut]
    reviews: list[ReviewItem]


class StartRunIn(BaseModel):
    workflow: str = Field(pattern=_WORD, description="The workflow's name.")
    input: Any = Field(default=None, description="The run's input (JSON).")
    key: str | None = Field(
        default=None, pattern=_WORD, description="Idempotency key: the same key, the same run."
    )


class SignalIn(BaseModel):
    payload: Any = None


class SignalOut(BaseModel):
    run_id: str
    signal: str
    status: str


class ReviewListOut(BaseModel):
    items: list[ReviewItem]


class QueueCountOut(BaseModel):
    role: str
    open: int
    next_due_at: float | None = Field(description="The nearest (oldest) deadline in the queue.")
    oldest_created_at: float


class CountsOut(BaseModel):
    queues: list[QueueCountOut]


class HistoryEntryOut(BaseModel):
    actor: str
    action: str
    detail: Any
    at: float


class ReviewDetailOut(BaseModel):
    item: ReviewItem
    history: list[HistoryEntryOut]
    journal: list[JournalRowOut] = Field(description="The run's trace, one row per operation.")


class ClaimIn(BaseModel):
    ttl: float = Field(default=900.0, ge=10.0, le=86_400.0, description="Seconds to hold it.")


class DelegateIn(BaseModel):
    to: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,100}$", description="A user with its role.")


class ApproveIn(BaseModel):
    comment: Comment = None
    version: Version = None


class EditIn(ApproveIn):
    proposal: Any = Field(description="The corrected proposal, of the original's shape.")


class RejectIn(ApproveIn):
    reason_code: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="A coded reason.")


class RevealIn(BaseModel):
    token: str = Field(
        pattern=f"^{TOKEN.pattern}$", description="A token the item shows: <card:cf5b63d5ab01>."
    )
    purpose: str = Field(
        max_length=PURPOSE_MAX,
        pattern=r"^[^\x00]*\S[^\x00]*$",
        description="Why you need the original (kept with the reveal).",
    )


class RevealOut(BaseModel):
    token: str
    kind: str
    value: str = Field(description="The original: shown to you, stored and logged nowhere.")


class BulkApproveIn(BaseModel):
    ids: list[Annotated[str, Field(pattern=_ID)]] = Field(min_length=1, max_length=100)


# -- hostile input -----------------------------------------------------------------------------
MAX_DEPTH = 100
"""Deepest nesting of lists and objects a JSON body may have."""
_HINT = "send UTF-8 JSON with finite numbers and whole characters (no lone surrogates)"


class _NonFinite(ValueError):
    pass


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _no_constant(text: str) -> float:
    raise _NonFinite(text)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _where(path: list[str | int]) -> str:
    return ".".join(str(p) for p in path) or "body"


def check_json_body(data: bytes) -> None:
    """Refuse (InputError, 422) a JSON body that is not strict UTF-8 JSON: invalid UTF-8, lone
    surrogates (in strings or keys), non-finite numbers (``NaN``, ``Infinity``, ``1e999``),
    nesting deeper than MAX_DEPTH. The message names the field. Nothing is echoed raw."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the body is not valid UTF-8 (byte {exc.start})", hint=_HINT) from None
    if not text.strip():
        return
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except _NonFinite:
        value = json.loads(text)  # the same text parses: find the field for the message
        where = _find(value, lambda v: isinstance(v, float) and not math.isfinite(v))
        raise InputError(
            f"{_where(where or [])}: a non-finite number (NaN or infinity) is not allowed",
            hint=_HINT,
        ) from None
    except RecursionError:
        raise InputError(f"the body is nested deeper than {MAX_DEPTH} levels", hint=_HINT) from None
    except ValueError:
        return  # not JSON at all: FastAPI answers 422 for it
    _check_value(value)


def _find(value: Any, bad: Any) -> list[str | int] | None:
    """The path to the first value (or key) for which ``bad`` is true, iteratively."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if bad(v):
            return path
        if isinstance(v, dict):
            for k, item in v.items():
                if bad(k):
                    return [*path, k.encode("utf-8", "backslashreplace").decode()]
                stack.append((item, [*path, k]))
        elif isinstance(v, list):
            stack.extend((item, [*path, i]) for i, item in enumerate(v))
    return None


def _check_value(value: Any) -> None:
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        v, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise InputError(f"the body is nested deeper than {MAX_DEPTH} levels", hint=_HINT)
        if isinstance(v, str):
            if _has_surrogate(v):
                raise InputError(
                    f"{_where(path)}: a lone surrogate (half a UTF-16 pair) is not a character",
                    hint=_HINT,
                )
        elif isinstance(v, dict):
            for k, item in v.items():
                if _has_surrogate(k):
                    shown = k.encode("utf-8", "backslashreplace").decode()
                    raise InputError(
                        f"{_where([*path, shown])}: a lone surrogate in a key is not allowed",
                        hint=_HINT,
                    )
                stack.append((item, [*path, k]))
        elif isinstance(v, list):
            stack.extend((item, [*path, i]) for i, item in enumerate(v))


# -- helpers -----------------------------------------------------------------------------------
def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_out(r: RunRecord) -> RunOut:
    return RunOut(
        id=r.id, workflow=r.workflow, version=r.version, status=r.status,
        input=_decoded(r.input), output=_decoded(r.output), error=_decoded(r.error),
        waiting_for=r.waiting_for, ready_at=r.ready_at, attempts=r.attempts,
        created_at=r.created_at, updated_at=r.updated_at, finished_at=r.finished_at,
    )  # fmt: skip


def journal_out(j: JournalRecord) -> JournalRowOut:
    return JournalRowOut(
        seq=j.seq, op=j.op, kind=j.kind, name=j.name, status=j.status,
        input=_decoded(j.input), output=_decoded(j.output), error=_decoded(j.error),
        started_at=j.started_at, finished_at=j.finished_at, attempts=j.attempts, hash=j.hash,
    )  # fmt: skip


def _reviews(app: Annotated[App, Depends(codara_app)]) -> Reviews:
    return Reviews.of(app)


Who = Annotated[Principal, Depends(current_principal)]
Operator = Annotated[Principal, Depends(OPERATOR)]
TheApp = Annotated[App, Depends(codara_app)]
TheReviews = Annotated[Reviews, Depends(_reviews)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not parseable (not JSON)."},
    401: {"model": ErrorOut, "description": "No valid token or session."},
    403: {"model": ErrorOut, "description": "Not allowed for your roles."},
    422: {"model": ValidationErrorOut, "description": "Malformed or invalid input."},
}
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "Not found."}}
_409: dict[int | str, dict[str, Any]] = {
    **_404,
    409: {
        "model": ErrorOut,
        "description": "The state changed (decided, claimed, closed, finished).",
    },
}


def _rule(why: str) -> dict[int | str, dict[str, Any]]:
    """A 422 for a schema-valid request that breaks a rule no schema can state."""
    return {
        422: {"model": ValidationErrorOut, "description": f"Malformed or invalid input, or {why}."}
    }


router = APIRouter(prefix="/api", responses=_ERRORS)


# -- the caller --------------------------------------------------------------------------------
@router.get("/me", tags=["auth"])
async def me(identity: Annotated[WebIdentity, Depends(current_identity)]) -> MeOut:
    """Who you are signed in as, and your roles."""
    p = identity.principal
    return MeOut(
        username=p.username, roles=sorted(p.roles), is_operator=p.is_operator,
        is_admin=p.is_admin, via=identity.via,
    )  # fmt: skip


# -- runs (operators) --------------------------------------------------------------------------
@router.get("/runs", tags=["runs"])
async def list_runs(
    _: Operator,
    app: TheApp,
    status: RUN_STATUSES | None = None,
    workflow: Annotated[str | None, Query(pattern=_WORD)] = None,
    before: Annotated[float | None, Query(description="Created before (epoch s).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> RunListOut:
    """The newest runs, optionally of one status or workflow."""
    records = await app.store.list_runs(
        status=status, workflow=workflow, limit=limit, before=before
    )
    return RunListOut(runs=[run_out(r) for r in records])


@router.post(
    "/runs",
    status_code=201,
    tags=["runs"],
    responses={**_404, **_rule("the input does not fit the workflow's input type")},
)
async def start_run(who: Operator, app: TheApp, body: StartRunIn) -> RunOut:
    """Start a run of the latest version of a workflow (you are its initiator)."""
    run_id = await app.start_run(body.workflow, body.input, key=body.key, started_by=who.username)
    return run_out(await app.get_run(run_id))


@router.get("/runs/{run_id}", tags=["runs"], responses=_404)
async def get_run(who: Operator, app: TheApp, reviews: TheReviews, run_id: RunId) -> RunDetailOut:
    """A run with its journal (the trace) and its review items."""
    record = await app.get_run(run_id)
    journal = await app.journal(run_id)
    items = [
        *await reviews.queue(who, status="open", run_id=run_id),
        *await reviews.queue(who, status="decided", run_id=run_id),
        *await reviews.queue(who, status="closed", run_id=run_id),
    ]
    return RunDetailOut(
        run=run_out(record), journal=[journal_out(j) for j in journal], reviews=items
    )


@router.post("/runs/{run_id}/cancel", tags=["runs"], responses=_409)
async def cancel_run(_: Operator, app: TheApp, run_id: RunId) -> RunOut:
    """Cancel a run that has not finished."""
    await app.cancel(run_id)
    return run_out(await app.get_run(run_id))


@router.post("/runs/{run_id}/signals/{name}", tags=["runs"], responses=_409)
async def send_signal(
    _: Operator,
    app: TheApp,
    run_id: RunId,
    name: Annotated[str, Path(pattern=_WORD, description="The signal the run waits for.")],
    body: Annotated[SignalIn | None, Body()] = None,
) -> SignalOut:
    """Send a signal to a run; a run waiting for it is queued for a worker."""
    check_signal_name(name)  # review:<id> and other reserved names: 403 reserved_signal
    payload = body.payload if body else None
    limit = app.settings.server.max_signal_payload_bytes
    size = len(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
    if size > limit:
        raise PayloadTooLargeError(
            f"the signal payload is {size} bytes; the limit is {limit}",
            hint="send a reference (an id, a URL) instead of the data, or raise "
            "[server] max_signal_payload_bytes",
        )
    await app.send_signal(run_id, name, payload)
    record = await app.get_run(run_id)
    return SignalOut(run_id=run_id, signal=name, status=record.status)


# -- reviews -----------------------------------------------------------------------------------
@router.get("/reviews", tags=["reviews"])
async def list_reviews(
    who: Who,
    reviews: TheReviews,
    status: Literal["open", "pending", "claimed", "decided", "closed"] = "open",
    role: Annotated[str | None, Query(pattern=r"^[a-z0-9_-]{1,50}$")] = None,
    run_id: Annotated[str | None, Query(pattern=_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReviewListOut:
    """Review items you may see (your roles; operators see all), most urgent first."""
    items = await reviews.queue(who, status=status, role=role, run_id=run_id, limit=limit)
    return ReviewListOut(items=items)


@router.get("/reviews/counts", tags=["reviews"])
async def review_counts(who: Who, reviews: TheReviews) -> CountsOut:
    """Open items per queue (role) with the nearest deadline."""
    return CountsOut(queues=[QueueCountOut(**c) for c in await reviews.counts(who)])


@router.post(
    "/reviews/bulk-approve",
    tags=["reviews"],
    responses={**_409, **_rule("an item is not marked low-risk")},
)
async def bulk_approve(who: Who, reviews: TheReviews, body: BulkApproveIn) -> ReviewListOut:
    """Approve several items a policy marked low-risk (all are checked before any is decided)."""
    ids = list(dict.fromkeys(body.ids))
    for review_id in ids:
        if not (await reviews.get(who, review_id)).low_risk:
            raise InputError(
                f"review {review_id} is not marked low-risk; decide it on its own",
                hint="bulk approval is for items a policy marks low_risk",
            )
    return ReviewListOut(items=await reviews.bulk_approve(who, ids))


@router.get("/reviews/{review_id}", tags=["reviews"], responses=_404)
async def get_review(
    who: Who, app: TheApp, reviews: TheReviews, review_id: ReviewId
) -> ReviewDetailOut:
    """A review item with its history and the run's trace."""
    item = await reviews.get(who, review_id)
    history = await reviews.history(who, review_id)
    journal = await app.journal(item.run_id)
    return ReviewDetailOut(
        item=item,
        history=[HistoryEntryOut(**h) for h in history],
        journal=[journal_out(j) for j in journal],
    )


@router.post("/reviews/{review_id}/claim", tags=["reviews"], responses=_409)
async def claim(
    who: Who,
    reviews: TheReviews,
    review_id: ReviewId,
    body: Annotated[ClaimIn | None, Body()] = None,
) -> ReviewItem:
    """Reserve the item for yourself for ``ttl`` seconds so colleagues skip it."""
    return await reviews.claim(who, review_id, ttl=(body or ClaimIn()).ttl)


@router.post("/reviews/{review_id}/unclaim", tags=["reviews"], responses=_409)
async def unclaim(who: Who, reviews: TheReviews, review_id: ReviewId) -> ReviewItem:
    """Give the item back to the queue."""
    return await reviews.unclaim(who, review_id)


@router.post(
    "/reviews/{review_id}/delegate",
    tags=["reviews"],
    responses={**_409, **_rule("`to` is not an active user with the item's role")},
)
async def delegate(
    who: Who, reviews: TheReviews, review_id: ReviewId, body: DelegateIn
) -> ReviewItem:
    """Hand the item to another user who holds its role."""
    return await reviews.delegate(who, review_id, body.to)


@router.post("/reviews/{review_id}/approve", tags=["reviews"], responses=_409)
async def approve(
    who: Who,
    reviews: TheReviews,
    review_id: ReviewId,
    body: Annotated[ApproveIn | None, Body()] = None,
) -> ReviewItem:
    """Approve the proposal as it is; the waiting run resumes."""
    b = body or ApproveIn()
    return await reviews.approve(who, review_id, comment=b.comment, version=b.version)


@router.post(
    "/reviews/{review_id}/edit",
    tags=["reviews"],
    responses={**_409, **_rule("the proposal does not fit the original's schema")},
)
async def edit(who: Who, reviews: TheReviews, review_id: ReviewId, body: EditIn) -> ReviewItem:
    """Approve a corrected proposal (checked against the original's schema)."""
    return await reviews.edit(
        who, review_id, body.proposal, comment=body.comment, version=body.version
    )


@router.post(
    "/reviews/{review_id}/reject",
    tags=["reviews"],
    responses={**_409, **_rule("the reason is not one the policy lists")},
)
async def reject(who: Who, reviews: TheReviews, review_id: ReviewId, body: RejectIn) -> ReviewItem:
    """Reject the proposal with a coded reason and an optional comment."""
    return await reviews.reject(
        who, review_id, body.reason_code, comment=body.comment, version=body.version
    )


@router.post(
    "/reviews/{review_id}/reveal",
    tags=["reviews"],
    responses=_409,
)
async def reveal(who: Who, reviews: TheReviews, review_id: ReviewId, body: RevealIn) -> RevealOut:
    """The original behind a token of an open item you may decide, if ``[privacy] reveal``
    lets one of your roles see its kind. Recorded in the item's history (who, which token,
    why) and in ``codara_unmask_events``; 404 when the original was erased."""
    shown = await reviews.reveal(who, review_id, body.token, purpose=body.purpose)
    return RevealOut(token=shown.token, kind=shown.kind, value=shown.value)
