"""Operating workers for real: graceful SIGTERM, a store outage, poison runs, retry and fork.

The workers are real ``codara worker`` processes running ``ops_app`` (see ``ops_app.py``);
its steps note every execution in ``$OPS_LOG``, so the tests count executions across
processes.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, ProcFn, Project


def _ops(project: Project, tmp_path: Path, **env: str) -> Project:
    log = tmp_path / "ops.log"
    return dataclasses.replace(
        project, env={**project.env, "CODARA_APP": "ops_app:app", "OPS_LOG": str(log), **env}
    )


def _log(project: Project) -> list[str]:
    path = Path(project.env["OPS_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def _wait_for_line(project: Project, line: str, worker: subprocess.Popen[str]) -> None:
    for _ in range(1200):
        if line in _log(project):
            return
        assert worker.poll() is None, f"the worker exited early ({worker.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared in the step log")


def _worker(project: Project, err: Path) -> subprocess.Popen[str]:
    with open(err, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "codara", "worker"],
            cwd=project.path,
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )


def _stop(worker: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM, then wait at most ``timeout`` s (a wide bound: the test fails if it hangs)."""
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=timeout)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _enqueue(project: Project, cli: CliFn, workflow: str, data: Any) -> str:
    result = cli(project, "run", workflow, "--input", json.dumps(data), "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


def _run_row(project: Project, run_id: str) -> tuple[Any, ...]:
    return project.sql("SELECT status, owner, error FROM codara_runs WHERE id = ?", (run_id,))[0]


def _journal(project: Project, run_id: str) -> list[tuple[Any, ...]]:
    return project.sql(
        "SELECT seq, op, kind, name, status FROM codara_journal WHERE run_id = ? ORDER BY seq",
        (run_id,),
    )


# -- graceful shutdown ------------------------------------------------------------------------
def test_sigterm_lets_the_step_in_flight_finish_once(
    any_project: Project, cli: CliFn, proc: ProcFn, tmp_path: Path
) -> None:
    project = _ops(any_project, tmp_path, CODARA_SHUTDOWN_GRACE_SECONDS="30")
    run_id = _enqueue(project, cli, "paced", {"seconds": 1})
    err = tmp_path / "worker.err"
    worker = _worker(project, err)
    _wait_for_line(project, f"{run_id} s1 start", worker)
    code = _stop(worker, timeout=60)  # the grace is 30 s; the step needs 1
    stderr = err.read_text()
    assert code == 0, stderr
    assert "SIGTERM received" in stderr
    assert "Traceback" not in stderr
    assert f"{run_id} s1 end" in _log(project)  # it finished, not cancelled
    s1 = [row for row in _journal(project, run_id) if row[3] == "s1"]
    assert [row[4] for row in s1] == ["ok"]  # journaled, once
    status, owner, _ = _run_row(project, run_id)
    assert owner is None
    assert status in ("queued", "completed")  # handed back at its next operation, or done

    finished = proc(project, "worker", "--until-idle")
    assert finished.returncode == 0, finished.stderr
    assert _run_row(project, run_id)[0] == "completed"
    assert _log(project).count(f"{run_id} s1 start") == 1  # never executed again
    assert _log(project).count(f"{run_id} s2") == 1


def test_a_step_longer_than_the_grace_is_handed_back_and_resumed_by_another_worker(
    any_project: Project, cli: CliFn, proc: ProcFn, tmp_path: Path
) -> None:
    project = _ops(any_project, tmp_path, CODARA_SHUTDOWN_GRACE_SECONDS="1")
    run_id = _enqueue(project, cli, "stubborn", {"seconds": 120})
    err = tmp_path / "worker.err"
    worker = _worker(project, err)
    _wait_for_line(project, f"{run_id} long start", worker)
    code = _stop(worker, timeout=60)  # far less than the step's 120 s
    stderr = err.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    status, owner, _ = _run_row(project, run_id)
    assert (status, owner) == ("queued", None)  # handed back: ready for any worker now
    assert _journal(project, run_id) == []  # the cancelled step left no row

    finished = proc(project, "worker", "--until-idle")
    assert finished.returncode == 0, finished.stderr
    assert _run_row(project, run_id)[0] == "completed"
    assert _log(project).count(f"{run_id} long start") == 2
    assert [row[3] for row in _journal(project, run_id)] == ["long", "completed"]


def test_sigterm_is_honoured_while_the_store_fails(
    any_project: Project, cli: CliFn, tmp_path: Path
) -> None:
    project = _ops(any_project, tmp_path, CODARA_SHUTDOWN_GRACE_SECONDS="30")
    cli(project, "db", "upgrade")
    err = tmp_path / "worker.err"
    worker = _worker(project, err)
    try:
        for _ in range(1200):
            if "worker " in err.read_text() and "started" in err.read_text():
                break
            time.sleep(0.05)
        # every claim fails from now on: the queue's table is gone
        project.sql("ALTER TABLE codara_runs RENAME TO codara_runs_away")
        for _ in range(1200):
            if err.read_text().count("claiming failed") >= 2:
                break
            assert worker.poll() is None, err.read_text()
            time.sleep(0.05)
        code = _stop(worker, timeout=60)
    finally:
        project.sql("ALTER TABLE codara_runs_away RENAME TO codara_runs")
    stderr = err.read_text()
    assert code == 0, stderr
    assert stderr.count("claiming failed") >= 2
    assert "Traceback" not in stderr


# -- poison runs -------------------------------------------------------------------------------
def test_a_run_that_kills_its_worker_fails_as_poison_after_max_claims(
    any_project: Project, cli: CliFn, proc: ProcFn, tmp_path: Path
) -> None:
    project = _ops(any_project, tmp_path, CODARA_LEASE_SECONDS="1", CODARA_MAX_CLAIMS="2")
    run_id = _enqueue(project, cli, "suicidal", None)
    killed = 0
    for _ in range(20):
        done = proc(project, "worker", "--until-idle")
        killed += done.returncode == -signal.SIGKILL
        if _run_row(project, run_id)[0] == "failed":
            break
        time.sleep(0.5)  # until the dead worker's lease lapses
    status, owner, error = _run_row(project, run_id)
    assert status == "failed"
    assert owner is None
    assert json.loads(str(error))["type"] == "codara.errors.PoisonRunError"
    assert killed == 2  # two workers died; the third claim failed it without executing
    assert _log(project).count(f"{run_id} die") == 2
    assert _journal(project, run_id)[-1][1:] == (-1, "result", "failed", "failed")
    audit = cli(project, "audit", "verify", "--json")
    assert audit.exit_code == 0, audit.output


# -- retry and fork ----------------------------------------------------------------------------
def _failed_boom(project: Project, cli: CliFn) -> str:
    result = cli(project, "run", "boom", "--json")
    assert result.exit_code == 13, result.output
    return str(json.loads(result.stdout)["run_id"])


def test_runs_retry_queues_a_failed_run_and_records_who(any_project: Project, cli: CliFn) -> None:
    run_id = _failed_boom(any_project, cli)
    result = cli(any_project, "runs", "retry", run_id, "--by", "carol", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "run_id": run_id,
        "status": "queued",
        "retried_by": "carol",
    }
    marker = any_project.sql(
        "SELECT op, kind, input FROM codara_journal WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
        (run_id,),
    )[0]
    assert marker[:2] == (-3, "retry")
    assert json.loads(str(marker[2]))["by"] == "carol"
    again = cli(any_project, "runs", "retry", run_id, "--json")  # queued now: refused
    assert again.exit_code == 12, again.output
    assert "only a failed run" in again.stdout
    missing = cli(any_project, "runs", "retry", "nope")
    assert missing.exit_code == 6
    audit = cli(any_project, "audit", "verify", "--json")
    assert audit.exit_code == 0, audit.output


def test_runs_retry_records_the_os_user_by_default(project: Project, cli: CliFn) -> None:
    run_id = _failed_boom(project, cli)
    result = cli(project, "runs", "retry", run_id, "--json")
    assert json.loads(result.stdout)["retried_by"] == getpass.getuser()


def test_runs_fork_starts_a_new_run_from_a_step(any_project: Project, cli: CliFn) -> None:
    run_id = _failed_boom(any_project, cli)
    result = cli(any_project, "runs", "fork", run_id, "--from", "explode", "--by", "dan", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["forked_from"] == run_id
    assert out["from_seq"] == 0
    assert out["by"] == "dan"
    assert out["run_id"] != run_id
    rows = any_project.sql(
        "SELECT seq, op, kind FROM codara_journal WHERE run_id = ? ORDER BY seq", (out["run_id"],)
    )
    assert rows == [(0, -2, "fork")]
    unknown = cli(any_project, "runs", "fork", run_id, "--from", "nope")
    assert unknown.exit_code == 4
    assert "its steps: explode" in unknown.output
    assert any_project.count_runs() == 2


def test_sigterm_is_honoured_while_postgres_refuses_connections(
    pg_url: str,
    project_factory: Callable[[Path, str], Project],
    cli: CliFn,
    tmp_path: Path,
) -> None:
    """The server drops the worker's connections and refuses new ones (as during a restart):
    the worker logs, backs off, and still stops cleanly on SIGTERM."""
    project = _ops(project_factory(tmp_path, pg_url), tmp_path, CODARA_SHUTDOWN_GRACE_SECONDS="30")
    cli(project, "db", "upgrade")
    database = pg_url.rsplit("/", 1)[1]
    admin_url = os.environ.get(
        "CODARA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    err = tmp_path / "worker.err"
    worker = _worker(project, err)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        try:
            for _ in range(1200):
                if "started" in err.read_text():
                    break
                time.sleep(0.05)
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            for _ in range(1200):
                if "failed" in err.read_text():
                    break
                assert worker.poll() is None, err.read_text()
                time.sleep(0.05)
            time.sleep(1)  # a few rounds of backoff
            assert worker.poll() is None, err.read_text()
            code = _stop(worker, timeout=60)
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    stderr = err.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr
