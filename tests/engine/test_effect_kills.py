"""Crash test for effects: real workers SIGKILLed across 500 effects, and the external ledger
holds each effect exactly once.

``crash_worker.py`` processes run ``effect_series`` runs (50 runs of 10 effects) while the
test SIGKILLs them: at random moments (points of progress drawn from a seeded RNG, as in
``test_crash.py``, only workers that own running runs) and at aimed ones, right after the
handler of a chosen effect returned and before its result row is written (``--kill-keys``:
the window where a naive engine executes twice). Killed workers are replaced until every
run completes. Then the external ledger is counted, key by key, against two services:

- one that deduplicates by the idempotency key (``deposits``, UNIQUE key): the effect has no
  ``reconcile``, so an aimed kill makes it execute again, and the service drops the repeat;
- one that does not (``payments``): the effect's ``reconcile`` looks the key up there, so
  the resumed worker records the payment it finds instead of paying again.

A control runs the non-deduplicating service without ``reconcile``: the aimed kill pays
twice, and the same ledger check reports it (the check can fail). Shadow mode, with kills,
completes every run and leaves the ledger empty. On SQLite and on PostgreSQL. Reproduce a
schedule with ``CODARA_CRASH_SEED`` (printed when a test fails).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import codara

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "crash_worker.py"
SEED = int(os.environ.get("CODARA_CRASH_SEED", "20261202"))
RUNS, EFFECTS = 50, 10  # 500 effects
WORKERS = 3
LEASE = "2.0"
DEADLINE = 60.0

pytestmark = [pytest.mark.crash, pytest.mark.timeout(300)]


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("codara_effect_crash_worker", WORKER_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


crash_worker = _load_worker_module()


@dataclass
class Kills:
    """What the schedule did: random victims, and the aimed kills that landed (by key)."""

    random_victims: list[int] = field(default_factory=list)
    aimed: dict[str, int] = field(default_factory=dict)  # key -> pid of the worker it killed
    seconds: float = 0.0

    @property
    def random(self) -> int:
        """Random kills of a live worker (not of one that had just killed itself)."""
        return len(set(self.random_victims) - set(self.aimed.values()))


def _landed(markers: Path | None) -> dict[str, int]:
    """The aimed kills that happened: key -> pid, from the markers the workers left."""
    if markers is None:
        return {}
    found = {}
    for marker in markers.iterdir():
        words = dict(w.split("=", 1) for w in marker.read_text().split() if "=" in w)
        found[words["key"]] = int(words["pid"])
    return found


async def _running_by_pid(app: codara.App) -> dict[int, int]:
    """Running runs per worker pid (worker ids are host:pid:random)."""
    rows = await app.store.execute_raw(
        "SELECT owner, COUNT(*) FROM codara_runs WHERE status = 'running' AND owner IS NOT NULL "
        "GROUP BY owner"
    )
    owned: dict[int, int] = {}
    for owner, n in rows:
        parts = str(owner).rsplit(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            owned[int(parts[1])] = owned.get(int(parts[1]), 0) + int(n)
    return owned


async def _diagnostic(app: codara.App, fleet: Any, kills: Kills) -> str:
    stuck = await app.store.execute_raw(
        "SELECT id, status, owner, attempts FROM codara_runs WHERE status <> 'completed' "
        "ORDER BY id LIMIT 10"
    )
    return (
        f"seed={SEED}; counts by status: {await app.store.count_runs()}; random kills="
        f"{len(kills.random_victims)}, aimed kills={len(kills.aimed)}; workers started="
        f"{fleet.started}, exited={fleet.exited}\nunfinished (first 10): {stuck}\n"
        f"--- worker stderr (tail) ---\n{fleet.tail()}"
    )


async def _run_with_kills(
    app: codara.App,
    fleet: Any,
    *,
    rows: int,
    kills: int,
    rng: random.Random,
    markers: Path | None = None,
) -> Kills:
    """Keep ``WORKERS`` processes working and SIGKILL one at each of ``kills`` random points
    of progress (the share of the ``rows`` journal rows written), replacing every worker that
    died (killed by the test, or by itself at an aimed point, which its marker shows), until
    all runs are completed."""
    done = Kills()
    marks = sorted(rng.uniform(0.05, 0.85) for _ in range(kills))
    seen = 0
    t0 = time.monotonic()
    try:
        for _ in range(WORKERS):
            fleet.start()
        while True:
            fleet.check()
            for pid, code in fleet.exited[seen:]:
                if code != -9 or pid not in _landed(markers).values():
                    pytest.fail(f"worker {pid} exited with {code} by itself\n"
                                + await _diagnostic(app, fleet, done), pytrace=False)  # fmt: skip
                fleet.start()  # it killed itself at an aimed point: replace it
            seen = len(fleet.exited)
            counts = await app.store.count_runs()
            if counts.get("completed", 0) == sum(counts.values()):
                break
            if counts.get("failed"):
                pytest.fail("a run failed\n" + await _diagnostic(app, fleet, done), pytrace=False)
            if time.monotonic() - t0 > DEADLINE:
                pytest.fail(f"runs not all completed after {DEADLINE:.0f} s\n"
                            + await _diagnostic(app, fleet, done), pytrace=False)  # fmt: skip
            await asyncio.sleep(rng.uniform(0.02, 0.1))
            if len(done.random_victims) >= kills:
                continue
            journal = await app.store.execute_raw("SELECT COUNT(*) FROM codara_journal")
            if int(journal[0][0]) / rows < marks[len(done.random_victims)]:
                continue
            owned = await _running_by_pid(app)
            busy = sorted(pid for pid in fleet.pids if owned.get(pid, 0) > 0)
            if busy:  # else the replacements are still starting up
                victim = rng.choice(busy)
                fleet.kill(victim)
                done.random_victims.append(victim)
                fleet.start()
    finally:
        done.seconds = time.monotonic() - t0
        fleet.close()
    done.aimed = _landed(markers)
    return done


async def _open_app(url: str) -> codara.App:
    app = codara.App(url, durability="os")
    crash_worker.register(app)
    await app.open()
    for ddl in crash_worker.SIDE_TABLES:
        await app.store.execute_raw(ddl)
    return app


async def _start(
    app: codara.App, effect: str, *, runs: int = RUNS, n: int = EFFECTS, pause: float = 0.005
) -> tuple[list[str], list[str]]:
    """Enqueue the runs; (their ids, every effect's key in order)."""
    job = {"effect": effect, "n": n, "pause": pause}
    ids = await app.start_runs("effect_series", [job] * runs)
    return ids, [f"{run_id}:r:{i}" for run_id in ids for i in range(n)]


def _aim(tmp_path: Path, keys: list[str], rng: random.Random, count: int) -> list[str]:
    """Worker arguments that kill, once each, right after ``count`` random effects ran."""
    aimed = tmp_path / "aimed-keys"
    aimed.write_text("\n".join(rng.sample(keys, count)))
    markers = tmp_path / "killed"
    markers.mkdir()
    return ["--kill-keys", str(aimed), "--kill-marker", str(markers)]


def _ledger_problems(ledger: list[str], keys: list[str]) -> dict[str, Any]:
    """How the external ledger differs from each effect exactly once: keys found more than
    once (with their count), keys missing, keys no effect has."""
    seen = Counter(ledger)
    problems = {
        "repeated": {k: n for k, n in seen.items() if n > 1},
        "missing": sorted(set(keys) - set(seen)),
        "unknown": sorted(set(seen) - set(keys)),
    }
    return {what: found for what, found in problems.items() if found}


async def _keys_in(app: codara.App, table: str) -> list[str]:
    return [str(k) for (k,) in await app.store.execute_raw(f"SELECT key FROM {table}")]


async def _effect_rows(app: codara.App, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each effect's journal rows, by key: [(status, via of an ok row)]."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for run_id in ids:
        for r in await app.journal(run_id):
            if r.kind == "effect":
                via = json.loads(r.output)["via"] if r.output else ""
                rows.setdefault(f"{run_id}:r:{r.op}", []).append((r.status, via))
    return rows


async def _assert_completed(app: codara.App, ids: list[str], n: int = EFFECTS) -> None:
    """Every run completed with the count of its ``n`` effects; the audit chain holds."""
    records = [await app.get_run(run_id) for run_id in ids]
    assert Counter(r.status for r in records) == {"completed": len(ids)}
    assert {await app.output(run_id) for run_id in ids} == {n}
    report = await app.verify()
    assert report.ok, f"audit problems: {report.problems[:10]}"
    assert report.runs_checked == len(ids)


async def _assert_interrupted(app: codara.App, fleet: Any, kills: Kills) -> int:
    """Workers really died with work in flight, and others resumed it; the survivors
    logged no error."""
    assert kills.random > 0, f"no random kill happened (seed={SEED})"
    resumed = await app.store.execute_raw("SELECT COUNT(*) FROM codara_runs WHERE attempts > 1")
    assert int(resumed[0][0]) > 0, "no run was claimed twice: the kills interrupted nothing"
    assert "Traceback" not in fleet.log_text(), fleet.tail()
    return int(resumed[0][0])


def _assert_claimed_then_done(journal: dict[str, list[tuple[str, str]]], keys: list[str]) -> None:
    """Each effect has one claim and one result in the journal, whatever was killed when."""
    odd = {k: rows for k, rows in journal.items() if [s for s, _ in rows] != ["claimed", "ok"]}
    assert not odd, f"{len(odd)} effects are not a claim and a result, e.g. {list(odd.items())[:3]}"
    assert sorted(journal) == sorted(keys)


def _report(name: str, url: str, kills: Kills, fleet: Any, extra: str) -> None:
    print(
        f"\n[{name} on {url.split(':')[0]}] seed={SEED} {kills.seconds:.1f} s, random kills="
        f"{kills.random}, aimed kills={len(kills.aimed)}, workers started={fleet.started}"
        f"{extra}"
    )


async def test_random_and_aimed_kills_across_500_effects_leave_each_once_in_a_deduplicating_service(
    db_url: str, tmp_path: Path
) -> None:
    """No reconcile: an effect killed after it ran is executed again with the same key, and
    the service's UNIQUE key keeps one deposit."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    app = await _open_app(db_url)
    try:
        ids, keys = await _start(app, "deposit")
        aim = _aim(tmp_path, keys, rng, 4)
        fleet = crash_worker.Fleet(
            db_url, tmp_path, "--lease", LEASE, "--kill-at", "effect.executed:deposit", *aim
        )
        kills = await _run_with_kills(
            app, fleet, rows=RUNS * (2 * EFFECTS + 1), kills=4, rng=rng,
            markers=tmp_path / "killed",
        )  # fmt: skip
        await _assert_completed(app, ids)
        deposits = await _keys_in(app, "deposits")
        assert not _ledger_problems(deposits, keys), _ledger_problems(deposits, keys)
        assert len(deposits) == RUNS * EFFECTS

        assert kills.aimed, f"no aimed kill landed (seed={SEED})"
        attempts = Counter(await _keys_in(app, "effect_attempts"))
        journal = await _effect_rows(app, ids)
        _assert_claimed_then_done(journal, keys)
        for key in kills.aimed:  # killed after it ran: executed again, deposited once
            assert attempts[key] >= 2, (key, attempts[key])
            assert journal[key] == [("claimed", ""), ("ok", "executed")], (key, journal[key])
        resumed = await _assert_interrupted(app, fleet, kills)
        repeats = sum(n - 1 for n in attempts.values())
        _report("deposits", db_url, kills, fleet,
                f", runs resumed={resumed}, effects executed again={repeats}")  # fmt: skip
    finally:
        await app.close()


async def test_random_and_aimed_kills_across_500_effects_never_pay_twice_thanks_to_reconcile(
    db_url: str, tmp_path: Path
) -> None:
    """The payments service does not deduplicate: an effect killed after it paid is found by
    ``reconcile`` on resume, recorded as reconciled, and not paid again."""
    print(f"seed={SEED}")
    rng = random.Random(SEED + 1)
    app = await _open_app(db_url)
    try:
        ids, keys = await _start(app, "pay")
        aim = _aim(tmp_path, keys, rng, 4)
        fleet = crash_worker.Fleet(
            db_url, tmp_path, "--lease", LEASE, "--kill-at", "effect.executed:pay", *aim
        )
        kills = await _run_with_kills(
            app, fleet, rows=RUNS * (2 * EFFECTS + 1), kills=4, rng=rng,
            markers=tmp_path / "killed",
        )  # fmt: skip
        await _assert_completed(app, ids)
        payments = await _keys_in(app, "payments")
        assert not _ledger_problems(payments, keys), _ledger_problems(payments, keys)
        assert len(payments) == RUNS * EFFECTS

        assert kills.aimed, f"no aimed kill landed (seed={SEED})"
        journal = await _effect_rows(app, ids)
        _assert_claimed_then_done(journal, keys)
        for key in kills.aimed:  # killed after it paid: reconcile found the payment
            assert journal[key] == [("claimed", ""), ("ok", "reconciled")], (key, journal[key])
        resumed = await _assert_interrupted(app, fleet, kills)
        reconciled = sum(rows[1] == ("ok", "reconciled") for rows in journal.values())
        _report("payments", db_url, kills, fleet,
                f", runs resumed={resumed}, payments reconciled={reconciled}")  # fmt: skip
    finally:
        await app.close()


async def test_control_without_reconcile_the_aimed_kill_pays_twice_and_the_check_sees_it(
    db_url: str, tmp_path: Path
) -> None:
    """The ledger check can fail: the same payments service and the same aimed kill, with an
    effect (``pay_blind``) that has no ``reconcile``, pay the killed effect twice."""
    app = await _open_app(db_url)
    try:
        ids, keys = await _start(app, "pay_blind", runs=1, n=3)
        (tmp_path / "aimed-keys").write_text(keys[1])
        (tmp_path / "killed").mkdir()
        fleet = crash_worker.Fleet(
            db_url, tmp_path, "--lease", "1.0", "--kill-at", "effect.executed:pay_blind",
            "--kill-keys", str(tmp_path / "aimed-keys"), "--kill-marker", str(tmp_path / "killed"),
        )  # fmt: skip
        kills = await _run_with_kills(
            app, fleet, rows=7, kills=0, rng=random.Random(SEED), markers=tmp_path / "killed"
        )
        assert list(kills.aimed) == [keys[1]]
        await _assert_completed(app, ids, n=3)
        payments = await _keys_in(app, "payments")
        assert _ledger_problems(payments, keys) == {"repeated": {keys[1]: 2}}
        assert (await _effect_rows(app, ids))[keys[1]] == [("claimed", ""), ("ok", "executed")]
    finally:
        await app.close()


async def test_shadow_mode_under_kills_completes_every_run_and_executes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """``effects = "shadow"`` for the workflow: each effect is one ``ok`` row via shadow with
    the shadow result; no handler ever ran (the ledger and the attempts log are empty)."""
    print(f"seed={SEED}")
    rng = random.Random(SEED + 2)
    app = await _open_app(db_url)
    try:
        ids, keys = await _start(app, "pay", pause=0.01)
        fleet = crash_worker.Fleet(db_url, tmp_path, "--lease", LEASE, "--shadow", "effect_series")
        kills = await _run_with_kills(app, fleet, rows=RUNS * (EFFECTS + 1), kills=4, rng=rng)
        await _assert_completed(app, ids)
        assert await _keys_in(app, "payments") == []
        assert await _keys_in(app, "effect_attempts") == []
        journal = await _effect_rows(app, ids)
        assert journal == {key: [("ok", "shadow")] for key in keys}
        results = [
            [json.loads(r.output or "null")["result"] for r in await app.journal(run_id)
             if r.kind == "effect"]
            for run_id in ids
        ]  # fmt: skip
        assert results == [[f"shadow:{i}" for i in range(EFFECTS)]] * RUNS  # shadow(args)
        resumed = await _assert_interrupted(app, fleet, kills)
        _report("shadow", db_url, kills, fleet, f", runs resumed={resumed}")
    finally:
        await app.close()
