"""Pydantic AI agents whose every model request and tool call is its own journaled operation.

:class:`CodaraDurability` is a Pydantic AI durability capability, built on the public
``pydantic_ai.durable_exec`` surface the way the library's own DBOS, Prefect and Temporal
integrations are: Pydantic AI wraps each model request and each tool call of an agent run in a
*durable unit*, and this backend makes each unit one :meth:`codara.Context.step` of the run.
A replay after a crash returns the journaled responses and tool results, so a tool that
already ran is not run again and a model request already answered is not sent (nor billed)
again; the agent goes on from the first operation without a journaled result.

Tools that change the world are not steps: :func:`effect_tool` makes an effect
(``App.effect``) an agent tool that runs in the workflow and calls ``ctx.effect``, with its
idempotency key, policies, reviews and shadow mode. Each model request's row carries its
token use and, with ``LLMSettings`` prices, its cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_ai import Agent, Tool
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    CallableOperationBackend,
    CapabilityOperationId,
    DurabilityEngineSpec,
    DurableOperationId,
    JournalOperationNamer,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
)
from pydantic_ai.durable_exec._operation_names import DurableInvocationName  # not re-exported
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelRequestTimeout,
    ToolFailed,
    UnexpectedModelBehavior,
)

from codara.engine._branch import current_branch
from codara.engine._codec import dumps
from codara.engine._context import Step
from codara.engine._effects import EffectFailedError
from codara.engine._privacy import privacy
from codara.errors import WorkflowCodeError
from codara.models._llm import _api_key, _call_error, _redact_values

if TYPE_CHECKING:
    from codara.engine import App, Context, Effect
    from codara.models._llm import LLMSettings

__all__ = ["CodaraDurability", "durable_agent", "effect_tool", "mcp_tools"]

UnitConfig = dict[str, Any]  # a durable unit's step options: "retry", "timeout"
_IN_RUN = {"codara": False}  # tool metadata: run in the workflow, not as a step


def _context() -> Context | None:
    branch = current_branch()
    return None if branch is None else branch.ctx


class _Namer(JournalOperationNamer):
    """Journal names a reader can follow: ``AGENT.model``, ``AGENT.tool.NAME``,
    ``AGENT.mcp.SERVER.NAME``. They are replay identity: never change them for a release."""

    def operation_name(self, operation_id: DurableOperationId) -> str:
        agent = self._agent_name
        match operation_id:
            case ModelRequestId(model_id=model_id):
                return f"{agent}.model{self._model_suffix(model_id)}"
            case ToolsetCallToolId(toolset_kind="mcp", toolset_id=toolset_id):
                return f"{agent}.mcp.{toolset_id}"
            case ToolsetCallToolId():
                return f"{agent}.tool"
            case ToolsetValidateToolArgumentsId():
                return f"{agent}.validate"
            case ToolsetGetToolsId(toolset_kind=kind, toolset_id=toolset_id):
                return f"{agent}.{kind}.{toolset_id}.tools"
            case ToolsetGetInstructionsId(toolset_id=toolset_id):
                return f"{agent}.mcp.{toolset_id}.instructions"
            case CapabilityOperationId(capability_id=capability_id, operation=operation):
                return f"{agent}.capability.{capability_id}.{operation}"
        return super().operation_name(operation_id)

    def invocation_name(
        self, operation_id: DurableOperationId, *, label: str | None
    ) -> DurableInvocationName:
        name = self.operation_name(operation_id)
        if label and isinstance(operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId):
            name = f"{name}.{label}"
        return DurableInvocationName(name)


class _StepBackend(CallableOperationBackend[UnitConfig]):
    """Each durable unit is one ``ctx.step``; a model request's row also keeps its usage."""

    def __init__(
        self,
        *,
        name: str,
        settings: LLMSettings | None,
        per_tool: Callable[[Any, str], Any],
    ) -> None:
        unit: UnitConfig = {}
        super().__init__(
            namer=_Namer(name),
            config=RoleBasedOperationConfig(
                model=unit,
                event=unit,
                capability=unit,
                tool=unit,
                resolve_tool=lambda _op, tool, tool_name: per_tool(tool, tool_name),
            ),
        )
        self._settings = settings

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: UnitConfig,
    ) -> object:
        ctx = _context()
        if ctx is None:  # the capability hands units over only inside a run
            raise WorkflowCodeError(f"agent operation {name!r} ran outside a workflow run")
        step = Step(name, retry=config.get("retry"), timeout=config.get("timeout"), result_type=Any)
        settings = self._settings
        request = isinstance(operation_id, ModelRequestId)

        async def unit() -> Any:
            if request and settings is not None:
                secret = _api_key(settings)
                try:
                    payload = await body()
                except (ModelAPIError, ModelRequestTimeout, UnexpectedModelBehavior) as exc:
                    raise _call_error(exc, settings, secret) from None  # says if a retry helps
                payload = _redact_values(payload, secret)  # a model echoing the key
            else:
                payload = await body()
            # A model's answer and a tool's result are a third way data enters the run: the
            # personal values in them become tokens (kept in the vault) before the journal,
            # and the agent goes on with the masked form, the same on every replay.
            payload, found = privacy().mask(payload)
            if found:
                await privacy().keep(ctx._store, found)
            return {"response": payload, **_usage(payload, settings)} if request else payload

        record = await ctx.step(step, unit)
        if not request:
            return record
        ctx._model_said.append(dumps(record["response"]))  # provenance: what a model said
        return record["response"]


def _usage(response: object, settings: LLMSettings | None) -> dict[str, Any]:
    """Token use and cost of one model response (its JSON form), for its journal row."""
    body: dict[str, Any] = response if isinstance(response, dict) else {}
    found = body.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    tokens_in = int(usage.get("input_tokens") or 0)
    tokens_out = int(usage.get("output_tokens") or 0)
    return {
        "model": body.get("model_name"),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd": None if settings is None else settings.cost_usd(tokens_in, tokens_out),
    }


class CodaraDurability(BaseDurabilityCapability[Any]):
    """Add to an agent's ``capabilities``: inside a Codara run, each model request and each
    tool call of the agent is a journaled step of the run (outside a run the agent runs as
    it would without it). The agent needs a ``name``, unique in its workflow: the journal's
    operation names start with it. ``settings`` gives the prices for the cost per request."""

    engine_spec = DurabilityEngineSpec(
        engine_name="Codara",
        durable_unit_noun="step",
        durable_container_noun="run",
        codec=JSON_CODEC,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",
            "dynamic": "enter-never",
        },
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        tool_config_key="codara",
    )

    def __init__(self, *, name: str | None = None, settings: LLMSettings | None = None) -> None:
        super().__init__(name=name)
        self._settings = settings
        self._backend: _StepBackend | None = None

    @property
    def in_durable_context(self) -> bool:
        return _context() is not None

    def get_durable_operation_backend(self) -> _StepBackend:
        if self._backend is None:
            self._backend = _StepBackend(
                name=self.name,
                settings=self._settings,
                per_tool=self._build_resolve_tool_config({}),  # metadata {"codara": False}
            )
        return self._backend

    def get_default_run_id(self) -> str | None:
        # the same on every replay: the operation the agent run starts at
        branch = current_branch()
        if branch is None:
            return None
        return f"{branch.ctx.run_id}:{branch.path or 'r'}:{branch.next_op}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        ctx = _context()
        return None if ctx is None else datetime.fromtimestamp(ctx.now(), UTC)


def effect_tool(
    effect: Effect,
    *,
    name: str | None = None,
    description: str | None = None,
    json_schema: dict[str, Any] | None = None,
) -> Tool:
    """The effect ``effect`` (declared with ``App.effect``) as an agent tool.

    The model proposes the arguments (checked against the effect's ``args_type``, whose JSON
    schema the model is shown); the call is ``ctx.effect(effect.name, args)``, so the effect
    happens once, with its key, after its policies (a hold for review parks the run), or
    not at all in shadow mode. Refused, invalid or denied: the model is told why
    (``ToolFailed``) and the run goes on; an unknown outcome fails the run, as it would in
    the workflow.
    """
    adapter = effect._args
    schema: dict[str, Any] = json_schema or (
        adapter.json_schema() if adapter is not None else {"type": "object"}
    )
    if schema.get("type") != "object":
        raise WorkflowCodeError(
            f"effect {effect.name!r}: an agent tool needs arguments that are an object",
            hint="give the effect an args_type that is a pydantic model or a TypedDict",
        )

    async def call(**args: Any) -> Any:
        ctx = _context()
        if ctx is None:
            raise WorkflowCodeError(f"tool for effect {effect.name!r} called outside a run")
        try:
            return await ctx.effect(effect.name, args)
        except EffectFailedError as exc:
            if exc.outcome == "unknown":
                raise
            raise ToolFailed(str(exc)) from None

    tool = Tool.from_schema(
        call,
        name=name or effect.name.replace(".", "_"),
        description=description or (effect.run.__doc__ or f"Do {effect.name}.").strip(),
        json_schema=schema,
    )
    tool.metadata = dict(_IN_RUN)
    return tool


async def mcp_tools(app: App, server: str) -> list[Tool]:
    """The tools declared in ``[mcp.SERVER]`` as agent tools (the server is reached to
    describe them: call this once, at start, not in workflow code). A ``read`` tool calls
    :func:`codara.mcp_read` (one journaled, masked step per call); an ``effect`` tool is
    :func:`effect_tool` of its effect (key, policies, shadow mode). Tools not declared are
    not offered."""
    from codara.engine._mcp import mcp_read

    tools: list[Tool] = []
    for d in await app.mcp.definitions(server):
        if d.kind == "effect" and d.effect is not None:
            effect = app._effects.get(d.effect)
            about = d.description or None
            tools.append(effect_tool(effect, name=d.name, description=about,
                                     json_schema=d.input_schema))  # fmt: skip
            continue

        async def read(*, _tool: str = d.name, **args: Any) -> Any:
            ctx = _context()
            if ctx is None:
                raise WorkflowCodeError(f"MCP tool {server}.{_tool} called outside a run")
            return await mcp_read(ctx, server, _tool, args)

        tool = Tool.from_schema(
            read,
            name=d.name,
            description=d.description or f"{d.name} of {server}",
            json_schema=d.input_schema or {"type": "object"},
        )
        tool.metadata = dict(_IN_RUN)  # mcp_read journals the call itself
        tools.append(tool)
    return tools


def durable_agent(
    settings: LLMSettings,
    *,
    name: str,
    instructions: str,
    output_type: Any = str,
    tools: Sequence[Callable[..., Any] | Tool] = (),
    toolsets: Sequence[Any] = (),
) -> Agent[None, Any]:
    """A Pydantic AI agent for ``settings`` with :class:`CodaraDurability`: in a run, each
    model request and each tool call is its own journaled step; effect tools
    (:func:`effect_tool`) are effects."""
    from codara.models._llm import build_model

    return Agent(
        build_model(settings),
        name=name,
        instructions=instructions,
        output_type=output_type,
        tools=list(tools),
        toolsets=list(toolsets),
        capabilities=[CodaraDurability(settings=settings)],
    )
