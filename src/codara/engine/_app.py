"""The application object: workflow registry, store, and the ways to start and run work."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from codara.config import Settings, load_settings
from codara.engine._client import Client, register_workflows
from codara.engine._codec import dumps, input_adapter, validate_input
from codara.engine._effects import Effect, Effects
from codara.engine._executor import Outcome, Workflow, WorkflowFn, execute
from codara.engine._journal import (
    choose_fork_point,
    fail_poisoned,
    fork_rows,
    operator_name,
    retry_run,
)
from codara.engine._retry import RetryPolicy
from codara.engine._worker import Leases, Worker
from codara.errors import (
    ConflictError,
    InputError,
    NotOpenError,
    RunError,
    UnknownWorkflowError,
    WorkflowCodeError,
    WorkflowVersionError,
)
from codara.store import JournalRecord, RunRecord, Store, open_store
from codara.store import Migrate as _Migrate
from codara.trace import Anchor, AuditReport, chain_key, genesis_hash, verify_chain

if TYPE_CHECKING:
    from codara.mcp import McpServers
    from codara.privacy import Finding
    from codara.sources import Sources

__all__ = ["App", "new_run_id"]

log = logging.getLogger("codara")
F = TypeVar("F", bound=WorkflowFn)


def new_run_id() -> str:
    """Time-ordered, unique: 12 hex digits of milliseconds, then 20 random hex digits."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:20]}"


class App:
    """A Codara application: its workflows and the store their runs live in.

    ``App()`` reads ``codara.toml`` and ``CODARA_*`` variables; keyword arguments override
    them. Use it as an async context manager (or ``await app.open()`` / ``close()``).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        durability: str | None = None,
        settings: Settings | None = None,
        config_file: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        migrate: _Migrate = "create-if-empty",
    ) -> None:
        if settings is None:
            settings = load_settings(
                config_file,
                overrides={"store": {"url": database_url, "durability": durability}},
            )
        elif database_url is not None or durability is not None:
            # given beside settings, the URL and durability win (they were silently ignored)
            store = settings.store.model_copy(
                update={k: v for k, v in (("url", database_url), ("durability", durability))
                        if v is not None}
            )  # fmt: skip
            settings = settings.model_copy(update={"store": store})
        self.settings = settings
        self.clock = clock
        self.retry_policy = retry or RetryPolicy()
        self._migrate: _Migrate = migrate
        self._workflows: dict[str, dict[str, Workflow]] = {}
        self.tickers: list[Callable[[App], Awaitable[object]]] = []
        self._store: Store | None = None
        self._sources: Sources | None = None
        self._effects = Effects()
        self._effect_modes_loaded = False
        self._mcp: McpServers | None = None

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> App:
        return cls(config_file=path, **kwargs)

    # -- registry --------------------------------------------------------------------------
    def workflow(
        self, *, name: str, version: str = "1", compatible_with: Sequence[str] = ()
    ) -> Callable[[F], F]:
        """Register an async function ``fn(ctx, input)`` as workflow ``name`` at ``version``.

        ``compatible_with`` lists older versions whose unfinished runs this code may resume
        (their journals replay the same sequence of operations).
        """

        def register(fn: F) -> F:
            if not asyncio.iscoroutinefunction(fn):
                raise WorkflowCodeError(
                    f"workflow {name!r} must be an async function",
                    hint="declare it `async def`",
                )
            versions = self._workflows.setdefault(name, {})
            if version in versions:
                raise WorkflowCodeError(
                    f"workflow {name!r} version {version!r} is registered twice",
                    hint="give the new code a new version, with compatible_with if it "
                    "replays the old journals",
                )
            versions[version] = Workflow(
                name, version, fn, tuple(str(v) for v in compatible_with), input_adapter(fn)
            )
            return fn

        return register

    def workflows(self) -> list[Workflow]:
        return [wf for versions in self._workflows.values() for wf in versions.values()]

    def latest(self, name: str) -> Workflow:
        versions = self._workflows.get(name)
        if not versions:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflowError(
                f"no workflow named {name!r} is registered (known: {known})",
                hint="check the name, or import the module that defines it",
            )
        return list(versions.values())[-1]

    def _for_run(self, workflow: str, version: str) -> Workflow:
        for wf in self._workflows.get(workflow, {}).values():
            if version == wf.version or version in wf.compatible_with:
                return wf
        have = ", ".join(self._workflows.get(workflow, {})) or "none"
        raise WorkflowVersionError(
            f"run needs workflow {workflow!r} version {version!r}, but this process has "
            f"versions: {have}",
            hint=f"run a worker with version {version} of {workflow!r}, or declare the new "
            f"version compatible_with=[{version!r}] if it replays the same operations",
        )

    def _keys(self) -> list[str]:
        return [key for wf in self.workflows() for key in wf.keys]

    def effect(self, effect: Effect) -> Effect:
        """Declare ``effect``, for its workflows to call with ``ctx.effect(effect.name, args)``
        (docs/effects.md)."""
        self._effects.add(effect)
        return effect

    @property
    def effects(self) -> Effects:
        """The declared effects, with ``[workflows.NAME] effects`` (live or shadow) of the
        settings and the ``[effects.NAME]`` policy gates, validated when first asked for (a
        worker asks at start)."""
        if not self._effect_modes_loaded:
            self.mcp  # noqa: B018 - registers the effect tools of [mcp.*] before the gates check
            where = self.settings.source_file or "the configuration"
            self._effects.load_modes(self.settings.section("workflows"), where)
            self._effects.check_gates(where)
            self._effect_modes_loaded = True
        return self._effects

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotOpenError(
                "the app is not open",
                hint="use `async with app:` (or `await app.open()`) first",
            )
        return self._store

    async def open(self) -> App:
        if self._store is None:
            s = self.settings.store
            self._store = await open_store(
                s.url, durability=s.durability, pool_size=s.pool_size, migrate=self._migrate
            )
            await register_workflows(self._store, self.workflows(), self.clock())
        return self

    @property
    def sources(self) -> Sources:
        """The ``[sources.NAME]`` of the settings, validated when first asked for (a worker
        asks at start: :meth:`ready_sources`); connectors open at their first read."""
        if self._sources is None:
            from codara.sources._openlineage import lineage_observer
            from codara.sources._registry import load_sources

            sources = load_sources(
                self.settings.section("sources"), self.settings.source_file or "the configuration"
            )
            lineage = lineage_observer(self.settings.section("lineage"), sources)
            if lineage is not None:  # [lineage]: OpenLineage events, when on
                sources.observers.append(lineage)
            self._sources = sources
        return self._sources

    async def ready_sources(self) -> Sources:
        """Validate every declared source, build its connector and reach it once, so that a
        wrong URL, a missing variable, an unknown table or column or an unreachable server
        stops a worker at start, with the source named, not a run later."""
        sources = self.sources
        if not sources.checked:
            await sources.check()
        return sources

    @property
    def mcp(self) -> McpServers:
        """The ``[mcp.NAME]`` servers of the settings, validated when first asked for (a
        worker asks at start: :meth:`ready_mcp`), their tools declared ``effect`` registered
        as effects then; each server is started or reached at its first call (docs/mcp.md)."""
        if self._mcp is None:
            from codara.engine._mcp import mcp_effects
            from codara.mcp import load_servers

            servers = load_servers(
                self.settings.section("mcp"), self.settings.source_file or "the configuration"
            )
            for effect in mcp_effects(servers):
                self._effects.add(effect)
            self._mcp = servers
        return self._mcp

    async def ready_mcp(self) -> McpServers:
        """Start or reach every declared MCP server once and check that it offers every
        declared tool, so that a wrong command, an unreachable URL, a missing variable or a
        misspelt tool stops a worker at start, with the server named, not a run later."""
        servers = self.mcp
        if not servers.checked:
            await servers.check()
        return servers

    async def close(self) -> None:
        if self._mcp is not None:
            await self._mcp.close()
        if self._sources is not None:
            await self._sources.close()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- starting runs ---------------------------------------------------------------------
    async def start_run(
        self,
        workflow: str,
        input: Any = None,
        *,
        key: str | None = None,
        started_by: str | None = None,
    ) -> str:
        """Enqueue a run of the latest version of ``workflow``; return its id.

        A ``key`` makes the start idempotent: the same key returns the same run.
        ``started_by`` names who started it (excluded from approving its reviews).
        """
        return (await self.start_runs(workflow, [input], keys=[key], started_by=started_by))[0]

    async def start_runs(
        self,
        workflow: str,
        inputs: Sequence[Any],
        *,
        keys: Sequence[str | None] | None = None,
        started_by: str | None = None,
    ) -> list[str]:
        """Enqueue many runs in one transaction (all or none)."""
        wf = self.latest(workflow)
        from codara.engine._privacy import mask_input, privacy

        rows = []
        found: list[Finding] = []
        audit = chain_key()
        for i, value in enumerate(inputs):
            validate_input(wf.input_adapter, value, workflow)
            try:
                text = dumps(value)
            except TypeError as exc:
                raise InputError(f"input #{i} for {workflow!r} is not JSON: {exc}") from exc
            text = mask_input(text, found)  # stored, journaled and executed masked
            run_id = new_run_id()
            key = keys[i] if keys is not None else None
            genesis = genesis_hash(run_id, wf.name, wf.version, text, key=audit)
            rows.append((run_id, wf.name, wf.version, text, key, genesis, started_by))
        if found:
            await privacy().keep(self.store, found)
        return await self.store.create_runs(rows, self.clock())

    async def run(self, workflow: str, input: Any = None) -> Any:
        """Start a run and execute it in this process; return its output.

        Raises :class:`RunError` if the run fails, or parks on a wait or timer (a worker will
        carry on with it).
        """
        run_id = await self.start_run(workflow, input)
        outcome = await self.resume(run_id)
        if outcome.status != "completed":
            raise RunError(
                f"run {run_id} is {outcome.status}"
                + (f": {outcome.error['message']}" if outcome.error else ""),
                hint=f"see `codara runs show {run_id}`",
            )
        return outcome.output

    async def resume(self, run_id: str) -> Outcome:
        """Claim one ready run by id and execute it here (replaying its journal).

        The claim's lease is renewed by a heartbeat as in a worker; if it is lost anyway
        (this process stalled longer than the lease and another worker took the run over, or
        the run was cancelled), execution stops here and the outcome is ``lost``.
        """
        record = await self.get_run(run_id)
        wf = self._for_run(record.workflow, record.version)
        now = self.clock()
        worker = self.settings.worker
        owner = f"inline:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        claims = await self.store.claim(
            owner, wf.keys, 1, now, now + worker.lease_seconds, run_id=run_id
        )
        if not claims:
            raise ConflictError(
                f"run {run_id} is {record.status} and cannot be claimed now",
                hint="a worker owns it, it is finished, or it waits for a signal or a timer",
            )
        claim = claims[0]
        if claim.streak > worker.max_claims:
            return await fail_poisoned(self.store, claim, self.clock, worker.max_claims)
        leases = Leases(self.store, owner, worker.lease_seconds, self.clock)
        async with leases.running():
            task = asyncio.ensure_future(
                execute(
                    self.store,
                    wf,
                    claim,
                    clock=self.clock,
                    retry=self.retry_policy,
                    sources=self.sources,
                    effects=self.effects,
                    mcp=self.mcp,
                )
            )
            leases.watch(claim.id, task)
            try:
                return await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if claim.id in leases.lost and not (current and current.cancelling()):
                    return Outcome("lost")
                # Hand the run back so any worker resumes it now, not after the lease.
                now = self.clock()
                await asyncio.shield(self.store.release(claim.id, claim.token, now, None, now))
                raise

    # -- operators -------------------------------------------------------------------------
    async def retry(self, run_id: str, *, by: str | None = None) -> RunRecord:
        """Queue a failed run again: it resumes from its last good step (the failed ones run
        again). The journal records who did it and when; only a ``failed`` run can be
        retried (else :class:`ConflictError`). ``by`` defaults to the OS user."""
        record = await self.get_run(run_id)
        await retry_run(self.store, record, operator_name(by), self.clock())
        return await self.get_run(run_id)

    async def fork(self, run_id: str, *, from_step: str, by: str | None = None) -> str:
        """Start a new run of the same workflow, version and input that replays ``run_id``'s
        journal up to ``from_step`` (a step name, its first occurrence, or ``seq:N``) and
        executes from there. Returns the new run's id; its journal says where it came from
        and who forked it."""
        source = await self.get_run(run_id)
        rows = await self.store.journal(run_id)
        from_seq = choose_fork_point(run_id, rows, from_step)
        who = operator_name(by)
        new_id = new_run_id()
        genesis = genesis_hash(
            new_id, source.workflow, source.version, source.input, key=chain_key()
        )
        now = self.clock()
        marker = dumps({"from_run": run_id, "from_seq": from_seq, "by": who})
        copied = fork_rows(rows, from_seq, new_id, genesis, marker, now)
        new = (new_id, source.workflow, source.version, source.input, None, genesis, who)
        await self.store.fork_run(new, copied, now)
        return new_id

    # -- workers ---------------------------------------------------------------------------
    def worker(self, *, concurrency: int | None = None, name: str | None = None) -> Worker:
        return Worker(
            store=self.store,
            workflows={k: wf for wf in self.workflows() for k in wf.keys},
            concurrency=concurrency or self.settings.worker.concurrency,
            lease_seconds=self.settings.worker.lease_seconds,
            poll_interval=self.settings.worker.poll_interval,
            poll_min_interval=self.settings.worker.poll_min_interval,
            clock=self.clock,
            retry=self.retry_policy,
            name=name,
            tickers=[self._tick(fn) for fn in self.tickers],
            shutdown_grace=self.settings.worker.shutdown_grace_seconds,
            max_claims=self.settings.worker.max_claims,
            sources=self.sources,
            effects=self.effects,
            mcp=self.mcp,
        )

    def _tick(self, fn: Callable[[App], Awaitable[object]]) -> Callable[[], Awaitable[object]]:
        async def tick() -> object:
            return await fn(self)

        return tick

    def add_ticker(self, fn: Callable[[App], Awaitable[object]]) -> None:
        """Have every worker call ``await fn(app)`` about once a poll interval (at least every
        second): for housekeeping such as review deadlines."""
        self.tickers.append(fn)

    async def work(
        self,
        *,
        concurrency: int | None = None,
        until_idle: bool = False,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Run a worker in this process; return how many runs it executed."""
        await self.ready_sources()
        await self.ready_mcp()
        return await self.worker(concurrency=concurrency).run(until_idle=until_idle, stop=stop)

    # -- signals, cancel, inspection -------------------------------------------------------
    # Starting, signalling and reading runs are the Client's: the App has one over its store.
    def _client(self) -> Client:
        return Client(settings=self.settings, clock=self.clock, store=self.store)

    async def send_signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` to a run (see :meth:`Client.send_signal`: names under a
        reserved prefix such as ``review:`` are refused)."""
        await self._client().send_signal(run_id, name, payload)

    async def cancel(self, run_id: str) -> None:
        await self._client().cancel(run_id)

    async def get_run(self, run_id: str) -> RunRecord:
        return await self._client().get_run(run_id)

    async def journal(self, run_id: str) -> list[JournalRecord]:
        return await self._client().journal(run_id)

    async def output(self, run_id: str) -> Any:
        return await self._client().output(run_id)

    async def wait_run(
        self, run_id: str, *, timeout: float = 60.0, poll: float = 0.05
    ) -> RunRecord:
        """Poll until the run is finished (for scripts and tests)."""
        return await self._client().wait_run(run_id, timeout=timeout, poll=poll)

    async def verify(
        self,
        run_id: str | None = None,
        *,
        anchor: Anchor | None = None,
        require_key: bool = False,
    ) -> AuditReport:
        """Check the audit trail: every chain (or one run's), the chain heads, and, given an
        ``anchor`` kept outside the database, that the heads still hold it. ``require_key``
        treats every unkeyed hash as a problem (a store keyed from its first run)."""
        return await verify_chain(self.store, run_id, anchor=anchor, require_key=require_key)
