"""The client: starts, signals, cancels and reads runs with nothing but the store's URL.

A :class:`Client` imports no workflow code (temporalio splits its Client and Worker the same
way): a service such as ``codara serve`` needs only ``CODARA_DATABASE_URL``. What it cannot
learn from code it reads from the workflow registry (``codara_workflows``), which every
:class:`~codara.engine.App` fills for its workflows when it opens: which versions exist, the
newest one, and the JSON Schema of each version's input.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from codara.config import Settings, load_settings
from codara.engine._codec import decode, decode_stored, dumps
from codara.engine._executor import Workflow
from codara.engine._jsonschema import schema_problems
from codara.engine._signals import check_signal_name
from codara.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    NotOpenError,
    RunWaitTimeoutError,
    UnknownWorkflowError,
)
from codara.store import (
    JournalRecord,
    ReviewRecord,
    RunRecord,
    Store,
    WorkflowRecord,
    open_store,
    registry,
    reviews,
)
from codara.store import Migrate as _Migrate

if TYPE_CHECKING:
    from codara.privacy import Finding
from codara.trace import AuditReport, genesis_hash, verify_chain

__all__ = ["Client", "input_json_schema", "register_workflows"]

log = logging.getLogger("codara")

_FINISHED = ("completed", "failed", "cancelled")
_REVIEW_STATUSES = {
    "open": ("pending", "claimed"),
    "pending": ("pending",),
    "claimed": ("claimed",),
    "decided": ("decided",),
}


def _new_run_id() -> str:
    # the same form as engine._app.new_run_id (_app imports this module, not the other way)
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:20]}"


# -- the registry, written by App.open ---------------------------------------------------------
def input_json_schema(fn: Callable[..., Any]) -> dict[str, Any] | None:
    """The JSON Schema (pydantic's, validation mode) of the type ``fn``'s second parameter
    declares, or None when it declares none or its type has no JSON Schema."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    tp = hints.get(params[1].name, inspect.Parameter.empty)
    if tp is inspect.Parameter.empty or tp is Any:
        return None
    try:
        schema: dict[str, Any] = TypeAdapter(tp).json_schema()
    except Exception as exc:  # e.g. an arbitrary class: the worker still validates it
        log.debug("workflow input type %r has no JSON Schema: %s", tp, exc)
        return None
    return schema


async def register_workflows(store: Store, workflows: Sequence[Workflow], now: float) -> None:
    """Record (upsert) ``workflows`` in the store's registry, in one transaction."""
    if not workflows:
        return
    ordinals: dict[str, int] = {}
    rows = []
    for wf in workflows:  # registration order: the last version of a name is its latest
        ordinal = ordinals[wf.name] = ordinals.get(wf.name, -1) + 1
        schema = input_json_schema(wf.fn)
        rows.append(
            WorkflowRecord(
                name=wf.name,
                version=wf.version,
                input_schema=None if schema is None else dumps(schema),
                compatible_with=dumps(list(wf.compatible_with)),
                ordinal=ordinal,
                registered_at=now,
                seen_at=now,
            )
        )
    async with store.tx() as tx:
        await registry.upsert_workflows(tx, rows)


class Client:
    """Start runs by name, send signals, cancel, and read runs, journals and reviews.

    ``Client()`` reads the store's URL from ``codara.toml`` / ``CODARA_DATABASE_URL`` like
    :class:`~codara.engine.App`; it needs no workflow code. Pass ``store=`` to use a store that
    is already open (the client then never closes it). Use it as an async context manager (or
    ``await client.open()`` / ``close()``). By default it refuses an out-of-date schema
    (``migrate="check"``): a client does not create or change tables.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        config_file: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        migrate: _Migrate = "check",
        store: Store | None = None,
    ) -> None:
        if settings is None:
            settings = load_settings(config_file, overrides={"store": {"url": database_url}})
        self.settings = settings
        self.clock = clock
        self._migrate: _Migrate = migrate
        self._store = store
        self._owns_store = store is None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotOpenError(
                "the client is not open",
                hint="use `async with client:` (or `await client.open()`) first",
            )
        return self._store

    async def open(self) -> Client:
        if self._store is None:
            s = self.settings.store
            self._store = await open_store(
                s.url, durability=s.durability, pool_size=s.pool_size, migrate=self._migrate
            )
            self._owns_store = True
        return self

    async def close(self) -> None:
        if self._store is not None and self._owns_store:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the registry ----------------------------------------------------------------------
    async def workflows(self, name: str | None = None) -> list[WorkflowRecord]:
        """The registered workflows (of ``name`` only, if given), newest version first."""
        async with self.store.tx() as tx:
            return await registry.list_workflows(tx, name)

    async def _version(self, workflow: str, version: str | None) -> WorkflowRecord:
        found = await self.workflows(workflow)
        if not found:
            known = sorted({r.name for r in await self.workflows()})
            raise UnknownWorkflowError(
                f"no workflow named {workflow!r} is registered in {self.store.url_redacted} "
                f"(known: {', '.join(known) or 'none'})",
                hint="check the name; a workflow is registered when an App whose code defines "
                "it opens on this database (start `codara worker` with that app)",
            )
        if version is None:
            return found[0]
        for record in found:
            if record.version == version:
                return record
        have = ", ".join(r.version for r in found)
        raise UnknownWorkflowError(
            f"workflow {workflow!r} has no registered version {version!r} (registered: {have})",
            hint="leave the version out to start the newest, or deploy a worker with that "
            "version's code",
        )

    # -- starting runs ---------------------------------------------------------------------
    async def start_run(
        self,
        workflow: str,
        input: Any = None,
        *,
        key: str | None = None,
        version: str | None = None,
        started_by: str | None = None,
    ) -> str:
        """Enqueue a run of ``workflow`` (its newest registered version, or ``version``) and
        return its id. The input is checked against the version's registered JSON Schema.

        A ``key`` makes the start idempotent: the same key returns the same run.
        ``started_by`` names who started it (excluded from approving its reviews).
        """
        ids = await self.start_runs(
            workflow, [input], keys=[key], version=version, started_by=started_by
        )
        return ids[0]

    async def start_runs(
        self,
        workflow: str,
        inputs: Sequence[Any],
        *,
        keys: Sequence[str | None] | None = None,
        version: str | None = None,
        started_by: str | None = None,
    ) -> list[str]:
        """Enqueue many runs in one transaction (all or none; every input is checked first)."""
        if keys is not None and len(keys) != len(inputs):
            raise InputError(
                f"{len(keys)} keys for {len(inputs)} inputs", hint="give one key per input"
            )
        wf = await self._version(workflow, version)
        schema = decode(wf.input_schema)
        rows = []
        from codara.engine._privacy import mask_input, privacy

        found: list[Finding] = []
        for i, value in enumerate(inputs):
            try:
                text = dumps(value)
            except TypeError as exc:
                raise InputError(f"input #{i} for {workflow!r} is not JSON: {exc}") from exc
            if isinstance(schema, dict):
                problems = schema_problems(decode(text), schema)
                if problems:
                    which = f"input #{i}" if len(inputs) > 1 else "input"
                    raise InputError(
                        f"{which} for workflow {workflow!r} version {wf.version!r} is invalid: "
                        + "; ".join(problems),
                        hint="pass input of the shape the workflow declares (see its JSON "
                        "Schema: `Client.workflows()`)",
                    )
            # The choke point for inputs: from here on the run, its journal and its reviews
            # hold tokens, never the personal values (engine/_privacy.py)
            text = mask_input(text, found)
            run_id = _new_run_id()
            key = keys[i] if keys is not None else None
            genesis = genesis_hash(run_id, wf.name, wf.version, text)
            rows.append((run_id, wf.name, wf.version, text, key, genesis, started_by))
        if found:
            await privacy().keep(self.store, found)
        return await self.store.create_runs(rows, self.clock())

    # -- signals and cancel ----------------------------------------------------------------
    async def send_signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to a run; a run waiting for it becomes ready at once.

        Names under a reserved prefix (``review:``) raise
        :class:`~codara.errors.ReservedSignalError`: a review is decided through the review
        service, which signals the run itself in the transaction that records the decision.
        """
        check_signal_name(name)
        try:
            text = dumps(payload)
        except TypeError as exc:
            raise InputError(f"signal payload is not JSON: {exc}") from exc
        if not await self.store.send_signal(run_id, name, text, self.clock()):
            record = await self.get_run(run_id)
            raise ConflictError(
                f"run {run_id} is {record.status}; it takes no more signals",
                hint="signals go to runs that are not finished",
            )

    async def cancel(self, run_id: str) -> None:
        """Cancel a run that has not finished (its worker is fenced off and stops)."""
        if not await self.store.cancel(run_id, self.clock()):
            record = await self.get_run(run_id)
            raise ConflictError(f"run {run_id} is already {record.status}")

    # -- reading ---------------------------------------------------------------------------
    async def get_run(self, run_id: str) -> RunRecord:
        record = await self.store.get_run(run_id)
        if record is None:
            raise NotFoundError(
                f"no run with id {run_id!r}", hint="list runs with `codara runs list`"
            )
        return record

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunRecord]:
        """The newest runs first, optionally of one status or workflow, created before
        ``before`` (epoch seconds) for paging."""
        return await self.store.list_runs(
            status=status, workflow=workflow, limit=limit, before=before
        )

    async def journal(self, run_id: str) -> list[JournalRecord]:
        await self.get_run(run_id)
        return await self.store.journal(run_id)

    async def output(self, run_id: str) -> Any:
        return decode_stored((await self.get_run(run_id)).output, f"the output of run {run_id}")

    async def reviews(
        self, *, run_id: str | None = None, status: str = "open", limit: int = 100
    ) -> list[ReviewRecord]:
        """Review items (of one run, if given), most urgent first, with no role filter: for
        trusted services. ``status``: open, pending, claimed or decided."""
        statuses = _REVIEW_STATUSES.get(status)
        if statuses is None:
            raise InputError(
                f"unknown review status {status!r}",
                hint=f"use one of {', '.join(_REVIEW_STATUSES)}",
            )
        async with self.store.tx() as tx:
            return await reviews.list_reviews(
                tx, roles=None, statuses=statuses, run_id=run_id, limit=limit
            )

    async def wait_run(
        self, run_id: str, *, timeout: float = 60.0, poll: float = 0.05
    ) -> RunRecord:
        """Poll until the run is finished (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            record = await self.get_run(run_id)
            if record.status in _FINISHED:
                return record
            if time.monotonic() > deadline:
                raise RunWaitTimeoutError(
                    f"run {run_id} is still {record.status} after {timeout} s",
                    hint=f"it goes on; wait again, or see `codara runs show {run_id}`",
                )
            await asyncio.sleep(poll)

    async def verify(self, run_id: str | None = None) -> AuditReport:
        """Recompute the hash chain of one run's journal (or of every run)."""
        return await verify_chain(self.store, run_id)
