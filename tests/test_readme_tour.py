"""The README's five-minute tour, run for real: kill -9 a worker mid-run, restart, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

TOUR = Path(__file__).parent.parent / "examples" / "tour"


def codara(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codara", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tour_resumes_a_killed_run(tmp_path: Path) -> None:
    for name in ("app.py", "codara.toml"):
        shutil.copy(TOUR / name, tmp_path / name)
    env = {**os.environ, "CODARA_LEASE_SECONDS": "2", "PYTHONPATH": str(tmp_path)}
    env.pop("CODARA_DATABASE_URL", None)
    assert codara(tmp_path, "db", "upgrade", env=env).returncode == 0
    started = codara(tmp_path, "--json", "run", "count", "--input", "20", "--no-wait", env=env)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]

    worker = subprocess.Popen(
        [sys.executable, "-m", "codara", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        done = 0
        while time.monotonic() < deadline:  # read the journal directly: a CLI call is slower
            with sqlite3.connect(tmp_path / "tour.db") as db:
                (done,) = db.execute(
                    "SELECT COUNT(*) FROM codara_journal WHERE run_id = ? AND kind = 'step'",
                    (run_id,),
                ).fetchone()
            if done >= 2:
                break
            time.sleep(0.05)
        assert done >= 2, "the worker did not start executing"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    shown = json.loads(codara(tmp_path, "--json", "runs", "show", run_id, env=env).stdout)
    assert shown["run"]["status"] == "running"
    before = [r["name"] for r in shown["journal"] if r["kind"] == "step"]
    assert 2 <= len(before) < 20, "killed mid-run"

    time.sleep(2.5)  # the dead worker's lease lapses
    resumed = codara(tmp_path, "worker", "--until-idle", env=env)
    assert resumed.returncode == 0, resumed.stderr
    shown = json.loads(codara(tmp_path, "--json", "runs", "show", run_id, env=env).stdout)
    assert shown["run"]["status"] == "completed"
    assert shown["run"]["output"] == 210
    names = [r["name"] for r in shown["journal"] if r["kind"] == "step"]
    assert names == [f"count-{i}" for i in range(1, 21)], "every step journaled exactly once"
    assert names[: len(before)] == before
    assert codara(tmp_path, "audit", "verify", env=env).returncode == 0
