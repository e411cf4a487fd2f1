"""The codara CLI on its happy paths: run, inspect, signal, cancel, worker, db, audit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, ProcFn, Project


def _json(text: str) -> Any:
    return json.loads(text)


def _only_run(project: Project, cli: CliFn) -> dict[str, Any]:
    result = cli(project, "runs", "list", "--json")
    assert result.exit_code == 0, result.output
    runs = _json(result.stdout)["runs"]
    assert len(runs) == 1
    return dict(runs[0])


def _wait_for_status(project: Project, run_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = project.sql("SELECT status FROM codara_runs WHERE id = ?", (run_id,))
        if rows and rows[0][0] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never became {status}")


def test_run_show_and_audit(any_project: Project, cli: CliFn) -> None:
    """On SQLite and PostgreSQL: run and wait, show the journal, verify, tamper, verify."""
    p = any_project
    result = cli(p, "run", "greet", "--input", '{"name": "ada"}')
    assert result.exit_code == 0, result.output
    assert _json(result.stdout) == {"greeting": "HELLO ADA", "length": 9}
    run = _only_run(p, cli)
    assert (run["workflow"], run["status"]) == ("greet", "completed")
    run_id = run["id"]
    assert run_id in result.stderr

    shown = cli(p, "runs", "show", run_id)
    assert shown.exit_code == 0, shown.output
    for text in ("#0 step shout ok", "#1 step count ok", "#2 result completed", "HELLO ADA"):
        assert text in shown.stdout

    ok = cli(p, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "checked 1 run(s), 3 journal row(s)" in ok.stdout
    assert "intact" in ok.stdout

    p.sql(
        "UPDATE codara_journal SET output = ? WHERE run_id = ? AND seq = 0",
        ('"HELLO EVE"', run_id),
    )
    bad = cli(p, "audit", "verify")
    assert bad.exit_code == 20, bad.output
    assert f"run {run_id} row #0 (step 'shout'): row content was edited" in bad.stdout
    as_json = cli(p, "audit", "verify", run_id, "--json")
    assert as_json.exit_code == 20
    report = _json(as_json.stdout)
    assert report["ok"] is False
    assert report["problems"][0] == {
        "run_id": run_id,
        "seq": 0,
        "row": "step 'shout'",
        "problem": "row content was edited",
    }


def test_json_output_parses(project: Project, cli: CliFn) -> None:
    result = cli(project, "run", "greet", "--json", "--input", '{"name": "bo"}')
    assert result.exit_code == 0, result.output
    data = _json(result.stdout)
    assert data["status"] == "completed"
    assert data["output"] == {"greeting": "HELLO BO", "length": 8}
    # the global --json works too, for every command
    shown = cli(project, "--json", "runs", "show", data["run_id"])
    journal = _json(shown.stdout)["journal"]
    assert [(r["kind"], r["name"]) for r in journal] == [
        ("step", "shout"),
        ("step", "count"),
        ("result", "completed"),
    ]
    assert journal[0]["output"] == "HELLO BO"
    listed = _json(cli(project, "runs", "list", "--json", "--workflow", "greet").stdout)
    assert [r["id"] for r in listed["runs"]] == [data["run_id"]]
    assert _json(cli(project, "runs", "list", "--json", "--workflow", "nap").stdout) == {"runs": []}


def test_show_truncates_long_values_unless_full(project: Project, cli: CliFn) -> None:
    name = "x" * 200
    assert cli(project, "run", "greet", "--input", json.dumps({"name": name})).exit_code == 0
    run_id = _only_run(project, cli)["id"]
    short = cli(project, "runs", "show", run_id).stdout
    assert "X" * 200 not in short
    assert "…" in short
    full = cli(project, "runs", "show", run_id, "--full").stdout
    assert "X" * 200 in "".join(full.replace("│", "").split())  # whole, though maybe wrapped


def test_no_wait_then_worker_until_idle(project: Project, cli: CliFn) -> None:
    queued = cli(project, "run", "greet", "--no-wait")
    assert queued.exit_code == 0, queued.output
    run_id = queued.stdout.strip()
    table = cli(project, "runs", "list", "--status", "queued")
    assert run_id in table.stdout
    assert "greet@1" in table.stdout
    worked = cli(project, "worker", "--until-idle")
    assert worked.exit_code == 0, worked.output
    assert "stopped after executing 1 run(s)" in worked.stderr
    assert _only_run(project, cli)["output"] == {"greeting": "HELLO WORLD", "length": 11}


def test_codara_worker_executes_the_apps_effects(project: Project, cli: CliFn) -> None:
    """`codara worker` builds its App from the user's: the effects come along (they did
    not: a workflow calling ctx.effect failed with 'no effect of that name')."""
    run_id = cli(project, "run", "notify", "--input", '"ops"', "--no-wait").stdout.strip()
    worked = cli(project, "worker", "--until-idle")
    assert worked.exit_code == 0, worked.output
    shown = _only_run(project, cli)
    assert shown["status"] == "completed", shown
    assert shown["output"] == "sent ops"
    assert run_id


def test_cancel(project: Project, cli: CliFn) -> None:
    run_id = cli(project, "run", "approval", "--no-wait").stdout.strip()
    result = cli(project, "runs", "cancel", run_id, "--json")
    assert result.exit_code == 0, result.output
    assert _json(result.stdout) == {"run_id": run_id, "status": "cancelled"}
    # a worker finds nothing to do
    assert "executing 0 run(s)" in cli(project, "worker", "--until-idle").stderr


def test_a_run_waiting_for_a_review_points_to_codara_review(project: Project, cli: CliFn) -> None:
    """Not to `codara signal`: a review signal is reserved and would be refused."""
    parked = cli(project, "run", "payout", "--input", "500", "--timeout", "0")
    assert parked.exit_code == 21, parked.output
    assert "codara review approve" in parked.stderr
    assert "codara signal" not in parked.stderr
    run = _only_run(project, cli)
    forged = cli(project, "signal", run["id"], run["waiting_for"], "--payload", "{}")
    assert forged.exit_code == 14, forged.output


def test_signal_resumes_a_waiting_run(project: Project, cli: CliFn) -> None:
    parked = cli(project, "run", "approval", "--timeout", "0")
    assert parked.exit_code == 21, parked.output
    run = _only_run(project, cli)
    assert (run["status"], run["waiting_for"]) == ("waiting", "approve")
    assert f"codara signal {run['id']} approve" in parked.stderr

    sent = cli(project, "signal", run["id"], "approve", "--payload", '{"ok": true}')
    assert sent.exit_code == 0, sent.output
    assert "queued" in sent.stderr
    assert cli(project, "worker", "--until-idle").exit_code == 0
    run = _only_run(project, cli)
    assert (run["status"], run["output"]) == ("completed", {"decision": {"ok": True}})


def test_run_waits_for_a_signal_from_another_process(
    project: Project, cli: CliFn, proc: ProcFn
) -> None:
    """A real `codara run --wait` process picks the run up again once a signal arrives."""
    assert cli(project, "db", "upgrade").exit_code == 0
    waiter = subprocess.Popen(
        [sys.executable, "-m", "codara", "run", "approval", "--json", "--timeout", "60"],
        cwd=project.path,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not project.sql("SELECT id FROM codara_runs WHERE status = 'waiting'"):
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run_id = str(project.sql("SELECT id FROM codara_runs")[0][0])
        assert cli(project, "signal", run_id, "approve", "--payload", '"yes"').exit_code == 0
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert _json(out)["output"] == {"decision": "yes"}


def test_csv_and_jsonl_start_one_run_per_row(project: Project, cli: CliFn) -> None:
    csv_file = project.path / "tickets.csv"
    csv_file.write_text(
        'text,customer\n"Where is my invoice, please?",acme\nThe app crashes,globex\n',
        encoding="utf-8",
    )
    result = cli(project, "run", "triage", "--input-file", str(csv_file), "--json")
    assert result.exit_code == 0, result.output
    runs = _json(result.stdout)["runs"]
    assert [r["output"] for r in runs] == [
        {"customer": "acme", "label": "billing"},
        {"customer": "globex", "label": "other"},
    ]
    lines = project.path / "people.jsonl"
    lines.write_text('{"name": "a"}\n\n{"name": "b"}\n', encoding="utf-8")
    table = cli(project, "run", "greet", "-f", str(lines))
    assert table.exit_code == 0, table.output
    assert "HELLO A" in table.stdout
    assert "HELLO B" in table.stdout
    assert project.count_runs() == 4


def test_failed_run_exits_13_and_timers_are_slept_through(project: Project, cli: CliFn) -> None:
    failed = cli(project, "run", "boom")
    assert failed.exit_code == 13
    assert "the widget exploded" in failed.stderr
    assert "hint: see `codara runs show" in failed.stderr
    rested = cli(project, "run", "nap")
    assert rested.exit_code == 0, rested.output
    assert _json(rested.stdout) == "rested"


def test_db_upgrade_and_status(project: Project, cli: CliFn) -> None:
    before = cli(project, "db", "status", "--json")
    assert before.exit_code == 0, before.output
    state = _json(before.stdout)
    assert (state["current"], state["up_to_date"]) == (None, False)
    assert cli(project, "db", "status", "--check").exit_code == 9

    up = cli(project, "db", "upgrade")
    assert up.exit_code == 0, up.output
    assert f"schema upgraded from empty to {state['head']}" in up.stderr
    again = cli(project, "db", "upgrade")
    assert "already at" in again.stderr
    status = cli(project, "db", "status")
    assert status.exit_code == 0
    assert "up to date" in status.stdout
    assert cli(project, "db", "status", "--check").exit_code == 0


def test_app_and_store_from_codara_toml(project: Project, cli: CliFn, tmp_path: Path) -> None:
    """[app] module and [store] url in codara.toml, or in the file named by --config."""
    del project.env["CODARA_APP"], project.env["CODARA_DATABASE_URL"]
    db = tmp_path / "from-toml.db"
    (project.path / "codara.toml").write_text(
        f'[app]\nmodule = "sample_app:app"\n\n[store]\nurl = "sqlite:///{db}"\n', "utf-8"
    )
    result = cli(project, "run", "greet")
    assert result.exit_code == 0, result.output
    assert db.exists()
    other = tmp_path / "other.toml"
    other.write_text(f'[app]\nmodule = "sample_app"\n[store]\nurl = "sqlite:///{db}"\n', "utf-8")
    listed = cli(project, "--config", str(other), "runs", "list", "--json")
    assert len(_json(listed.stdout)["runs"]) == 1


def test_worker_stops_on_sigterm_and_hands_back_its_claims(project: Project, cli: CliFn) -> None:
    run_id = cli(project, "run", "slow", "--no-wait").stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "-m", "codara", "worker", "--concurrency", "2"],
        cwd=project.path,
        env={**project.env, "CODARA_SHUTDOWN_GRACE_SECONDS": "1"},  # the step takes 60 s
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_status(project, run_id, "running")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, err
    assert "SIGTERM received" in err
    assert "stopped after executing 1 run(s)" in err
    assert "Traceback" not in err
    status, owner = project.sql("SELECT status, owner FROM codara_runs WHERE id = ?", (run_id,))[0]
    assert (status, owner) == ("queued", None)  # handed back: any worker takes it at once
