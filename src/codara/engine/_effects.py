"""Effects: what changes the outside world (a refund, an e-mail, a CRM update), done once per
run operation whatever crashes, and never done in shadow mode.

A workflow calls ``await ctx.effect("refund", args)`` for an :class:`Effect` the app declared
(:meth:`App.effect <codara.App.effect>`). The operation writes two journal rows:

1. ``claimed``, before the handler runs: the effect's idempotency key and its arguments. The
   key is fixed here, once (``RUN:BRANCH:OP``, or the caller's ``key=``), and handed to the
   handler, so the external system can deduplicate too.
2. ``ok`` with the result (``via`` ``executed`` or ``reconciled``), or ``error``.

A crash between the two leaves a claim without a result: the outcome is *unknown*. On
resume the effect's ``reconcile(args, call)`` answers first: a result means it happened (it
is recorded, nothing runs again), ``None`` that it did not (the handler runs again, with the
same key). Without ``reconcile`` the handler runs again with the same key, and must
deduplicate by it. An exception from the handler is an unknown outcome too (a timeout may
hide a success): ``reconcile`` is asked, then the handler retried with the same key by the
effect's retry policy. Only :class:`EffectRefused` says the effect did not happen and will
not: it fails the operation at once.

When a run fails after effects happened, their ``compensate(args, result, call)`` hooks run
in reverse order, each journaled (kind ``compensate``), so a crash during compensation
resumes it without compensating anything twice.

In shadow mode (``[workflows.NAME] effects = "shadow"``) nothing is executed: the operation
records what it would have done (``via`` ``shadow``, with its arguments) and returns the
result the effect's ``shadow(args)`` gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import TypeAdapter, ValidationError

from codara.engine._codec import decode, dump_error, dumps
from codara.engine._retry import RetryPolicy
from codara.errors import ConfigError, RunError

if TYPE_CHECKING:
    from codara.engine._branch import Branch
    from codara.engine._context import Context
    from codara.store import JournalRecord

log = logging.getLogger("codara.effects")

__all__ = [
    "EFFECT_MODES",
    "Authorize",
    "Effect",
    "EffectCall",
    "EffectFailedError",
    "EffectRefused",
    "Effects",
    "Verdict",
]

EFFECT_MODES = ("live", "shadow")
EffectMode = Literal["live", "shadow"]


@dataclass(frozen=True)
class EffectCall:
    """What a handler, a reconcile or a compensation is told about the call."""

    effect: str
    key: str
    """The idempotency key: the same for every attempt, the reconcile and the compensation."""
    run_id: str
    workflow: str
    attempt: int = 1


class EffectRefused(Exception):
    """Raised by a handler: the effect did not happen and will not (a 4xx, a business
    refusal). The operation fails at once, with no retry and no reconcile."""


class EffectFailedError(RunError):
    """An effect failed: refused by its handler, its arguments invalid, denied by a policy
    or a reviewer, or its outcome still unknown when the retries ran out (``outcome`` says
    which)."""

    code = "effect_failed"
    exit_code = 13

    def __init__(
        self,
        effect: str,
        message: str,
        *,
        outcome: Literal["refused", "invalid", "unknown", "denied"],
        hint: str | None = None,
    ) -> None:
        super().__init__(f"effect {effect!r} {message}", hint=hint)
        self.effect = effect
        self.outcome = outcome
        self.non_retryable = True


Handler = Callable[[Any, EffectCall], Awaitable[Any]]


@dataclass(frozen=True)
class Verdict:
    """What an effect's policy decided: go ahead (with these arguments, a reviewer may have
    edited them), or not, and why."""

    go_ahead: bool
    args: Any
    reason: str


Authorize = Callable[["Context", "Effect", Any], Awaitable[Verdict]]
"""An effect's policy gate (``[effects.NAME]``, installed by the review layer)."""


@dataclass(frozen=True)
class Effect:
    """A change to the outside world a workflow may ask for by ``name``.

    ``run(args, call)`` does it (``call.key`` is its idempotency key); ``reconcile(args,
    call)`` answers "did it happen?" with its result, or ``None`` for no; ``compensate(args,
    result, call)`` undoes it when the run fails later, and ``compensated(args, result,
    call)`` answers "was it undone?" after a crash in between; ``shadow(args)`` is the
    result in shadow mode. ``args_type`` and ``result_type`` (any type pydantic validates) check the
    arguments before anything is journaled and shape the journaled result on replay.
    ``retry`` and ``timeout`` apply per attempt; ``rate_limit`` caps executions per second
    in this process.
    """

    name: str
    run: Handler
    reconcile: Handler | None = None
    compensate: Callable[[Any, Any, EffectCall], Awaitable[None]] | None = None
    compensated: Callable[[Any, Any, EffectCall], Awaitable[bool]] | None = None
    shadow: Callable[[Any], Any] | None = None
    args_type: Any = None
    result_type: Any = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    rate_limit: float | None = None
    _args: TypeAdapter[Any] | None = field(default=None, init=False, repr=False, compare=False)
    _result: TypeAdapter[Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 200:
            raise ConfigError(f"an effect's name must be 1 to 200 characters, not {self.name!r}")
        for what in ("run", "reconcile", "compensate", "compensated", "shadow"):
            value = getattr(self, what)
            if value is not None and not callable(value):
                raise ConfigError(f"effect {self.name!r}: {what} must be callable")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"effect {self.name!r}: timeout must be more than 0 seconds")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigError(f"effect {self.name!r}: rate_limit must be more than 0 per second")
        if self.args_type is not None:
            object.__setattr__(self, "_args", TypeAdapter(self.args_type))
        if self.result_type is not None:
            object.__setattr__(self, "_result", TypeAdapter(self.result_type))

    def check_args(self, args: Any) -> Any:
        """``args`` validated into ``args_type``, as JSON (what the journal and handler get)."""
        if self._args is None:
            return args
        try:
            return self._args.dump_python(self._args.validate_python(args), mode="json")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise EffectFailedError(
                self.name, f"was given invalid arguments: {problems}", outcome="invalid"
            ) from None

    def shape(self, result: Any) -> Any:
        """A journaled result, validated into ``result_type`` when there is one."""
        return result if self._result is None else self._result.validate_python(result)


class _Limiter:
    """At most ``rate`` starts per second, in this process."""

    def __init__(self, rate: float) -> None:
        self.gap = 1.0 / rate
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
                now = self.next
            self.next = now + self.gap


class Effects:
    """The effects an app declared, and which workflows run them in shadow mode."""

    def __init__(self) -> None:
        self.by_name: dict[str, Effect] = {}
        self.shadow: frozenset[str] = frozenset()
        self.gates: dict[str, Authorize] = {}
        """effect name -> its policy gate; an effect without one is not policed."""
        self._limiters: dict[str, _Limiter] = {}

    def add(self, effect: Effect) -> None:
        if not isinstance(effect, Effect):
            raise ConfigError(f"App.effect takes an Effect, not {type(effect).__name__}")
        if effect.name in self.by_name and self.by_name[effect.name] is not effect:
            raise ConfigError(f"effect {effect.name!r} is declared twice")
        self.by_name[effect.name] = effect
        if effect.rate_limit is not None:
            self._limiters[effect.name] = _Limiter(effect.rate_limit)

    def get(self, name: str) -> Effect:
        effect = self.by_name.get(name)
        if effect is None:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise ConfigError(
                f"ctx.effect({name!r}): no effect of that name is declared (declared: {known})",
                hint="declare it with app.effect(codara.Effect(name=..., run=...))",
            )
        return effect

    def mode_of(self, workflow: str) -> EffectMode:
        return "shadow" if workflow in self.shadow else "live"

    async def limit(self, name: str) -> None:
        limiter = self._limiters.get(name)
        if limiter is not None:
            await limiter.wait()

    def check_gates(self, where: str) -> None:
        """Every ``[effects.NAME]`` with policies names a declared effect: a misspelt one
        would leave the real effect unpoliced without a word."""
        stray = sorted(set(self.gates) - set(self.by_name))
        if stray:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise ConfigError(
                f"[effects.{stray[0]}] in {where} has policies, but no effect of that name is "
                f"declared (declared: {known})",
                hint="name the table after the Effect's name, or declare the effect",
            )

    def load_modes(self, workflows: Mapping[str, Any], where: str) -> None:
        """``[workflows.NAME] effects = "live" | "shadow"`` of the settings."""
        shadow = set()
        for name, table in workflows.items():
            mode = table.get("effects", "live") if isinstance(table, Mapping) else "live"
            if mode not in EFFECT_MODES:
                raise ConfigError(
                    f'[workflows.{name}] effects in {where} must be "live" or "shadow", '
                    f"not {mode!r}",
                    hint='"shadow" records what each effect would have done and executes none',
                )
            if mode == "shadow":
                shadow.add(str(name))
        self.shadow = frozenset(shadow)


# -- the operation (Context.effect) ------------------------------------------------------------
@dataclass
class Done:
    """An effect with a compensate hook that happened in this run (for compensation)."""

    effect: Effect
    args: Any
    result: Any
    call: EffectCall


async def run_effect(ctx: Context, name: str, args: Any, key: str | None) -> Any:
    """``ctx.effect``: replayed from the journal, resumed after a claim with no result, or
    claimed and executed now (see the module)."""
    effects: Effects | None = ctx._effects
    if effects is None:
        raise ConfigError(
            f"ctx.effect({name!r}): this app declares no effects",
            hint="declare it with app.effect(codara.Effect(name=..., run=...))",
        )
    effect = effects.get(name)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise ConfigError(f"ctx.effect({name!r}): key must be a string of 1 to 200 characters")
    denied: str | None = None
    gate = effects.gates.get(name)
    if gate is not None:
        try:
            checked = effect.check_args(args)
        except EffectFailedError:
            pass  # recorded as invalid by the operation below, never shown to the policy
        else:  # the gate's own operations (policy, review, decision) come before the effect's
            verdict = await gate(ctx, effect, checked)
            if verdict.go_ahead:
                args = verdict.args
            else:
                denied = verdict.reason
    branch, op, rows = ctx._take_op(f"effect {name!r}")
    # at work from here to the end: the run is never taken for quiet (and parked) while
    # an effect's claim or result is being written or its handler runs
    ctx._active += 1
    try:
        return await _operation(ctx, effects, effect, name, args, key, branch, op, rows, denied)
    finally:
        ctx._done_working()


async def _operation(
    ctx: Context,
    effects: Effects,
    effect: Effect,
    name: str,
    args: Any,
    key: str | None,
    branch: Branch,
    op: int,
    rows: list[JournalRecord] | None,
    denied: str | None,
) -> Any:
    started = ctx._clock()

    def record(status: str, input_json: str, output: str | None, error: str | None,
               attempts: int) -> Awaitable[JournalRecord]:  # fmt: skip
        return ctx._append(lambda: ctx._record(op, "effect", name, status, input_json, output,
                                               error, started, attempts, branch.path))  # fmt: skip

    if rows is not None:  # replay, or resume after a claim
        for row in rows:
            ctx._check(branch, row, "effect", name)
        last = rows[-1]
        branch.time = max(branch.time, last.finished_at)
        claim = decode(rows[0].input) or {}
        call = EffectCall(name, str(claim.get("key")), ctx.run_id, ctx.workflow)
        # The handler gets the arguments the workflow passes now (the same, the code being
        # deterministic), not the journaled ones: those are masked once the run read
        # originals, and a refund must go to the real IBAN.
        if last.status == "ok":
            out = decode(last.output) or {}
            if out.get("via") != "shadow" and effect.compensate is not None:
                live = effect.check_args(args)
                ctx._effects_done.append(Done(effect, live, out.get("result"), call))
            return effect.shape(out.get("result"))
        if last.status == "error":
            err = decode(last.error) or {}
            raise EffectFailedError(name, str(err.get("message", "failed")),
                                    outcome=err.get("outcome", "unknown"))  # fmt: skip
        # a claim and no result: the worker died while the effect was under way
        if ctx.cancelling:  # cancelled since: find out if it happened, never do it now
            from codara.engine._context import Abort

            found = None if effect.reconcile is None else await _reconcile(effect, args, call)
            if found is None:
                log.warning("run %s cancelled with effect %s (key %s) under way: neither "
                            "done nor undone; check it", ctx.run_id, name, call.key)  # fmt: skip
                raise Abort
            return await _done(ctx, effect, effect.check_args(args), call, record,
                               rows[0].input or "null", found[0], "reconciled", 0)  # fmt: skip
        return await _execute(ctx, effect, effect.check_args(args), call, record,
                              rows[0].input or "null", resumed=True)  # fmt: skip

    try:
        checked = effect.check_args(args)
    except EffectFailedError as exc:
        shown = dumps({"key": key, "args": None})
        await record("error", shown, None, _failure(exc), 0)
        raise
    call = EffectCall(name, key or f"{ctx.run_id}:{branch.path or 'r'}:{op}", ctx.run_id,
                      ctx.workflow)  # fmt: skip
    claim_json = dumps({"key": call.key, "args": checked})
    if denied is not None:  # nothing is claimed: the policy or a reviewer said no
        err = EffectFailedError(name, f"was denied: {denied}", outcome="denied")
        await record("error", claim_json, None, _failure(err), 0)
        raise err
    if effects.mode_of(ctx.workflow) == "shadow":
        if effect.shadow is None:
            raise ConfigError(
                f"effect {name!r} has no shadow result, and workflow {ctx.workflow!r} runs "
                "its effects in shadow mode",
                hint="give the Effect shadow=lambda args: <the result to continue with>",
            )
        result = effect.shadow(checked)
        await record("ok", claim_json, dumps({"result": result, "via": "shadow"}), None, 0)
        return effect.shape(decode(dumps(result)))
    await record("claimed", claim_json, None, None, 0)  # durable before anything happens
    _fault("effect.claimed", name)
    return await _execute(ctx, effect, checked, call, record, claim_json, resumed=False)


def _fault(point: str, name: str) -> None:
    """The engine's fault hook at ``point`` of effect ``name`` (the crash tests aim there)."""
    from codara.engine import _context

    if _context._fault_hook is not None:
        _context._fault_hook(point, name)


def _error(exc: BaseException) -> dict[str, Any]:
    return dict(decode(dump_error(exc)) or {})


def _failure(err: EffectFailedError) -> str:
    """The error column of a failed effect: the error, and whether it happened (outcome)."""
    return dumps({**_error(err), "outcome": err.outcome})


async def _execute(
    ctx: Context,
    effect: Effect,
    args: Any,
    call: EffectCall,
    record: Callable[..., Awaitable[JournalRecord]],
    claim_json: str,
    *,
    resumed: bool,
) -> Any:
    """Reconcile (after a claim with no result), then execute with retries; record the
    outcome. An exception is an unknown outcome: reconcile, or retry with the same key."""
    if resumed and effect.reconcile is not None:
        found = await _reconcile(effect, args, call)
        if found is not None:
            return await _done(ctx, effect, args, call, record, claim_json, found[0],
                               "reconciled", 0)  # fmt: skip
    policy = effect.retry or ctx._retry
    attempt = 1
    while True:
        this = EffectCall(call.effect, call.key, call.run_id, call.workflow, attempt)
        try:
            await ctx._effects.limit(effect.name)  # type: ignore[union-attr]
            if effect.timeout is None:
                result = await effect.run(args, this)
            else:
                result = await asyncio.wait_for(effect.run(args, this), effect.timeout)
        except EffectRefused as exc:
            err = EffectFailedError(effect.name, f"was refused: {exc}", outcome="refused")
            await record("error", claim_json, None, _failure(err), attempt)
            raise err from exc
        except Exception as exc:  # the outcome is unknown: it may have happened
            if effect.reconcile is not None:
                found = await _reconcile(effect, args, this)
                if found is not None:
                    return await _done(ctx, effect, args, call, record, claim_json,
                                       found[0], "reconciled", attempt)  # fmt: skip
            if not policy.should_retry(exc, attempt):
                err = EffectFailedError(
                    effect.name,
                    f"has an unknown outcome after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {exc}",
                    outcome="unknown",
                    hint=f"check the external system for key {call.key}; a reconcile hook "
                    "would let Codara ask it",
                )
                await record("error", claim_json, None, _failure(err), attempt)
                raise err from exc
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1
            continue
        _fault("effect.executed", effect.name)
        try:
            dumps(result)
        except TypeError as exc:  # it happened, and its result cannot be kept: say so, once
            err = EffectFailedError(
                effect.name,
                f"returned a result that is not JSON ({exc})",
                outcome="unknown",
                hint="return JSON (dicts, lists, strings, numbers) from the handler",
            )
            await record("error", claim_json, None, _failure(err), attempt)
            raise err from None
        return await _done(ctx, effect, args, call, record, claim_json, result, "executed",
                           attempt)  # fmt: skip


async def _reconcile(effect: Effect, args: Any, call: EffectCall) -> tuple[Any] | None:
    """``(result,)`` when the effect's reconcile says it happened, None when it did not or
    cannot tell (it raised: then the handler, which has the key, decides)."""
    assert effect.reconcile is not None
    try:
        found = await effect.reconcile(args, call)
    except Exception as exc:
        log.warning("effect %s: reconcile for key %s raised %s; retrying with the same key",
                    effect.name, call.key, type(exc).__name__)  # fmt: skip
        return None
    return None if found is None else (found,)


async def _done(
    ctx: Context,
    effect: Effect,
    args: Any,
    call: EffectCall,
    record: Callable[..., Awaitable[JournalRecord]],
    claim_json: str,
    result: Any,
    via: str,
    attempts: int,
) -> Any:
    row = await record("ok", claim_json, dumps({"result": result, "via": via}), None, attempts)
    value = (decode(row.output) or {}).get("result")  # what a replay returns (masked if so)
    if effect.compensate is not None:
        ctx._effects_done.append(Done(effect, args, value, call))
    return effect.shape(value)


async def compensate(ctx: Context) -> None:
    """After the workflow failed: undo the effects that happened, newest first. Each
    compensation is an operation of its own, claimed before its hook runs (a ``compensate``
    row ``claimed``, then ``ok`` or ``error``), so a replay skips those finished and, for
    one claimed without a result, asks the effect's ``compensated`` hook before undoing
    again (without one: again, with the same key)."""
    for done in reversed(ctx._effects_done):  # only effects with a compensate hook are kept
        branch, op, rows = ctx._take_op(f"compensate {done.effect.name!r}")
        if rows is not None:
            for row in rows:
                ctx._check(branch, row, "compensate", done.effect.name)
            if rows[-1].status != "claimed":
                continue  # compensated (or given up on) before
        ctx._active += 1
        try:
            await _compensate_one(ctx, done, branch, op, resumed=rows is not None)
        finally:
            ctx._done_working()


async def _compensate_one(
    ctx: Context, done: Done, branch: Branch, op: int, *, resumed: bool
) -> None:
    effect, name, key = done.effect, done.effect.name, done.call.key
    assert effect.compensate is not None
    started = ctx._clock()
    claim = dumps({"key": key})

    def record(status: str, output: str | None, error: str | None, attempts: int) -> Any:
        return ctx._append(partial(ctx._record, op, "compensate", name, status, claim,
                                   output, error, started, attempts, branch.path))  # fmt: skip

    if not resumed:
        await record("claimed", None, None, 0)
        _fault("compensate.claimed", name)
    elif effect.compensated is not None:
        try:
            undone = await effect.compensated(done.args, done.result, done.call)
        except Exception as exc:  # cannot tell: undo again, with the same key
            log.warning("effect %s: compensated() for key %s raised %s", name, key,
                        type(exc).__name__)  # fmt: skip
            undone = False
        if undone:
            await record("ok", dumps({"via": "reconciled"}), None, 0)
            return
    policy = effect.retry or ctx._retry
    attempt = 1
    while True:
        try:
            await effect.compensate(done.args, done.result, done.call)
            break
        except Exception as exc:
            if not policy.should_retry(exc, attempt):
                log.error("run %s: compensating effect %s (key %s) failed: %s",
                          ctx.run_id, name, key, exc)  # fmt: skip
                await record("error", None, dumps(_error(exc)), attempt)
                return
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1
    _fault("compensate.executed", name)
    await record("ok", dumps({"via": "executed"}), None, attempt)
