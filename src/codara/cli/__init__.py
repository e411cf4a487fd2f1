"""The ``codara`` command line (Typer + rich).

``main`` is the console script; ``app`` is the Typer application (for ``CliRunner`` tests
and for embedding further commands).
"""

from __future__ import annotations

from codara.cli._main import app, main

__all__ = ["app", "main"]
