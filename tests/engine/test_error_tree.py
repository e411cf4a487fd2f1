"""Nothing a user can catch escapes the CodaraError tree from the public API: each mistake
or failure is a CodaraError with a code and a hint, never a bare RuntimeError, TimeoutError,
TypeError, ValueError, FencedError or JSON error."""

from __future__ import annotations

import pytest

import codara
from codara.errors import (
    CodaraError,
    ConflictError,
    NotOpenError,
    RunWaitTimeoutError,
    StoreError,
    WorkflowCodeError,
)
from codara.store import FencedError


async def test_using_an_app_or_client_before_opening_it_is_a_codara_error(
    sqlite_url: str,
) -> None:
    app = codara.App(sqlite_url)
    with pytest.raises(NotOpenError) as err:
        _ = app.store
    assert err.value.code == "not_open"
    assert err.value.hint is not None
    client = codara.Client(sqlite_url)
    with pytest.raises(NotOpenError):
        await client.get_run("nope")


def test_bad_workflow_registrations_are_workflow_code_errors(sqlite_url: str) -> None:
    app = codara.App(sqlite_url)

    def not_async(ctx: codara.Context, _: None) -> None:
        return None

    with pytest.raises(WorkflowCodeError, match="must be an async function"):
        app.workflow(name="sync")(not_async)

    @app.workflow(name="twice")
    async def first(ctx: codara.Context, _: None) -> None:
        return None

    with pytest.raises(WorkflowCodeError, match="registered twice"):

        @app.workflow(name="twice")
        async def second(ctx: codara.Context, _: None) -> None:
            return None


async def test_wait_run_timing_out_is_a_run_error(db_url: str) -> None:
    app = codara.App(db_url)

    @app.workflow(name="waits")
    async def waits(ctx: codara.Context, _: None) -> None:
        await ctx.wait_for("never")

    async with app:
        run_id = await app.start_run("waits")
        with pytest.raises(RunWaitTimeoutError) as err:
            await app.wait_run(run_id, timeout=0.05)
        assert isinstance(err.value, CodaraError)
        assert isinstance(err.value, TimeoutError)  # `except TimeoutError` still works
        assert err.value.code == "run_wait_timeout"


async def test_a_stored_output_that_is_not_json_is_a_store_error(db_url: str) -> None:
    app = codara.App(db_url)

    @app.workflow(name="one")
    async def one(ctx: codara.Context, _: None) -> int:
        return 1

    async with app:
        run_id = await app.start_run("one")
        await app.resume(run_id)
        await app.store.execute_raw(
            "UPDATE codara_runs SET output = 'not json' WHERE id = ?", (run_id,)
        )
        with pytest.raises(StoreError, match="not valid JSON"):
            await app.output(run_id)


def test_fenced_is_a_conflict_with_a_message() -> None:
    err = FencedError("r1")
    assert isinstance(err, ConflictError)
    assert err.code == "fenced"
    assert "no longer owns" in str(err)
