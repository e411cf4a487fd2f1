"""A private PostgreSQL cluster that a test may restart, stop and start.

The shared server (CODARA_TEST_POSTGRES_URL) serves every helper's tests at once and must
never be restarted, so the restart tests run ``initdb`` into a temporary directory and
``pg_ctl start`` on a free loopback port. PostgreSQL refuses to run as root: as root, every
``initdb``/``pg_ctl`` runs as the ``postgres`` OS user (``runuser -u postgres --``) and the
directory belongs to it. Authentication is ``trust`` on 127.0.0.1.

Under CI (CI=true) a cluster that cannot be started fails the test; elsewhere the test is
skipped with one loud line saying how to enable it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``pg_config --bindir``, else the newest Debian layout."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateCluster:
    """One PostgreSQL cluster of this test run's own, on ``127.0.0.1:port``."""

    bindir: Path
    root: Path
    port: int
    as_postgres: bool

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def free_port() -> int:
        return _free_port()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} {args[1] if len(args) > 1 else ''} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]}"
            )

    def initdb(self) -> None:
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "log"), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast`` (or ``immediate``: a crash, then recovery)."""
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "log"), "-m", mode,
            "-w", "-t", "60", "restart",
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _start_cluster() -> tuple[PrivateCluster | None, str]:
    bindir = _bindir()
    if bindir is None:
        return None, "no initdb/pg_ctl found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="codara-pg-"))
    try:
        if as_postgres:
            if shutil.which("runuser") is None:
                return None, "running as root, and runuser is missing"
            shutil.chown(root, user="postgres", group="postgres")
        cluster = PrivateCluster(bindir, root, _free_port(), as_postgres)
        cluster.initdb()
        cluster.start()
    except (OSError, LookupError, RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return cluster, ""


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster for the tests of one module, removed afterwards."""
    cluster, reason = _start_cluster()
    if cluster is None:
        message = (
            f"cannot start a private PostgreSQL cluster ({reason}). Install the server "
            "(apt-get install postgresql: initdb and pg_ctl) to enable the restart tests"
        )
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        print(f"\n!!! SKIPPING: {message}", file=sys.stderr)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):
            pass
        shutil.rmtree(cluster.root, ignore_errors=True)
