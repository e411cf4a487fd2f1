"""The ``codara`` command line (Typer + rich).

``main`` is the console script; ``app`` is the Typer application (for ``CliRunner`` tests
and for embedding further commands). ``print_gate_report`` prints a gate check as
``codara gate check`` does (the demo ends with it).
"""

from __future__ import annotations

from codara.cli._gate import print_report as print_gate_report
from codara.cli._main import app, main

__all__ = ["app", "main", "print_gate_report"]
