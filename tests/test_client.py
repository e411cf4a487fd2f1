"""The Client: runs started, signalled, cancelled and read with only the store's URL.

An App registers its workflows (name, version, input JSON Schema) in ``codara_workflows`` when
it opens; a Client, which has no workflow code, starts the newest registered version and
checks the input against that schema before anything is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typer.testing import CliRunner

import codara
from codara.auth import Users
from codara.engine._jsonschema import schema_problems
from codara.errors import ConflictError, InputError, NotFoundError, UnknownWorkflowError
from codara.store import _schema, parse_url, upgrade


class Address(BaseModel):
    city: str
    zip: str = Field(pattern=r"^\d{5}$")


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str = Field(min_length=1)
    quantity: int = Field(ge=1, le=100)
    express: bool = False
    ship_to: Address | None = None
    tags: list[str] = []


class OrderV3(BaseModel):
    sku: int


def order_app(url: str, *, v2: bool = True) -> codara.App:
    app = codara.App(url, durability="os")

    @app.workflow(name="order", version="1")
    async def order_v1(ctx: codara.Context, order: Order) -> str:
        return f"v1:{order.quantity}x{order.item}"

    if v2:

        @app.workflow(name="order", version="2")
        async def order_v2(ctx: codara.Context, order: Order) -> dict[str, Any]:
            approved = await ctx.wait_for("approve", timeout=3600)
            return {"v": 2, "item": order.item, "approved": approved}

    @app.workflow(name="plain")
    async def plain(ctx: codara.Context, data: Any) -> Any:
        return data

    return app


async def registered(url: str, **kw: bool) -> None:
    async with order_app(url, **kw):
        pass


async def count_runs(client: codara.Client) -> int:
    return sum((await client.store.count_runs()).values())


# -- the registry --------------------------------------------------------------------------
async def test_opening_an_app_registers_its_workflows_with_their_input_schema(
    db_url: str,
) -> None:
    await registered(db_url)
    async with codara.Client(db_url) as client:
        rows = await client.workflows("order")
        assert [r.version for r in rows] == ["2", "1"]  # newest first
        schema = json.loads(rows[0].input_schema or "null")
        assert schema == TypeAdapter(Order).json_schema()
        assert json.loads(rows[0].compatible_with) == []
        (plain,) = await client.workflows("plain")
        assert plain.input_schema is None  # Any: nothing to check


async def test_registration_keeps_the_first_time_and_refreshes_the_schema(
    sqlite_url: str,
) -> None:
    await registered(sqlite_url)
    async with codara.Client(sqlite_url) as client:
        first = {r.version: r for r in await client.workflows("order")}
    later = codara.App(sqlite_url, clock=lambda: first["2"].registered_at + 100)

    @later.workflow(name="order", version="2", compatible_with=["1"])
    async def changed(ctx: codara.Context, order: OrderV3) -> None: ...

    async with later:
        pass
    async with codara.Client(sqlite_url) as client:
        now = {r.version: r for r in await client.workflows("order")}
    assert now["2"].registered_at == first["2"].registered_at
    assert now["2"].seen_at == first["2"].registered_at + 100
    assert json.loads(now["2"].input_schema or "{}")["required"] == ["sku"]
    assert json.loads(now["2"].compatible_with) == ["1"]
    assert now["1"] == first["1"]  # not in the later app: untouched


async def test_an_older_deploy_starting_again_does_not_make_its_version_the_newest(
    db_url: str,
) -> None:
    await registered(db_url)  # v1 and v2
    await registered(db_url, v2=False)  # an old worker with v1 only restarts
    async with codara.Client(db_url) as client:
        run_id = await client.start_run("order", {"item": "tea", "quantity": 2})
        assert (await client.get_run(run_id)).version == "2"


# -- starting runs -------------------------------------------------------------------------
async def test_start_run_takes_the_newest_version_or_the_one_asked_for(db_url: str) -> None:
    await registered(db_url)
    async with codara.Client(db_url) as client:
        newest = await client.start_run("order", {"item": "tea", "quantity": 2})
        pinned = await client.start_run("order", {"item": "tea", "quantity": 2}, version="1")
        assert (await client.get_run(newest)).version == "2"
        assert (await client.get_run(pinned)).version == "1"
        again = await client.start_run("order", {"item": "x", "quantity": 1}, key="k-1")
        assert await client.start_run("order", {"item": "x", "quantity": 1}, key="k-1") == again
        with pytest.raises(codara.ConflictError):  # the same key for another input
            await client.start_run("order", {"item": "y", "quantity": 1}, key="k-1")
    app = order_app(db_url)
    async with app:
        await app.work(until_idle=True)
        assert await app.output(pinned) == "v1:2xtea"
        assert (await app.get_run(newest)).status == "waiting"


async def test_unknown_workflow_or_version_is_refused_with_a_hint(db_url: str) -> None:
    await registered(db_url)
    async with codara.Client(db_url) as client:
        with pytest.raises(UnknownWorkflowError, match=r"'ordr'.*known: order, plain") as info:
            await client.start_run("ordr", {})
        assert "codara worker" in str(info.value.hint)
        with pytest.raises(UnknownWorkflowError, match=r"no registered version '7'.*2, 1"):
            await client.start_run("order", {"item": "a", "quantity": 1}, version="7")
        assert await count_runs(client) == 0


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"quantity": 1}, "item: required"),
        ({"item": "a", "quantity": "5"}, "quantity: expected integer, got a string"),
        ({"item": "a", "quantity": 0}, "quantity: less than 1"),
        ({"item": "", "quantity": 1}, "item: shorter than 1 characters"),
        ({"item": "a", "quantity": 1, "colour": "red"}, "colour: not a field of this input"),
        ({"item": "a", "quantity": 1, "ship_to": {"city": "Oslo"}}, "ship_to.zip: required"),
        ({"item": "a", "quantity": 1, "tags": ["ok", 3]}, "tags.1: expected string"),
        (["item", "a"], "input: expected object, got an array"),
        (None, "input: expected object, got null"),
    ],
)
async def test_input_is_checked_against_the_registered_schema(
    sqlite_url: str, bad: Any, expected: str
) -> None:
    await registered(sqlite_url)
    async with codara.Client(sqlite_url) as client:
        with pytest.raises(InputError, match=r"version '2' is invalid") as info:
            await client.start_run("order", bad)
        assert expected in info.value.message
        assert await count_runs(client) == 0


async def test_nested_models_are_checked_through_their_refs(sqlite_url: str) -> None:
    await registered(sqlite_url)
    async with codara.Client(sqlite_url) as client:
        ship = {"city": "Oslo", "zip": "0150"}  # four digits: the pattern wants five
        with pytest.raises(InputError, match=r"ship_to"):
            await client.start_run("order", {"item": "a", "quantity": 1, "ship_to": ship})
        ship["zip"] = "01500"
        run_id = await client.start_run("order", {"item": "a", "quantity": 1, "ship_to": ship})
        assert json.loads((await client.get_run(run_id)).input)["ship_to"] == ship


async def test_start_runs_is_all_or_nothing_when_one_input_is_bad(db_url: str) -> None:
    await registered(db_url)
    async with codara.Client(db_url) as client:
        good = {"item": "a", "quantity": 1}
        with pytest.raises(InputError, match=r"input #2 .* quantity: greater than 100"):
            await client.start_runs("order", [good, good, {"item": "b", "quantity": 101}])
        assert await count_runs(client) == 0
        assert len(await client.start_runs("order", [good, good])) == 2
        with pytest.raises(InputError, match="one key per input"):
            await client.start_runs("order", [good, good], keys=["a"])


async def test_a_workflow_without_a_declared_input_takes_any_json(sqlite_url: str) -> None:
    await registered(sqlite_url)
    async with codara.Client(sqlite_url) as client:
        run_id = await client.start_run("plain", [1, "two", {"three": 3}])
        with pytest.raises(InputError, match="not JSON"):
            await client.start_run("plain", object())
    app = order_app(sqlite_url)
    async with app:
        await app.work(until_idle=True)
        assert await app.output(run_id) == [1, "two", {"three": 3}]


# -- signals, cancel and reading -----------------------------------------------------------
async def test_signal_cancel_and_reads_mirror_the_app(db_url: str) -> None:
    app = order_app(db_url)
    async with app, codara.Client(db_url) as client:
        waiting = await client.start_run("order", {"item": "tea", "quantity": 1})
        doomed = await client.start_run("order", {"item": "cake", "quantity": 1})
        await app.work(until_idle=True)
        assert (await client.get_run(waiting)).waiting_for == "approve"
        await client.send_signal(waiting, "approve", True)
        await client.cancel(doomed)
        await app.work(until_idle=True)
        done = await client.wait_run(waiting, timeout=10)
        assert done.status == "completed"
        assert await client.output(waiting) == {"v": 2, "item": "tea", "approved": True}
        kinds = [(j.kind, j.name) for j in await client.journal(waiting)]
        assert kinds == [("wait", "approve"), ("signal", "approve"), ("result", "completed")]
        assert (await client.get_run(doomed)).status == "cancelled"
        assert [r.id for r in await client.list_runs(status="cancelled")] == [doomed]
        assert {r.id for r in await client.list_runs(workflow="order")} == {waiting, doomed}
        assert (await client.verify(waiting)).ok
        assert (await client.verify()).ok
        assert await client.reviews(run_id=waiting) == []
        with pytest.raises(ConflictError, match="takes no more signals"):
            await client.send_signal(waiting, "approve", True)
        with pytest.raises(ConflictError, match="already completed"):
            await client.cancel(waiting)
        with pytest.raises(NotFoundError, match="codara runs list"):
            await client.journal("nope")
        with pytest.raises(InputError, match="unknown review status"):
            await client.reviews(status="closed")


async def test_a_client_refuses_a_database_without_the_schema(sqlite_url: str) -> None:
    with pytest.raises(codara.CodaraError, match="codara db upgrade"):
        async with codara.Client(sqlite_url):
            pass


def test_a_client_in_another_process_needs_only_the_url(db_url: str, tmp_path: Path) -> None:
    """The client process imports no workflow code: it starts, signals and reads by name."""
    import asyncio

    asyncio.run(registered(db_url))
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json, sys
            import codara

            async def main():
                async with codara.Client(sys.argv[1]) as client:
                    run_id = await client.start_run("order", {"item": "tea", "quantity": 3})
                    await client.send_signal(run_id, "approve", "yes")
                    try:
                        await client.start_run("order", {"item": "tea"})
                    except codara.InputError as exc:
                        error = exc.message
                    loaded = sorted(m for m in sys.modules if m.startswith("tests"))
                    print(json.dumps({"run_id": run_id, "error": error, "loaded": loaded}))

            asyncio.run(main())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), db_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["loaded"] == []
    assert "quantity: required" in answer["error"]

    async def finish() -> Any:
        app = order_app(db_url)
        async with app:
            await app.work(until_idle=True)
            return await app.output(answer["run_id"])

    assert asyncio.run(finish()) == {"v": 2, "item": "tea", "approved": "yes"}


# -- codara serve --------------------------------------------------------------------------
def test_codara_serve_needs_no_workflow_code(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --app, no CODARA_APP, no [app]: the server starts registered workflows by name."""
    import asyncio

    from codara.cli import _serve
    from codara.cli import app as cli_app

    upgrade(parse_url(sqlite_url))

    async def seed() -> str:
        await registered(sqlite_url)
        async with codara.Client(sqlite_url) as client:
            users = Users(client.store, client.clock)
            await users.add("olga", ["operator"])
            return await users.create_token("olga", "tests")

    token = asyncio.run(seed())
    served: list[Any] = []
    monkeypatch.setattr(_serve, "run_server", lambda api, *a: served.append(api))
    monkeypatch.chdir(tmp_path)
    env = {"CODARA_DATABASE_URL": sqlite_url, "CODARA_APP": None, "CODARA_CONFIG": None}
    result = CliRunner().invoke(cli_app, ["serve", "--port", "8123"], env=env)
    assert result.exit_code == 0, result.output
    (api,) = served
    assert isinstance(api.state.codara, codara.Client)

    async def drive() -> dict[str, httpx.Response]:
        got: dict[str, httpx.Response] = {}
        async with (
            api.router.lifespan_context(api),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {token}"},
            ) as http,
        ):
            got["invalid"] = await http.post(
                "/api/runs", json={"workflow": "order", "input": {"item": "a"}}
            )
            got["unknown"] = await http.post("/api/runs", json={"workflow": "nope", "input": {}})
            good = {"item": "a", "quantity": 2}
            got["started"] = started = await http.post(
                "/api/runs", json={"workflow": "order", "input": good}
            )
            run_id = started.json()["id"]
            got["signal"] = await http.post(f"/api/runs/{run_id}/signals/approve", json={})
            got["detail"] = await http.get(f"/api/runs/{run_id}")
            got["page"] = await http.get(f"/runs/{run_id}")
            got["list"] = await http.get("/runs")
            got["cancel"] = await http.post(f"/api/runs/{run_id}/cancel")
        return got

    got = asyncio.run(drive())
    assert got["invalid"].status_code == 422
    assert "quantity: required" in got["invalid"].json()["error"]["message"]
    assert got["unknown"].status_code == 404
    assert got["unknown"].json()["error"]["code"] == "unknown_workflow"
    assert got["started"].status_code == 201, got["started"].text
    assert got["started"].json()["version"] == "2"
    assert got["signal"].status_code == 200, got["signal"].text
    assert got["detail"].json()["run"]["input"] == {"item": "a", "quantity": 2}
    assert got["page"].status_code == 200
    assert got["list"].status_code == 200
    assert got["started"].json()["id"] in got["list"].text
    assert got["cancel"].json()["status"] == "cancelled"


# -- the schema and the validator ----------------------------------------------------------
def test_the_registry_table_matches_the_migration(sqlite_url: str) -> None:
    import sqlite3

    url = parse_url(sqlite_url)
    upgrade(url)
    assert url.sqlite_path is not None
    with sqlite3.connect(url.sqlite_path) as conn:
        rows = conn.execute("PRAGMA table_info(codara_workflows)").fetchall()
    migrated = {(r[1], bool(r[3]), r[5] > 0) for r in rows}  # name, not null, in the key
    model = {(c.name, not c.nullable, c.primary_key) for c in _schema.workflows.columns}
    assert migrated == model


class Item(BaseModel):
    name: str = Field(max_length=5)
    count: int = Field(ge=0)


TYPES: list[Any] = [
    int,
    float,
    str,
    bool,
    list[int],
    dict[str, float],
    int | None,
    Literal["a", "b"],
    tuple[int, str],
    Item,
    list[Item],
    Order,
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-200, 200)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.sampled_from(["", "a", "b", "tea", "12345", "toolong", "5"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "count", "item", "quantity", "x", "city", "zip"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@given(tp=st.sampled_from(TYPES), value=_json)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_validator_agrees_with_pydantic(tp: Any, value: Any) -> None:
    """What the client accepts the worker accepts; what strict pydantic accepts from JSON the
    client accepts too."""
    adapter = TypeAdapter(tp)
    problems = schema_problems(value, adapter.json_schema())
    if not problems:
        adapter.validate_python(value)  # the worker's (lax) validation passes
    try:
        adapter.validate_json(json.dumps(value), strict=True)
    except ValidationError:
        return
    assert problems == []


async def test_client_refuses_reserved_signal_names(sqlite_url: str) -> None:
    """A Client is a way in too: it may not decide a review by sending its signal."""
    app = codara.App(sqlite_url)

    @app.workflow(name="waits")
    async def waits(ctx: codara.Context, _: None) -> None:
        await ctx.wait_for("go")

    async with app:
        run_id = await app.start_run("waits")
        async with codara.Client(sqlite_url) as client:
            with pytest.raises(codara.errors.ReservedSignalError):
                await client.send_signal(run_id, "review:abc", {"outcome": "approved"})
            assert [s for s in await app.store.execute_raw("SELECT name FROM codara_signals")] == []
