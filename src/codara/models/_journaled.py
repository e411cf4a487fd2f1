"""Model calls inside a run: each model request and each tool call journaled on its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from codara.engine import Context
from codara.models._llm import LLMCall, LLMSettings, _api_key

if TYPE_CHECKING:
    from pydantic_ai import Tool

__all__ = ["llm_step"]


async def llm_step(
    ctx: Context,
    name: str,
    settings: LLMSettings,
    *,
    instructions: str,
    prompt: str,
    output_type: type[Any] = str,
    tools: Sequence[Callable[..., Any] | Tool] = (),
) -> LLMCall:
    """Run a Pydantic AI agent named ``name`` for this run, durably.

    Each model request is a journaled step (``NAME.model``: the response, its token use and
    cost) and each tool call another (``NAME.tool.TOOL``: its result), so after a crash the
    agent resumes where it was: no tool runs twice, no answered request is sent again. An
    effect tool (:func:`codara.agents.effect_tool`) is an effect, not a step. Use
    ``result.output_as(MyModel)`` for a typed output.
    """
    from codara.models._agent import durable_agent
    from codara.models._llm import agent_record

    agent = durable_agent(
        settings, name=name, instructions=instructions, output_type=output_type, tools=tools
    )
    names = {str(getattr(tool, "name", None) or getattr(tool, "__name__", "")) for tool in tools}
    async with agent:
        result = await agent.run(prompt)
    return agent_record(result, settings, names, _api_key(settings))
