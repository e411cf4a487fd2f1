"""The review queue: create items, list them by role, claim, delegate, decide, apply deadlines.

Every change is one transaction that checks the item's ``version`` (optimistic concurrency):
of two reviewers deciding the same item at once, one wins and the other gets a
:class:`~codara.errors.ConflictError`. A decision stores the result, logs the event with a
snapshot of what the reviewer was shown, and signals the waiting run, all in that transaction,
so the run resumes exactly once whatever crashes in between.

The signal only wakes the run: the gate reads the decision from the item's own record. An
item whose run is finished (cancelled, failed) is *closed*: the sweep closes such items, and
acting on one closes it on the spot and answers :class:`~codara.errors.ConflictError`. A
decision checks the run in its own transaction (the wake-up fails on a finished run), so a
decision racing a cancel is either recorded before the cancel or refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from codara.config import Settings
from codara.engine import REVIEW_SIGNAL_PREFIX, App, Client
from codara.errors import ConflictError, ForbiddenError, InputError, NotFoundError, StoreError
from codara.review._items import Principal, ReviewItem, ReviewResult, diff, validate_edit
from codara.review._reveal import PURPOSE_MAX, Revealed, RevealRules, kind_of, tokens_in
from codara.store import ReviewRecord, Store, Tx
from codara.store import reviews as repo

__all__ = ["ForbiddenError", "Reviews", "reveal_rules", "review_signal"]

log = logging.getLogger("codara.review")

SYSTEM = "system:deadline"
CLOSER = "system:run"
Notify = Callable[[str, ReviewItem], Awaitable[None]]


def review_signal(review_id: str) -> str:
    """The signal that wakes a run when review ``review_id`` is decided (a reserved name)."""
    return f"{REVIEW_SIGNAL_PREFIX}{review_id}"


class _RunFinished(Exception):
    """Raised inside an item's transaction (rolling it back) when its run is finished."""

    def __init__(self, run_status: str) -> None:
        super().__init__(run_status)
        self.run_status = run_status


def _storable(field: str, value: Any) -> None:
    """Refuse (InputError) a value the store cannot keep as strict JSON: lone surrogates in a
    string or key, non-finite numbers. Checked before anything is written."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{field}: a lone surrogate (half a UTF-16 pair) is not a character",
            hint="send whole characters only",
        ) from None
    except ValueError:
        raise InputError(
            f"{field}: a non-finite number (NaN or infinity) is not allowed",
            hint="send finite numbers only",
        ) from None
    except TypeError as exc:
        raise InputError(f"{field}: not JSON data ({exc})", hint="send JSON values") from None


def _closed(review_id: str, run_id: str, run_status: str | None) -> ConflictError:
    return ConflictError(
        f"review {review_id} is closed: its run {run_id} is {run_status or 'gone'} and will "
        "not act on a decision",
        hint=f"nothing to decide; see `codara runs show {run_id}`, and start a new run if "
        "the work is still needed",
    )


def reveal_rules(settings: Settings) -> RevealRules:
    """``[privacy] reveal`` of ``settings``: which roles may reveal which kinds."""
    where = settings.source_file or "the configuration"
    return RevealRules.from_section(settings.section("privacy"), where)


class Reviews:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        notify: Notify | None = None,
        *,
        reveal: RevealRules | None = None,
    ):
        self.store = store
        self.clock = clock
        self.notify = notify
        self.reveal_rules = reveal or RevealRules.none()

    @classmethod
    def of(cls, app: App | Client, notify: Notify | None = None) -> Reviews:
        """The queue of ``app``'s store, with its ``[privacy] reveal`` rules."""
        return cls(app.store, app.clock, notify, reveal=reveal_rules(app.settings))

    # -- reading ---------------------------------------------------------------------------
    async def queue(
        self,
        who: Principal,
        *,
        status: str = "open",
        role: str | None = None,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[ReviewItem]:
        statuses = {"open": ("pending", "claimed"), "decided": ("decided",)}.get(status)
        if statuses is None:
            statuses = (status,)
        roles: list[str] | None = None if who.is_operator else sorted(who.roles)
        if role is not None:
            if not who.may_see(role):
                return []
            roles = [role]
        async with self.store.tx() as tx:
            records = await repo.list_reviews(
                tx, roles=roles, statuses=statuses, run_id=run_id, limit=limit
            )
            items = []
            for r in records:
                try:
                    items.append(await self._item(tx, r))
                except StoreError:
                    raise
                except Exception as exc:  # one unreadable row must not hide the queue
                    log.error("review %s cannot be read, left out of the queue: %s",
                              r.id, type(exc).__name__)  # fmt: skip
            return items

    async def get(self, who: Principal, review_id: str) -> ReviewItem:
        async with self.store.tx() as tx:
            record = await self._visible(tx, who, review_id)
            return await self._item(tx, record)

    async def history(self, who: Principal, review_id: str) -> list[dict[str, Any]]:
        async with self.store.tx() as tx:
            await self._visible(tx, who, review_id)
            return [
                {
                    "actor": e.actor,
                    "action": e.action,
                    "detail": json.loads(e.detail) if e.detail else None,
                    "at": e.at,
                }
                for e in await repo.events(tx, review_id)
            ]

    async def counts(self, who: Principal) -> list[dict[str, Any]]:
        roles = None if who.is_operator else sorted(who.roles)
        async with self.store.tx() as tx:
            rows = await repo.queue_counts(tx, roles)
        return [
            {"role": role, "open": n, "next_due_at": due, "oldest_created_at": oldest}
            for role, n, due, oldest in rows
        ]

    # -- personal data -----------------------------------------------------------------------
    async def revealable(self, who: Principal, review_id: str) -> list[tuple[str, str]]:
        """(token, kind) of the tokens in the item and its run that ``who`` may reveal now:
        none unless the item is open, ``who`` may decide it, and ``[privacy] reveal`` gives
        one of their roles the token's kind."""
        kinds = self.reveal_rules.kinds_for(who)
        if not kinds:
            return []
        async with self.store.tx() as tx:
            r = await self._visible(tx, who, review_id)
        if r.status not in repo.OPEN or not who.may_decide(r.role):
            return []
        return [(t, kind_of(t)) for t in await self._tokens_of(r) if kind_of(t) in kinds]

    async def reveal(self, who: Principal, review_id: str, token: str, *, purpose: str) -> Revealed:
        """The original behind ``token``, for ``who`` deciding review ``review_id``.

        Allowed only for a token that appears in the item or its run, of a kind ``[privacy]
        reveal`` gives one of ``who``'s roles, while the item is open and ``who`` may decide
        it. Recorded, in the transaction that opens the vault entry, in the item's
        hash-chained history (who, which token, why; never the value) and in
        ``codara_unmask_events``. The value is returned, never stored or logged."""
        from codara.engine._privacy import UNMASK_INSERT, VAULT_SELECT, privacy
        from codara.privacy import is_token

        if not is_token(token):  # never echo it: it may be the value itself
            raise InputError(
                "not a token: pass a token as the item shows it, like <card:cf5b63d5ab01>"
            )
        why = " ".join(purpose.split())
        if not why or len(why) > PURPOSE_MAX:
            raise InputError(
                f"say why you need to see it: a purpose of 1 to {PURPOSE_MAX} characters",
                hint="it is kept with the reveal in the item's history",
            )
        shield = privacy()
        why, _ = shield.mask(why)  # a purpose quoting a value keeps its token only
        kind = kind_of(token)
        if kind not in self.reveal_rules.kinds_for(who):
            raise ForbiddenError(
                f"{who.username} may not reveal {kind} values: no role of theirs is allowed to",
                hint="[privacy] reveal in the configuration says which roles may see which kinds "
                "(docs/privacy.md)",
            )
        async with self.store.tx() as tx:
            record = await self._visible(tx, who, review_id)
        if token not in await self._tokens_of(record):
            raise NotFoundError(
                f"{token} does not appear in review {review_id} or its run",
                hint="only the personal values of the item you are deciding can be revealed",
            )
        now = self.clock()
        async with self._acting(review_id) as tx:
            r = await self._open(tx, who, review_id, decide=True)
            rows = await tx.fetchall(VAULT_SELECT.format(marks="?"), (token,))
            if not rows:
                raise NotFoundError(
                    f"the original of {token} is not in the vault: it was erased, or it was "
                    "masked where CODARA_VAULT_KEY was not set",
                    hint="decide on what the item shows, or ask the customer",
                )
            [(_, value)] = shield.open_rows(rows).values()
            await tx.execute(UNMASK_INSERT, (now, who.username, token, kind, r.run_id,
                                             f"review {r.id}: {why}"))  # fmt: skip
            detail = json.dumps({"token": token, "kind": kind, "purpose": why})
            await repo.add_event(tx, r.id, who.username, "reveal", detail, None, now)
        log.info("%s revealed %s in review %s", who.username, token, review_id)
        return Revealed(token, kind, value)

    async def _tokens_of(self, r: ReviewRecord) -> list[str]:
        """The tokens a reviewer of ``r`` is shown: in the item, its run's input and
        journal."""
        run = await self.store.get_run(r.run_id)
        texts = [r.proposal, r.context, r.reason, run.input if run else None]
        for j in await self.store.journal(r.run_id):
            texts += [j.input, j.output, j.error]
        return tokens_in(texts)

    # -- acting ----------------------------------------------------------------------------
    async def claim(self, who: Principal, review_id: str, *, ttl: float = 900.0) -> ReviewItem:
        """Reserve the item for ``who`` for ``ttl`` seconds so colleagues skip it."""
        now = self.clock()
        async with self._acting(review_id) as tx:
            r = await self._open(tx, who, review_id, decide=True)
            if r.initiator is not None and r.initiator == who.username:  # four-eyes
                raise ForbiddenError(
                    f"{who.username} started this run and may not claim or delegate its review",
                    hint="four-eyes: another reviewer of the role must take it",
                )
            holder = self._holder(r, now)
            if holder not in (None, who.username):
                raise ConflictError(
                    f"review {review_id} is claimed by {holder}",
                    hint="pick another item, or ask them to unclaim it",
                )
            await self._update(tx, r, status="claimed", assignee=who.username,
                               claim_expires_at=now + ttl, updated_at=now)  # fmt: skip
            await repo.add_event(tx, r.id, who.username, "claim", None, None, now)
            return await self._item(tx, await self._reload(tx, review_id))

    async def unclaim(self, who: Principal, review_id: str) -> ReviewItem:
        now = self.clock()
        async with self._acting(review_id) as tx:
            r = await self._open(tx, who, review_id, decide=True)
            holder = self._holder(r, now)
            if holder not in (None, who.username) and not who.is_admin:
                raise ConflictError(f"review {review_id} is claimed by {holder}, not by you")
            await self._update(tx, r, status="pending", assignee=None, claim_expires_at=None,
                               updated_at=now)  # fmt: skip
            await repo.add_event(tx, r.id, who.username, "unclaim", None, None, now)
            return await self._item(tx, await self._reload(tx, review_id))

    async def delegate(self, who: Principal, review_id: str, to: str) -> ReviewItem:
        """Hand the item to another user who holds its role."""
        now = self.clock()
        async with self._acting(review_id) as tx:
            r = await self._open(tx, who, review_id, decide=True)
            if r.initiator is not None and r.initiator == who.username:  # four-eyes
                raise ForbiddenError(
                    f"{who.username} started this run and may not claim or delegate its review",
                    hint="four-eyes: another reviewer of the role must take it",
                )
            holder = self._holder(r, now)
            if holder not in (None, who.username) and not who.is_admin:
                raise ConflictError(
                    f"review {review_id} is claimed by {holder}",
                    hint="only the holder (or an admin) may hand it on",
                )
            user = await repo.get_user(tx, to)
            if user is None or user.disabled or r.role not in user.roles.split(","):
                raise InputError(
                    f"cannot delegate to {to!r}: not an active user with role {r.role!r}",
                    hint="list users with `codara users list`",
                )
            await self._update(tx, r, status="claimed", assignee=to, claim_expires_at=None,
                               updated_at=now)  # fmt: skip
            detail = json.dumps({"to": to})
            await repo.add_event(tx, r.id, who.username, "delegate", detail, None, now)
            return await self._item(tx, await self._reload(tx, review_id))

    async def approve(
        self,
        who: Principal,
        review_id: str,
        *,
        comment: str | None = None,
        version: int | None = None,
    ) -> ReviewItem:
        return await self._decide(who, review_id, "approve", version=version, comment=comment)

    async def edit(
        self,
        who: Principal,
        review_id: str,
        proposal: Any,
        *,
        comment: str | None = None,
        version: int | None = None,
    ) -> ReviewItem:
        return await self._decide(
            who, review_id, "edit", version=version, comment=comment, proposal=proposal
        )

    async def reject(
        self,
        who: Principal,
        review_id: str,
        reason_code: str,
        *,
        comment: str | None = None,
        version: int | None = None,
    ) -> ReviewItem:
        return await self._decide(
            who, review_id, "reject", version=version, comment=comment, reason_code=reason_code
        )

    async def bulk_approve(self, who: Principal, review_ids: Sequence[str]) -> list[ReviewItem]:
        """Approve several items at once; only those a policy marked low-risk qualify."""
        for review_id in review_ids:  # check every item before deciding any
            item = await self.get(who, review_id)
            if not item.low_risk:
                raise InputError(
                    f"review {review_id} is not marked low-risk; decide it on its own",
                    hint="bulk approval is for items a policy marks low_risk",
                )
        return [await self.approve(who, rid, comment="bulk approval") for rid in review_ids]

    async def _decide(
        self,
        who: Principal,
        review_id: str,
        action: str,
        *,
        version: int | None,
        comment: str | None = None,
        proposal: Any = None,
        reason_code: str | None = None,
    ) -> ReviewItem:
        _storable("comment", comment)
        if action == "edit":
            _storable("proposal", proposal)
        now = self.clock()
        async with self._acting(review_id) as tx:
            r = await self._open(tx, who, review_id, decide=True)
            if version is not None and version != r.version:
                raise ConflictError(
                    f"review {review_id} changed since you opened it (version {version}, "
                    f"now {r.version})",
                    hint="reload the item and decide again",
                )
            holder = self._holder(r, now)
            if holder not in (None, who.username):
                raise ConflictError(f"review {review_id} is claimed by {holder}")
            if r.initiator is not None and r.initiator == who.username:
                raise ForbiddenError(
                    f"{who.username} started this run and may not decide its review",
                    hint="four-eyes: another reviewer of the role must decide",
                )
            item = await self._item(tx, r)
            shown = item.shown()
            original = json.loads(r.proposal)
            if action == "reject":
                reasons = item.reject_reasons
                if reasons and reason_code not in reasons:
                    raise InputError(
                        f"reject reason {reason_code!r} is not one of: {', '.join(reasons)}",
                        hint="pick a coded reason; add details in the comment",
                    )
                result = ReviewResult(
                    outcome="rejected", proposal=original, reviewers=[who.username],
                    reason_code=reason_code, comment=comment,
                )  # fmt: skip
                detail: dict[str, Any] = {"reason_code": reason_code, "comment": comment}
                await self._finish(tx, r, result, who.username, "reject", detail, shown, now)
            elif action == "edit":
                validate_edit(proposal, item.proposal_schema)
                changes = diff(original, proposal)
                detail = {"diff": changes, "comment": comment}
                if r.approvals_required <= 1:
                    result = ReviewResult(
                        outcome="edited", proposal=proposal, reviewers=[who.username],
                        comment=comment, diff=changes,
                    )  # fmt: skip
                    await self._finish(tx, r, result, who.username, "edit", detail, shown, now)
                else:  # four-eyes: the edited proposal needs fresh approvals, the editor's first
                    await self._update(
                        tx, r, proposal=json.dumps(proposal), status="pending", assignee=None,
                        claim_expires_at=None, updated_at=now,
                    )  # fmt: skip
                    await repo.add_event(
                        tx, r.id, who.username, "edit", json.dumps(detail), shown, now
                    )
                    await repo.add_event(tx, r.id, who.username, "approve", None, shown, now)
            else:
                approvals = set(item.approvals)
                if who.username in approvals:
                    raise ConflictError(
                        f"{who.username} already approved review {review_id}",
                        hint=f"it needs {r.approvals_required} approvals from distinct reviewers",
                    )
                approvals.add(who.username)
                if len(approvals) >= r.approvals_required:
                    edits = [e for e in await repo.events(tx, r.id) if e.action == "edit"]
                    changes = json.loads(edits[-1].detail or "{}").get("diff", []) if edits else []
                    result = ReviewResult(
                        outcome="edited" if edits else "approved", proposal=item.proposal,
                        reviewers=sorted(approvals), comment=comment, diff=changes,
                    )  # fmt: skip
                    await self._finish(tx, r, result, who.username, "approve",
                                       {"comment": comment}, shown, now)  # fmt: skip
                else:
                    await self._update(tx, r, status="pending", assignee=None,
                                       claim_expires_at=None, updated_at=now)  # fmt: skip
                    await repo.add_event(tx, r.id, who.username, "approve",
                                         json.dumps({"comment": comment}), shown, now)  # fmt: skip
            return await self._item(tx, await self._reload(tx, review_id))

    async def _finish(
        self,
        tx: Tx,
        r: ReviewRecord,
        result: ReviewResult,
        actor: str,
        action: str,
        detail: dict[str, Any],
        shown: str | None,
        now: float,
    ) -> None:
        payload = result.model_dump_json()
        await self._update(tx, r, status="decided", outcome=result.outcome, result=payload,
                           decided_at=now, updated_at=now, assignee=None,
                           claim_expires_at=None)  # fmt: skip
        await repo.add_event(tx, r.id, actor, action, json.dumps(detail, default=str), shown, now)
        if r.kind == "audit":
            return  # after the fact: the answer went out, nobody waits; the verdict is a label
        # The signal carries no decision: it only wakes the run, which reads this record.
        if not await repo.signal_run(tx, r.run_id, review_signal(r.id), None, now):
            raise _RunFinished(await repo.run_status(tx, r.run_id) or "gone")

    # -- deadlines -------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Close the items of finished runs, then apply every passed deadline: approve, deny
        or escalate. Returns how many items it changed."""
        now = self.clock()
        handled = await self.close_finished()
        async with self.store.tx() as tx:
            due = await repo.due_reviews(tx, now)
        for review_id in due:
            try:
                item = await self._expire(review_id, now)
            except ConflictError:
                continue  # decided meanwhile
            except StoreError:
                raise  # the store, not the row: the ticker tries again later
            except Exception as exc:  # one bad row must not hold up the other due items
                log.error("deadline of review %s not applied, skipped: %s",
                          review_id, type(exc).__name__)  # fmt: skip
                continue
            handled += 1
            if item is not None and self.notify is not None:
                await self.notify("escalated" if item.status != "decided" else "expired", item)
        return handled

    async def _expire(self, review_id: str, now: float) -> ReviewItem | None:
        async with self._acting(review_id) as tx:
            r = await repo.get_review(tx, review_id, lock=True)
            if r is None or r.status not in repo.OPEN or r.due_at is None or r.due_at > now:
                raise ConflictError("not due")
            if r.on_timeout == "escalate" and r.escalate_to:
                due = now + (r.escalation_seconds or 3600.0)
                after = "close" if r.kind == "audit" else "deny"
                await self._update(tx, r, role=r.escalate_to, escalate_to=None, due_at=due,
                                   on_timeout=after, status="pending", assignee=None,
                                   claim_expires_at=None, escalation_level=r.escalation_level + 1,
                                   updated_at=now)  # fmt: skip
                detail = json.dumps({"from": r.role, "to": r.escalate_to, "due_at": due})
                await repo.add_event(tx, r.id, SYSTEM, "escalate", detail, None, now)
            elif r.kind == "audit":  # no verdict by the deadline: no label, nothing to default
                await self._update(tx, r, status="closed", assignee=None, claim_expires_at=None,
                                   updated_at=now)  # fmt: skip
                detail = json.dumps({"default": "close", "label": None})
                await repo.add_event(tx, r.id, SYSTEM, "expire", detail, None, now)
            else:
                approve = r.on_timeout == "approve"
                result = ReviewResult(
                    outcome="approved" if approve else "rejected",
                    proposal=json.loads(r.proposal), reviewers=[SYSTEM],
                    reason_code=None if approve else "deadline_passed",
                    comment=f"no decision by the deadline: default {r.on_timeout}",
                    by_deadline=True,
                )  # fmt: skip
                await self._finish(tx, r, result, SYSTEM, "expire",
                                   {"default": r.on_timeout}, None, now)  # fmt: skip
            return await self._item(tx, await self._reload(tx, review_id))

    async def close_finished(self) -> int:
        """Close the open items of runs that finished (cancelled, failed): nobody waits for
        their decision any more. Returns how many it closed."""
        async with self.store.tx() as tx:
            stale = await repo.open_reviews_of_finished_runs(tx)
        closed = 0
        for review_id, run_status in stale:
            try:
                closed += await self._close(review_id, run_status)
            except StoreError:
                raise
            except Exception as exc:  # one bad row must not hold up the others
                log.error("review %s of a finished run not closed, skipped: %s",
                          review_id, type(exc).__name__)  # fmt: skip
        return closed

    async def _close(self, review_id: str, run_status: str) -> int:
        now = self.clock()
        async with self.store.tx() as tx:
            r = await repo.get_review(tx, review_id, lock=True)
            if r is None or r.status not in repo.OPEN:
                return 0  # decided or closed meanwhile
            if not await repo.update_review(tx, r.id, r.version, status="closed", assignee=None,
                                            claim_expires_at=None, updated_at=now):  # fmt: skip
                return 0
            detail = json.dumps({"run_status": run_status})
            await repo.add_event(tx, r.id, CLOSER, "close", detail, None, now)
            return 1

    @contextlib.asynccontextmanager
    async def _acting(self, review_id: str) -> AsyncIterator[Tx]:
        """A transaction that changes an item. If it finds the item's run finished, it rolls
        back, the item is closed in a transaction of its own, and the caller gets a
        ConflictError saying so."""
        try:
            async with self.store.tx() as tx:
                yield tx
        except _RunFinished as exc:
            await self._close(review_id, exc.run_status)
            async with self.store.tx() as tx:
                r = await self._reload(tx, review_id)
            raise _closed(review_id, r.run_id, exc.run_status) from None

    # -- helpers ---------------------------------------------------------------------------
    async def _item(self, tx: Tx, r: ReviewRecord) -> ReviewItem:
        approvals: list[str] = []
        if r.approvals_required > 1 and r.status != "decided":
            seen_edit = False
            for e in reversed(await repo.events(tx, r.id)):
                if e.action == "approve":
                    approvals.append(e.actor)
                if e.action in ("edit", "escalate"):
                    seen_edit = True
                if seen_edit:
                    break
        return ReviewItem.from_record(r, sorted(set(approvals)))

    async def _visible(
        self, tx: Tx, who: Principal, review_id: str, *, lock: bool = False
    ) -> ReviewRecord:
        r = await repo.get_review(tx, review_id, lock=lock)
        if r is None:
            raise NotFoundError(f"no review with id {review_id!r}")
        if not who.may_see(r.role):
            raise ForbiddenError(f"{who.username} may not see reviews for role {r.role!r}")
        return r

    async def _open(self, tx: Tx, who: Principal, review_id: str, *, decide: bool) -> ReviewRecord:
        r = await self._visible(tx, who, review_id, lock=True)
        if decide and not who.may_decide(r.role):
            raise ForbiddenError(
                f"{who.username} does not hold role {r.role!r} and may not decide this review"
            )
        if r.status == "closed":
            raise _closed(review_id, r.run_id, await repo.run_status(tx, r.run_id))
        if r.status not in repo.OPEN:
            raise ConflictError(
                f"review {review_id} is already {r.status} ({r.outcome})",
                hint="nothing to do: it was decided by someone else or by its deadline",
            )
        if r.kind == "audit":
            return r  # an audit judges an answer that went out, whatever became of its run
        run_status = await repo.run_status(tx, r.run_id)
        if run_status is None or run_status in repo.RUN_FINISHED:
            raise _RunFinished(run_status or "gone")
        return r

    @staticmethod
    def _holder(r: ReviewRecord, now: float) -> str | None:
        if r.status != "claimed" or r.assignee is None:
            return None
        if r.claim_expires_at is not None and r.claim_expires_at <= now:
            return None  # the reservation lapsed
        return r.assignee

    async def _update(self, tx: Tx, r: ReviewRecord, **changes: Any) -> None:
        if not await repo.update_review(tx, r.id, r.version, **changes):
            raise ConflictError(
                f"review {r.id} was changed by someone else at the same moment",
                hint="reload it: it may already be decided",
            )

    async def _reload(self, tx: Tx, review_id: str) -> ReviewRecord:
        r = await repo.get_review(tx, review_id)
        assert r is not None
        return r
