"""Schema migrations and the refusal to work on an out-of-date schema."""

from __future__ import annotations

import sqlite3

import pytest

import codara
from codara.errors import ConfigError, DatabaseUnreachableError, SchemaOutOfDateError
from codara.store import head_revision, open_store, parse_url, schema_state, upgrade


async def test_upgrade_creates_the_schema_and_is_idempotent(db_url: str) -> None:
    url = parse_url(db_url)
    assert schema_state(url).empty
    assert upgrade(url).up_to_date
    assert upgrade(url).current == head_revision()


async def test_a_worker_refuses_an_empty_or_old_schema(db_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError, match="codara db upgrade"):
        await open_store(db_url, migrate="check")
    upgrade(parse_url(db_url))
    store = await open_store(db_url, migrate="check")
    await store.close()


async def test_an_older_schema_is_never_upgraded_implicitly(sqlite_url: str) -> None:
    url = parse_url(sqlite_url)
    upgrade(url)
    assert url.sqlite_path is not None
    with sqlite3.connect(url.sqlite_path) as conn:
        conn.execute("UPDATE codara_alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutOfDateError) as info:
        await open_store(sqlite_url, migrate="create-if-empty")
    assert "has schema revision 0000" in info.value.message
    assert "codara db upgrade" in str(info.value.hint)


async def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1") as info:
        await open_store("postgresql://postgres@127.0.0.1:1/test")
    assert "PostgreSQL running" in str(info.value.hint)


async def test_password_never_appears_in_errors() -> None:
    with pytest.raises(DatabaseUnreachableError) as info:
        await open_store("postgresql://admin:s3cret-pw@127.0.0.1:1/test")
    assert "s3cret-pw" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory"),
        ("not a url", "not a valid URL"),
        ("postgresql://u@host:port/db", "not a valid URL"),
    ],
)
def test_bad_database_urls(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_url(url)


@pytest.mark.parametrize(
    "raw",
    [
        "sqlite:///codara.db",
        "sqlite:////tmp/a b/codara.db",
        "sqlite+pysqlite:///rel/x%20y.db",
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres://u:p%40ss:w@db.example/app?sslmode=require&application_name=x",
        "postgresql+psycopg://u@[::1]:5433/db?options=-c%20a%3Db&b=1&b=2",
        "postgresql://u:@localhost/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://h",
    ],
)
def test_urls_parse_as_sqlalchemy_parses_them(raw: str) -> None:
    """The store parses URLs itself (so that opening it does not import SQLAlchemy); the
    result, its redacted form and the PostgreSQL conninfo are SQLAlchemy's."""
    from sqlalchemy.engine import make_url

    url = parse_url(raw)
    theirs = make_url(raw)
    driver = "sqlite" if url.dialect == "sqlite" else "postgresql+psycopg"
    assert url.sqlalchemy_url == theirs.set(drivername=driver)
    assert url.redacted() == theirs.set(drivername=url.dialect).render_as_string()
    assert url.password == theirs.password
    if url.dialect == "sqlite":
        assert url.sqlite_path == theirs.database
    else:
        assert url.pg_conninfo == theirs.set(drivername="postgresql").render_as_string(
            hide_password=False
        )


async def test_sqlite_in_a_missing_folder(tmp_path: object) -> None:
    with pytest.raises(DatabaseUnreachableError, match="folder does not exist"):
        async with codara.App(f"sqlite:///{tmp_path}/nope/x.db"):
            pass


def test_the_pinned_head_is_alembics_head() -> None:
    from codara.store._migrate import HEAD_REVISION

    assert head_revision() == HEAD_REVISION


# -- the schema lives in one place --------------------------------------------------------------
def test_the_migrations_build_exactly_the_schema_module(db_url: str) -> None:
    """Alembic's head and ``store/_schema.py`` describe the same tables, columns, types,
    defaults and indexes, on SQLite and PostgreSQL."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from codara.store._migrate import VERSION_TABLE, _engine
    from codara.store._schema import metadata

    url = parse_url(db_url)
    upgrade(url)

    def include(obj: object, name: str | None, type_: str, reflected: bool, _: object) -> bool:
        return not (type_ == "table" and name == VERSION_TABLE)

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": include,
                },
            )
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []


async def test_upgrading_from_0002_keeps_the_data_and_its_audit_trail(db_url: str) -> None:
    """A database at 0002 with runs (finished, cancelled, waiting), journal rows and review
    events upgrades to head with its data intact, and `audit verify` finds it clean."""
    from codara.store._migrate import _engine
    from codara.trace import genesis_hash, row_hash

    url = parse_url(db_url)
    upgrade(url, "0002")
    runs = {"r-done": "completed", "r-cancelled": "cancelled", "r-waiting": "waiting"}
    rows: list[tuple[object, ...]] = []
    run_rows: list[tuple[object, ...]] = []
    for n, (run_id, status) in enumerate(runs.items()):
        genesis = genesis_hash(run_id, "wf", "1", "null")
        prev = genesis
        steps = [("step", "s0", "ok", "1"), ("step", "s1", "ok", "2")]
        if status == "completed":
            steps.append(("result", "completed", "completed", "3"))
        for seq, (kind, name, st, out) in enumerate(steps):
            t = 1000.0 + n * 10 + seq
            h = row_hash(prev, run_id, seq, seq if kind != "result" else -1, kind, name, st,
                         None, out, None, t, t + 0.5, 1)  # fmt: skip
            rows.append((run_id, seq, seq if kind != "result" else -1, kind, name, st, None,
                         out, None, t, t + 0.5, 1, prev, h))  # fmt: skip
            prev = h
        output = "3" if status == "completed" else None
        finished = 2000.0 + n if status in ("completed", "cancelled") else None
        run_rows.append((run_id, "wf", "1", "wf@1", status, "null", output, genesis,
                         1000.0, 1000.0, finished))  # fmt: skip
    events = [
        ("rv-1", "system:policy", "create", None, None, 1001.0),
        ("rv-1", "alice", "claim", None, None, 1002.0),
        ("rv-1", "alice", "approve", '{"comment": "ok"}', '{"proposal": 1}', 1003.0),
        ("rv-2", "system:policy", "create", None, None, 1004.0),
    ]
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            mark = "?" if url.dialect == "sqlite" else "%s"

            def run(sql: str, params: tuple[object, ...]) -> None:
                cur = dbapi.cursor()
                cur.execute(sql.replace("?", mark), params)

            for r in run_rows:
                run("INSERT INTO codara_runs (id, workflow, version, workflow_key, status, "
                    "input, output, genesis_hash, created_at, updated_at, finished_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", r)  # fmt: skip
            for r in rows:
                run("INSERT INTO codara_journal (run_id, seq, op, kind, name, status, input, "
                    "output, error, started_at, finished_at, attempts, prev_hash, hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", r)  # fmt: skip
            for review_id, run_id, status in (("rv-1", "r-done", "decided"),
                                              ("rv-2", "r-waiting", "pending")):  # fmt: skip
                run("INSERT INTO codara_reviews (id, run_id, workflow, step, status, role, "
                    "on_timeout, proposal, created_at, updated_at) "
                    "VALUES (?, ?, 'wf', 'refund', ?, 'support', 'deny', '{}', 1000, 1000)",
                    (review_id, run_id, status))  # fmt: skip
            for e in events:
                run("INSERT INTO codara_review_events (review_id, actor, action, detail, "
                    "shown, at) VALUES (?, ?, ?, ?, ?, ?)", e)  # fmt: skip
    finally:
        engine.dispose()

    assert upgrade(url).current == head_revision()
    app = codara.App(db_url, migrate="check")
    async with app:
        for run_id, status in runs.items():
            record = await app.get_run(run_id)
            assert record.status == status
            journal = await app.journal(run_id)
            assert [(j.seq, j.output, j.hash) for j in journal] == [
                (r[1], r[7], r[13]) for r in rows if r[0] == run_id
            ]
        stored = await app.store.execute_raw(
            "SELECT review_id, actor, action, detail, shown, at FROM codara_review_events "
            "ORDER BY id"
        )
        assert [tuple(e) for e in stored] == events
        report = await app.verify()
        assert report.problems == []
        assert (report.runs_checked, report.rows_checked) == (3, 7)
        assert (report.reviews_checked, report.events_checked) == (2, 4)
        assert report.heads_checked == 2 + 2  # the ended runs, then one per review
        # and the upgraded trail still catches tampering
        await app.store.execute_raw("DELETE FROM codara_review_events WHERE action = 'approve'")
        await app.store.execute_raw(
            "UPDATE codara_runs SET status = 'cancelled' WHERE id = 'r-done'"
        )
        problems = [p.problem for p in (await app.verify()).problems]
        assert any("events were deleted" in p for p in problems)
        assert any("recorded it as completed" in p for p in problems)
