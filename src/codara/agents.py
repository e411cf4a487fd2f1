"""Agents whose every model request and tool call is a journaled operation of the run
(docs/agents.md). The names live in :mod:`codara.models._agent`; this is their public home.
Importing it loads Pydantic AI."""

from codara.models._agent import CodaraDurability, durable_agent, effect_tool, mcp_tools

__all__ = ["CodaraDurability", "durable_agent", "effect_tool", "mcp_tools"]
