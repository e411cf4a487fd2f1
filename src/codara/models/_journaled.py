"""Model calls as durable steps: journaled once, replayed without calling the model again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from codara.engine import Context
from codara.models._llm import LLMCall, LLMSettings, call_llm

__all__ = ["llm_step"]


async def llm_step(
    ctx: Context,
    name: str,
    settings: LLMSettings,
    *,
    instructions: str,
    prompt: str,
    output_type: type[Any] = str,
    tools: Sequence[Callable[..., Any]] = (),
) -> LLMCall:
    """Call a real LLM as step ``name`` of the run.

    The journal keeps the whole record (messages, output, token usage, cost, tool calls), so a
    replay after a crash returns it without calling the provider: no second bill, no second
    answer. Use ``result.output_as(MyModel)`` to get a typed output back.
    """

    return await ctx.step(name, _call, settings, instructions, prompt, output_type, tuple(tools))


async def _call(
    settings: LLMSettings,
    instructions: str,
    prompt: str,
    output_type: type[Any],
    tools: tuple[Callable[..., Any], ...],
) -> LLMCall:
    return await call_llm(
        settings, instructions=instructions, prompt=prompt, output_type=output_type, tools=tools
    )
