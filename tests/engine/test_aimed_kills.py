"""Aimed crash tests: a real worker process SIGKILLs itself at one exact point of one step.

The random kills of ``test_crash.py`` land wherever they land; these land where a durable
engine is most likely to lose or repeat work. ``tests/engine/crash_worker.py --kill-at
POINT:STEP`` kills its worker at the engine's fault hooks (``step.executed``: the step's
function returned, its journal row is not written; ``step.journaled``: the row is durable,
the workflow has not seen the result) or inside a ``ctx.transaction`` body (``tx.body``:
its INSERT is made, the transaction has not committed). It does so once, creating a marker
file just before the kill. Each test checks the state the kill left (it hit the aimed
point), then lets a fresh worker resume the run and checks what was executed, journaled and
written: on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import codara

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "crash_worker.py"
DEADLINE = 90.0  # the most a worker may take to reach the point, or a run to complete
STEPS = 3

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("codara_aimed_crash_worker", WORKER_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash_worker = _load_worker_module()


@dataclass
class AtDeath:
    """What the store and the side tables held when the aimed worker had died."""

    victim: int
    marker: str
    journal: list[str]  # names of the run's journal rows
    attempts: Counter[str]  # effect_attempts by key
    ledger: Counter[int]  # ledger rows by step


async def _side_state(app: codara.App, run_id: str) -> tuple[Counter[str], Counter[int]]:
    attempts = Counter(
        str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effect_attempts")
    )
    ledger = Counter(
        int(step)
        for (step,) in await app.store.execute_raw(
            "SELECT step FROM ledger WHERE run_id = ?", (run_id,)
        )
    )
    return attempts, ledger


async def _kill_then_resume(
    app: codara.App, tmp_path: Path, run_id: str, kill_at: str, until: str = "completed"
) -> tuple[AtDeath, Any]:
    """One worker dies at ``kill_at``; then a fresh one resumes the run to its end."""
    marker = tmp_path / "killed"
    fleet = crash_worker.Fleet(
        app.settings.store.url, tmp_path, "--lease", "1.0", "--poll", "0.05",
        "--kill-at", kill_at, "--kill-marker", str(marker), "--resume-lease", "30",
    )  # fmt: skip
    try:
        victim = fleet.start()
        t0 = time.monotonic()
        while not fleet.exited:
            assert time.monotonic() - t0 < DEADLINE, f"no kill at {kill_at}:\n{fleet.tail()}"
            await asyncio.sleep(0.05)
            fleet.check()
        assert fleet.exited == [(victim, -9)], f"not SIGKILLed:\n{fleet.tail()}"
        attempts, ledger = await _side_state(app, run_id)
        at_death = AtDeath(
            victim,
            marker.read_text(),
            [r.name for r in await app.journal(run_id)],
            attempts,
            ledger,
        )
        # its lease has to lapse (a cancelled run being undone stays "cancelling")
        assert (await app.get_run(run_id)).status in ("running", "cancelling")

        fleet.start()  # the marker exists: this one runs to the end
        t0 = time.monotonic()
        while (await app.get_run(run_id)).status != until:
            assert time.monotonic() - t0 < DEADLINE, f"not resumed:\n{fleet.tail()}"
            await asyncio.sleep(0.05)
        fleet.check()
        assert fleet.exited == [(victim, -9)], "the resuming worker exited"
        assert "Traceback" not in fleet.log_text(), fleet.tail()
    finally:
        fleet.close()
    return at_death, fleet


async def _open_app(url: str) -> codara.App:
    app = codara.App(url, durability="os")
    crash_worker.register(app)
    await app.open()
    for ddl in crash_worker.SIDE_TABLES:
        await app.store.execute_raw(ddl)
    return app


async def _assert_resumed_cleanly(app: codara.App, run_id: str, kind: str) -> None:
    """Completed with the right output, once, after exactly two claims; journal and audit
    chain intact: one row per operation."""
    run = await app.get_run(run_id)
    assert run.status == "completed"
    assert run.attempts == 2
    assert await app.output(run_id) == STEPS
    journal = [(r.op, r.kind, r.name, r.status) for r in await app.journal(run_id)]
    assert journal == [
        *((i, kind, f"s{i}", "ok") for i in range(STEPS)),
        (-1, "result", "completed", "completed"),
    ]
    report = await app.verify()
    assert report.ok, report.problems
    assert report.runs_checked == 1


async def _effect_writers(app: codara.App, key: str) -> list[int]:
    rows = await app.store.execute_raw("SELECT worker FROM effect_attempts WHERE key = ?", (key,))
    return sorted(int(w) for (w,) in rows)


async def test_a_kill_after_a_step_ran_and_before_its_row_runs_it_again_once(
    db_url: str, tmp_path: Path
) -> None:
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("idem", STEPS)
        at_death, fleet = await _kill_then_resume(app, tmp_path, run_id, "step.executed:s1")
        key = f"{run_id}:1"
        # the aimed point: s1's effect happened, its journal row did not
        assert at_death.marker.startswith(f"step.executed s1 pid={at_death.victim}")
        assert at_death.journal == ["s0"]
        assert at_death.attempts == {f"{run_id}:0": 1, key: 1}

        await _assert_resumed_cleanly(app, run_id, "step")
        attempts, _ = await _side_state(app, run_id)
        # s1 ran twice (at least once: the dead worker's execution, then the replay's),
        # every other step once; the keyed effect took effect once
        assert attempts == {f"{run_id}:0": 1, key: 2, f"{run_id}:2": 1}
        writers = await _effect_writers(app, key)
        assert len(set(writers)) == 2
        assert at_death.victim in writers
        effects = [str(k) for (k,) in await app.store.execute_raw("SELECT key FROM effects")]
        assert sorted(effects) == sorted(f"{run_id}:{i}" for i in range(STEPS))
        assert fleet.started == 2
    finally:
        await app.close()


async def test_a_kill_after_a_steps_row_is_durable_never_runs_it_again(
    db_url: str, tmp_path: Path
) -> None:
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("idem", STEPS)
        at_death, _ = await _kill_then_resume(app, tmp_path, run_id, "step.journaled:s1")
        key = f"{run_id}:1"
        # the aimed point: s1's row is durable, s2 never started
        assert at_death.marker.startswith(f"step.journaled s1 pid={at_death.victim}")
        assert at_death.journal == ["s0", "s1"]
        assert at_death.attempts == {f"{run_id}:0": 1, key: 1}

        await _assert_resumed_cleanly(app, run_id, "step")
        attempts, _ = await _side_state(app, run_id)
        # s1 executed exactly once in all: the replay took its result from the journal
        assert attempts == {f"{run_id}:0": 1, key: 1, f"{run_id}:2": 1}
        assert await _effect_writers(app, key) == [at_death.victim]
    finally:
        await app.close()


async def test_a_kill_inside_a_transaction_body_leaves_its_writes_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("ledger", STEPS)
        at_death, _ = await _kill_then_resume(app, tmp_path, run_id, "tx.body:s1")
        # the aimed point: s1's INSERT was made inside its transaction (the body saw its own
        # row), then the process died before the commit: neither the row nor the journal
        # row survived
        assert at_death.marker == f"tx.body s1 pid={at_death.victim} rows_in_tx=1"
        assert at_death.journal == ["s0"]
        assert at_death.ledger == {0: 1}

        await _assert_resumed_cleanly(app, run_id, "transaction")
        _, ledger = await _side_state(app, run_id)
        assert ledger == {i: 1 for i in range(STEPS)}  # each step's write exactly once
        rows = await app.store.execute_raw(
            "SELECT worker FROM ledger WHERE run_id = ? AND step = 1", (run_id,)
        )
        assert [int(w) for (w,) in rows] != [at_death.victim]  # written by the replacement
    finally:
        await app.close()


# -- effects (ctx.effect) into a payments system that does NOT deduplicate -------------------
async def _payments(app: codara.App, run_id: str) -> tuple[Counter[str], Counter[str]]:
    """(payments by key, handler attempts by key) of the run's effects."""
    like = f"{run_id}:%"
    paid = Counter(str(k) for (k,) in await app.store.execute_raw(
        "SELECT key FROM payments WHERE key LIKE ?", (like,)))  # fmt: skip
    tried = Counter(str(k) for (k,) in await app.store.execute_raw(
        "SELECT key FROM effect_attempts WHERE key LIKE ?", (like,)))  # fmt: skip
    return paid, tried


async def _assert_effects_once(app: codara.App, run_id: str) -> None:
    run = await app.get_run(run_id)
    assert run.status == "completed"
    assert await app.output(run_id) == STEPS
    rows = [(r.op, r.kind, r.status) for r in await app.journal(run_id)]
    assert rows == [
        *(row for i in range(STEPS) for row in ((i, "effect", "claimed"), (i, "effect", "ok"))),
        (-1, "result", "completed"),
    ]
    report = await app.verify()
    assert report.ok, report.problems
    paid, _ = await _payments(app, run_id)
    assert paid == {f"{run_id}:r:{i}": 1 for i in range(STEPS)}  # each payment exactly once


async def test_a_kill_after_an_effect_ran_is_reconciled_and_never_paid_twice(
    db_url: str, tmp_path: Path
) -> None:
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("pays", STEPS)
        at_death, _ = await _kill_then_resume(app, tmp_path, run_id, "effect.executed:pay")
        first = f"{run_id}:r:0"
        # the aimed point: the first payment was made, its result row was not written
        assert at_death.marker.startswith(f"effect.executed pay pid={at_death.victim}")
        assert at_death.journal == ["pay"]  # the claim alone
        assert at_death.attempts == {first: 1}  # paid once (effect_attempts at the kill)

        await _assert_effects_once(app, run_id)
        _, tried = await _payments(app, run_id)
        assert tried[first] == 1  # the resumed worker asked reconcile; it did not pay again
        rows = [r for r in await app.journal(run_id) if r.op == 0]
        assert '"via":"reconciled"' in (rows[1].output or "").replace(" ", "")
    finally:
        await app.close()


async def test_a_kill_after_an_effects_claim_executes_it_once_on_resume(
    db_url: str, tmp_path: Path
) -> None:
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("pays", STEPS)
        at_death, _ = await _kill_then_resume(app, tmp_path, run_id, "effect.claimed:pay")
        first = f"{run_id}:r:0"
        # the aimed point: the claim is durable, nothing was paid
        assert at_death.marker.startswith(f"effect.claimed pay pid={at_death.victim}")
        assert at_death.journal == ["pay"]
        assert at_death.attempts == Counter()

        await _assert_effects_once(app, run_id)
        _, tried = await _payments(app, run_id)
        assert tried[first] == 1  # reconcile said "not paid": executed once, by the resumer
    finally:
        await app.close()


async def test_a_kill_during_compensation_undoes_each_payment_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    """The workflow fails after three payments; the worker is killed right after the first
    compensation (the newest payment's refund) ran and before its row: the resumer asks
    ``compensated``, does not refund it again, and refunds the other two, newest first."""
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("pays_then_fails", STEPS)
        at_death, _ = await _kill_then_resume(
            app, tmp_path, run_id, "compensate.executed:pay", until="failed"
        )
        assert at_death.marker.startswith(f"compensate.executed pay pid={at_death.victim}")
        refunds = [str(k) for (k,) in await app.store.execute_raw(
            "SELECT key FROM refunds ORDER BY rowid" if db_url.startswith("sqlite")
            else "SELECT key FROM refunds ORDER BY ctid")]  # fmt: skip
        keys = [f"{run_id}:r:{i}" for i in range(STEPS)]
        assert refunds == list(reversed(keys))  # each once, newest first
        paid, _ = await _payments(app, run_id)
        assert paid == dict.fromkeys(keys, 1)
        rows = [(r.kind, r.status) for r in await app.journal(run_id) if r.kind == "compensate"]
        assert rows == [("compensate", "claimed"), ("compensate", "ok")] * STEPS
        report = await app.verify()
        assert report.ok, report.problems
    finally:
        await app.close()


async def test_a_kill_while_undoing_a_cancelled_run_refunds_each_payment_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    """Three payments, then the run waits and is cancelled. The worker undoing it is killed
    right after the first refund ran and before its row: the resumer asks ``compensated``,
    does not refund it again, refunds the other two newest first, pays nothing new, and
    ends the run cancelled."""
    app = await _open_app(db_url)
    try:
        run_id = await app.start_run("pays_then_waits", STEPS)
        (tmp_path / "w").mkdir()
        fleet = crash_worker.Fleet(app.settings.store.url, tmp_path / "w", "--lease", "1.0")
        try:
            fleet.start()
            t0 = time.monotonic()
            while (await app.get_run(run_id)).status != "waiting":
                assert time.monotonic() - t0 < DEADLINE, f"never waited:\n{fleet.tail()}"
                await asyncio.sleep(0.05)
        finally:
            fleet.close()
        await app.cancel(run_id)
        assert (await app.get_run(run_id)).status == "cancelling"
        at_death, _ = await _kill_then_resume(
            app, tmp_path, run_id, "compensate.executed:pay", until="cancelled"
        )
        assert at_death.marker.startswith(f"compensate.executed pay pid={at_death.victim}")
        refunds = [str(k) for (k,) in await app.store.execute_raw(
            "SELECT key FROM refunds ORDER BY rowid" if db_url.startswith("sqlite")
            else "SELECT key FROM refunds ORDER BY ctid")]  # fmt: skip
        keys = [f"{run_id}:r:{i}" for i in range(STEPS)]
        assert refunds == list(reversed(keys))  # each once, newest first
        paid, _ = await _payments(app, run_id)
        assert paid == dict.fromkeys(keys, 1)  # and the payment after the wait never made
        rows = [(r.branch, r.status) for r in await app.journal(run_id) if r.kind == "compensate"]
        assert rows == [("cancel", "claimed"), ("cancel", "ok")] * STEPS
        report = await app.verify()
        assert report.ok, report.problems
    finally:
        await app.close()
