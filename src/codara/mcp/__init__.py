"""MCP servers as Codara tools: ``[mcp.NAME]`` in ``codara.toml`` declares a server (a command
over stdio, or a URL over streamable HTTP) and the only tools that may be called on it,
each a read or an effect (docs/mcp.md).

This package is the connector, beside the sources: it checks declarations and arguments,
holds one session per server (the official ``mcp`` SDK's ``ClientSession``) and calls tools.
It knows nothing of runs: the engine journals a read (:func:`codara.mcp_read`) as a step and
runs an effect tool as a Codara effect (``ctx.effect("mcp.crm.refund", args)``).
"""

from codara.errors import ToolError
from codara.mcp._config import ServerConfig, ToolDecl
from codara.mcp._servers import KEY_META, McpServers, ToolDefinition, load_servers

__all__ = [
    "KEY_META",
    "McpServers",
    "ServerConfig",
    "ToolDecl",
    "ToolDefinition",
    "ToolError",
    "load_servers",
]
