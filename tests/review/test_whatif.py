"""What-if (``codara policy simulate``'s engine): the journaled decisions of real runs of a
small gated workflow, taken again under another policy file, on SQLite and PostgreSQL.

Every expectation is worked by hand from the runs' inputs and the two policy sets (the
tables in the docstrings); labels come from reviews decided through :class:`Reviews`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import codara
from codara import Effect, EffectCall
from codara.config import Settings
from codara.engine import EffectFailedError
from codara.errors import ConfigError, InputError, UnknownWorkflowError
from codara.review import (
    Principal,
    ReviewGate,
    Reviews,
    Simulation,
    install_reviews,
    load_policies,
    load_policy_file,
    parse_since,
    simulate,
)
from codara.review.policy import PolicyError
from codara.testing import FakeClock

OLD: dict[str, Any] = {
    "reject_reasons": ["wrong_intent"],
    "policy_input": {"intent": "string", "confidence": "double", "customer": "string"},
    "policies": [
        {"name": "fraud", "when": 'intent == "fraud"', "outcome": "deny"},
        {"name": "unsure", "when": "confidence < 0.8", "outcome": "ask", "role": "support"},
    ],
}
NEW = """
[workflows.triage.policy_input]
intent = "string"
confidence = "double"

[[workflows.triage.policies]]
name = "fraud"
when = 'intent == "fraud"'
outcome = "deny"

[[workflows.triage.policies]]
name = "unsure"
when = "confidence < 0.6"
outcome = "ask"
role = "support"

[[workflows.triage.policies]]
name = "billing"
when = 'intent == "billing"'
outcome = "ask"
role = "billing"
"""
PEOPLE = Principal("sam", frozenset({"support", "billing", "audit"}))
START = 1_800_000_000.0


class Env:
    def __init__(self, app: codara.App, clock: FakeClock, tmp_path: Path) -> None:
        self.app = app
        self.clock = clock
        self.reviews = Reviews(app.store, clock)
        self.tmp_path = tmp_path

    async def start(self, intent: str, confidence: float, customer: str = "C-1") -> str:
        run = {"intent": intent, "confidence": confidence, "customer": customer}
        run_id = await self.app.start_run("triage", run)
        await self.app.work(until_idle=True)
        return run_id

    def file(self, text: str, name: str = "new.toml") -> Path:
        path = self.tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    async def simulate(self, text: str = NEW, **kwargs: Any) -> Simulation:
        policies = load_policy_file(self.file(text), "triage")
        kwargs.setdefault("since", START - 1)
        kwargs.setdefault("until", self.clock() + 1)
        return await simulate(self.app.store, "triage", policies, **kwargs)

    async def item(self, run_id: str) -> str:
        [item] = await self.reviews.queue(PEOPLE, run_id=run_id)
        return item.id


def _app(db_url: str, old: dict[str, Any], clock: FakeClock, **effects: Any) -> codara.App:
    settings = Settings.model_validate(
        {"store": {"url": db_url, "durability": "os"}, "effects": effects}
    )
    app = codara.App(settings=settings, clock=clock)

    async def refund(args: dict[str, Any], call: EffectCall) -> str:
        return "refunded"

    app.effect(Effect(name="refund", run=refund))
    gate = ReviewGate(load_policies(old, workflow="triage"), workflow="triage")
    install_reviews(app)

    @app.workflow(name="triage")
    async def triage(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = {"intent": req["intent"], "reply": "thanks, done"}
        inputs = {k: req[k] for k in ("intent", "confidence", "customer")}
        result = await gate.check(ctx, "reply", proposal, inputs=inputs)
        if "refund" in req and result.go_ahead:
            try:
                await ctx.effect("refund", {"amount": req["refund"]})
            except EffectFailedError:
                return {"outcome": result.outcome, "refund": "blocked"}
        return {"outcome": result.outcome}

    return app


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock(START)
    async with _app(db_url, OLD, clock) as app:
        yield Env(app, clock, tmp_path)


async def test_counts_transitions_and_labels_against_hand_worked_figures(env: Env) -> None:
    """
    run  intent    conf  old (fraud, unsure<0.8)  new (fraud, unsure<0.6, billing)  people
    r1   greeting  0.95  allow                    allow
    r2   greeting  0.70  ask:support              allow                             approve
    r3   greeting  0.50  ask:support              ask:support                       reject
    r4   billing   0.90  allow                    ask:billing
    r5   billing   0.70  ask:support              ask:billing                       edit intent
    r6   fraud     0.99  deny                     deny
    r7   greeting  0.65  ask:support              allow                             edit reply
    """
    r1 = await env.start("greeting", 0.95)
    r2 = await env.start("greeting", 0.70)
    r3 = await env.start("greeting", 0.50)
    r4 = await env.start("billing", 0.90)
    r5 = await env.start("billing", 0.70)
    await env.start("fraud", 0.99)
    r7 = await env.start("greeting", 0.65)
    await env.reviews.approve(PEOPLE, await env.item(r2))
    await env.reviews.reject(PEOPLE, await env.item(r3), "wrong_intent")
    await env.reviews.edit(PEOPLE, await env.item(r5), {"intent": "refund", "reply": "thanks"})
    await env.reviews.edit(PEOPLE, await env.item(r7), {"intent": "greeting", "reply": "hi!"})
    await env.app.work(until_idle=True)

    sim = await env.simulate()

    assert (sim.runs, sim.compared, dict(sim.steps)) == (7, 7, {"reply": 7})
    assert (sim.old.allowed, dict(sim.old.asked), sim.old.denied) == (2, {"support": 4}, 1)
    assert (sim.new.allowed, dict(sim.new.asked), sim.new.denied) == (
        3,
        {"support": 1, "billing": 2},
        1,
    )
    assert dict(sim.transitions) == {
        ("allow", "allow"): 1,
        ("ask:support", "allow"): 2,
        ("ask:support", "ask:support"): 1,
        ("allow", "ask:billing"): 1,
        ("ask:support", "ask:billing"): 1,
        ("deny", "deny"): 1,
    }
    assert dict(sim.old.by_policy) == {"(no policy fired)": 2, "unsure": 4, "fraud": 1}
    assert dict(sim.new.by_policy) == {
        "(no policy fired)": 3,
        "unsure": 1,
        "billing": 2,
        "fraud": 1,
    }
    assert sim.changed == 4
    assert sorted(c.key for c in sim.changes) == sorted(f"{r}:reply" for r in (r2, r4, r5, r7))
    assert not sim.skipped
    assert not sim.left_out
    # Labels: the four asks people decided. New automatic answers r1, r2, r7: r2 approved,
    # r7 edited without changing the intent (both correct); r1 was never looked at.
    assert sim.labelled == 4
    new = sim.new_precision
    assert (new.automatic, new.labelled, new.correct, new.from_review) == (3, 2, 2, 2)
    interval = new.interval()
    assert interval is not None
    assert interval.point == 1.0
    assert interval.low == pytest.approx(0.3424, abs=1e-4)  # Wilson 2/2 at 95%, by hand
    # The old automatic answers (r1, r4) were allowed and never sampled: nothing labelled.
    old = sim.old_precision
    assert (old.automatic, old.labelled, old.interval()) == (2, 0, None)
    # Nothing personal by default: no inputs, no reasons (they quote values).
    text = str(sim.as_dict())
    assert "C-1" not in text
    assert "inputs_seen" not in text
    assert "was true" not in text
    assert str(r1) not in text  # unchanged decisions are only counted


async def test_audit_samples_label_the_old_automatic_answers_deadlines_do_not(
    db_url: str, tmp_path: Path
) -> None:
    """Old: unsure < 0.8 asks support; every other answer is sampled for audit (rate 1).
    New: unsure < 0.4, no sampling.

    run  conf  old          people                  new
    a    0.90  allow+audit  approve                 allow
    b    0.90  allow+audit  reject                  allow
    c    0.50  ask:support  approve                 allow
    d    0.90  allow+audit  (deadline: closed)      allow
    """
    audited = {**OLD, "sampling": {"rate": 1.0, "role": "audit", "deadline": "1h",
                                   "on_timeout": "close"}}  # fmt: skip
    clock = FakeClock(START)
    async with _app(db_url, audited, clock) as app:
        env = Env(app, clock, tmp_path)
        a = await env.start("greeting", 0.90)
        b = await env.start("greeting", 0.90)
        c = await env.start("greeting", 0.50)
        await env.reviews.approve(PEOPLE, await env.item(a))
        await env.reviews.reject(PEOPLE, await env.item(b), "wrong_intent")
        await env.reviews.approve(PEOPLE, await env.item(c))
        await env.start("greeting", 0.90)
        clock.advance(2 * 3600)
        assert await env.reviews.sweep() == 1  # d: closed by its deadline, no verdict
        await app.work(until_idle=True)
        sim = await env.simulate(NEW.replace("confidence < 0.6", "confidence < 0.4"))

    assert (dict(sim.old.asked), sim.old.sampled) == ({"support": 1}, 3)
    assert (sim.new.allowed, sim.new.sampled) == (4, 0)
    assert dict(sim.transitions) == {("allow", "allow"): 3, ("ask:support", "allow"): 1}
    assert sim.labelled == 3  # a, b, c; d's deadline is no label
    old = sim.old_precision  # the sampled a, b, d: a correct, b wrong, d unlabelled
    assert (old.automatic, old.labelled, old.correct, old.from_audit) == (3, 2, 1, 2)
    new = sim.new_precision
    assert (new.automatic, new.labelled, new.correct) == (4, 3, 2)
    assert (new.from_review, new.from_audit) == (1, 2)
    audit = new.audit_interval()  # a and b alone: 1 of 2, the random sample kept apart
    assert audit is not None
    assert audit.point == 0.5
    assert (old.correct_audit, new.correct_audit) == (1, 1)
    interval = new.interval()  # Wilson 2/3 at 95%: 20.77% to 93.85%, worked by hand
    assert interval is not None
    assert interval.low == pytest.approx(0.2077, abs=1e-4)
    assert interval.high == pytest.approx(0.9385, abs=1e-4)


async def test_same_key_same_sampling_when_the_rate_is_unchanged(
    db_url: str, tmp_path: Path
) -> None:
    """Old and new sample at 30%; the new file changes nothing else, so every decision,
    sampled or not, comes out the same: sampling hashes the same RUN:STEP key."""
    sampled = {**OLD, "sampling": {"rate": 0.3, "role": "audit"}}
    same = """
[workflows.triage.policy_input]
intent = "string"
confidence = "double"

[[workflows.triage.policies]]
name = "fraud"
when = 'intent == "fraud"'
outcome = "deny"

[[workflows.triage.policies]]
name = "unsure"
when = "confidence < 0.8"
outcome = "ask"
role = "support"

[workflows.triage.sampling]
rate = 0.3
role = "audit"
"""
    clock = FakeClock(START)
    async with _app(db_url, sampled, clock) as app:
        env = Env(app, clock, tmp_path)
        for _ in range(40):
            await env.start("greeting", 0.95)
        sim = await env.simulate(same)
    assert sim.compared == 40
    assert sim.changed == 0
    # Some sampled, some not, so the comparison means something (run ids are random: none
    # sampled at 30% has a chance of 0.7^40, about 6e-7)
    assert 0 < sim.old.sampled < 40
    assert sim.new.sampled == sim.old.sampled
    assert all(old == new for old, new in sim.transitions)


async def test_decisions_that_cannot_be_taken_again_say_why_without_values(env: Env) -> None:
    """An input the new policies read that the old did not declare was never recorded; an
    input recorded as a number that the new file declares as text does not fit."""
    await env.start("greeting", 0.95, customer="jane@example.com")
    await env.start("greeting", 0.95)
    reads_amount = NEW.replace('confidence = "double"', 'confidence = "double"\namount = "double"')
    reads_amount = reads_amount.replace("confidence < 0.6", "amount > 10.0")
    sim = await env.simulate(reads_amount)
    assert sim.compared == 0
    assert not sim.nothing_to_simulate
    assert dict(sim.skipped) == {"not recorded (the policies then did not declare it): amount": 2}
    assert len(sim.skipped_keys) == 2

    as_text = NEW.replace('confidence = "double"', 'confidence = "string"')
    as_text = as_text.replace('"confidence < 0.6"', """'confidence == "low"'""")
    sim = await env.simulate(as_text)
    reason = "input 'confidence' was recorded as a number, the new policies declare string"
    assert dict(sim.skipped) == {reason: 2}
    assert "0.95" not in str(sim.as_dict())
    assert "jane" not in str(sim.as_dict())


async def test_a_gate_that_failed_in_the_run_has_no_decision_to_take_again(env: Env) -> None:
    """Text given for the double ``confidence``: the gate's step failed (journaled as an
    error, the run failed), so there is no decision to compare; it is counted with why."""
    run_id = await env.app.start_run(
        "triage", {"intent": "greeting", "confidence": "high", "customer": "C-1"}
    )
    await env.app.work(until_idle=True)
    assert (await env.app.get_run(run_id)).status == "failed"
    await env.start("greeting", 0.95)
    sim = await env.simulate()
    assert sim.compared == 1
    reason = "the gate's own evaluation failed in the run: no decision was made"
    assert sim.skipped_keys == [(f"{run_id}:reply", reason)]


async def test_show_inputs_gives_the_masked_values_as_journaled(env: Env) -> None:
    """The changed decision's inputs only when asked, and then masked: the email the run's
    input carried is a token in the journal, and that is what is shown."""
    run = await env.start("billing", 0.95, customer="jane@example.com")
    quiet = await env.simulate()
    assert [c.key for c in quiet.changes] == [f"{run}:reply"]
    assert "inputs_seen" not in str(quiet.as_dict())
    shown = await env.simulate(show_inputs=True)
    [change] = shown.as_dict()["changed_first"]
    customer = change["inputs_seen"]["customer"]
    assert customer != "jane@example.com"
    assert "jane" not in str(shown.as_dict())
    assert change["inputs_seen"]["intent"] == "billing"


async def test_the_window_and_the_pages(env: Env) -> None:
    """Runs before --since are not read; pages of 2 runs (several runs created in the same
    instant, so the page boundary falls between equal times) read every run once."""
    await env.start("greeting", 0.70)  # at START: before the window below
    env.clock.advance(3600)
    for conf in (0.95, 0.70, 0.50, 0.90, 0.65):
        await env.start("greeting", conf)
    whole = await env.simulate(since=START + 1)
    paged = await env.simulate(since=START + 1, page=2)
    assert whole.runs == paged.runs == 5
    assert dict(whole.transitions) == dict(paged.transitions)
    assert dict(paged.transitions) == {
        ("allow", "allow"): 2,
        ("ask:support", "allow"): 2,
        ("ask:support", "ask:support"): 1,
    }
    everything = await env.simulate(since=START - 1, page=2)
    assert everything.runs == 6


async def test_effect_decisions_use_the_files_effect_policies_or_are_left_out(
    db_url: str, tmp_path: Path
) -> None:
    """[effects.refund] asks finance above 100.0 (old); the file denies above 50.0. Runs
    refund 20, 80 and 300: old allow, allow, ask:finance; new allow, deny, deny."""
    effect = {
        "policy_input": {"amount": "double"},
        "policies": [{"name": "big", "when": "amount > 100.0", "outcome": "ask",
                      "role": "finance"}],
    }  # fmt: skip
    clock = FakeClock(START)
    async with _app(db_url, OLD, clock, refund=effect) as app:
        env = Env(app, clock, tmp_path)
        for amount in (20.0, 80.0, 300.0):
            run_id = await app.start_run(
                "triage", {"intent": "x", "confidence": 0.9, "customer": "C", "refund": amount}
            )
            await app.work(until_idle=True)
        assert (await app.get_run(run_id)).status == "waiting"
        only_workflow = await env.simulate()
        assert dict(only_workflow.steps) == {"reply": 3, "effect:refund": 3}
        assert only_workflow.compared == 3
        assert dict(only_workflow.left_out) == {
            f"{tmp_path / 'new.toml'} has no [effects.refund]": 3
        }

        stricter = NEW + (
            '\n[effects.refund.policy_input]\namount = "double"\n'
            '[[effects.refund.policies]]\nname = "cap"\nwhen = "amount > 50.0"\noutcome = "deny"\n'
        )
        sim = await env.simulate(stricter, step="effect:refund")
        assert dict(sim.transitions) == {
            ("allow", "allow"): 1,
            ("allow", "deny"): 1,
            ("ask:finance", "deny"): 1,
        }
        assert dict(sim.new.by_policy) == {"(no policy fired)": 1, "cap": 2}
        with pytest.raises(ConfigError, match=r"has no \[effects\.payout\]"):
            await env.simulate(stricter, step="effect:payout")


# -- bad input ---------------------------------------------------------------------------------
async def test_bad_policy_files_stop_with_the_reason(env: Env) -> None:
    with pytest.raises(ConfigError, match="--policies: cannot read") as missing:
        load_policy_file(env.tmp_path / "absent.toml", "triage")
    assert missing.value.hint
    assert "codara.toml" in missing.value.hint
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy_file(env.file("[workflows.triage\n"), "triage")
    broken = NEW.replace("confidence < 0.6", "confidance < 0.6")
    with pytest.raises(PolicyError, match="Did you mean 'confidence'"):
        load_policy_file(env.file(broken), "triage")
    with pytest.raises(ConfigError, match=r"has no \[workflows\.triage\] table"):
        load_policy_file(env.file("[workflows.other.policy_input]\nx = 'int'\n"), "triage")


async def test_unknown_workflow_and_an_empty_window(env: Env) -> None:
    policies = load_policy_file(env.file(NEW.replace("triage", "nosuch")), "nosuch")
    with pytest.raises(UnknownWorkflowError, match="no workflow 'nosuch'") as unknown:
        await simulate(env.app.store, "nosuch", policies, since=0.0, until=START + 1)
    assert unknown.value.hint is not None
    assert "triage" in unknown.value.hint
    # A known workflow with no run in the window: nothing to simulate, not an error.
    sim = await env.simulate()
    assert sim.nothing_to_simulate
    assert sim.runs == 0
    await env.start("greeting", 0.95)
    assert (await env.simulate(step="classify")).nothing_to_simulate  # no such gate step
    assert not (await env.simulate()).nothing_to_simulate


@pytest.mark.parametrize(
    ("text", "ago"),
    [("7d", 7 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("2w", 14 * 86400), ("1.5d", 129600)],
)
def test_since_as_a_duration(text: str, ago: float) -> None:
    assert parse_since(text, START) == START - ago


def test_since_as_a_date_is_utc_unless_it_says() -> None:
    assert parse_since("2026-11-01", START) == 1_793_491_200.0
    assert parse_since("2026-11-01T01:00+01:00", START) == 1_793_491_200.0


@pytest.mark.parametrize("text", ["7 days", "yesterday", "-3d", "2026-13-01", ""])
def test_since_that_is_neither_a_duration_nor_a_date(text: str) -> None:
    with pytest.raises(InputError, match="neither a duration nor a date") as bad:
        parse_since(text, START)
    assert bad.value.hint is not None
    assert "7d" in bad.value.hint


def test_since_in_the_future() -> None:
    with pytest.raises(InputError, match="in the future"):
        parse_since("2030-01-01", START)
