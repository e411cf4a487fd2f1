"""The app the operations tests run in real ``codara worker`` processes (``ops_app:app``).

Steps note what they do in the file named by ``$OPS_LOG`` (one line each, appended and
flushed at once), so a test counts how often a step really executed, across processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import codara

app = codara.App()


def note(line: str) -> None:
    with open(os.environ["OPS_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")


def noted() -> list[str]:
    path = Path(os.environ["OPS_LOG"])
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@app.workflow(name="paced")
async def paced(ctx: codara.Context, data: dict[str, Any]) -> int:
    """Two steps; the first takes ``seconds``."""

    async def first() -> int:
        note(f"{ctx.run_id} s1 start")
        await asyncio.sleep(float(data["seconds"]))
        note(f"{ctx.run_id} s1 end")
        return 1

    def second() -> int:
        note(f"{ctx.run_id} s2")
        return 2

    return await ctx.step("s1", first) + await ctx.step("s2", second)


@app.workflow(name="stubborn")
async def stubborn(ctx: codara.Context, data: dict[str, Any]) -> str:
    """One step that takes ``seconds`` the first time it executes, no time after that."""

    async def long() -> str:
        first = f"{ctx.run_id} long start" not in noted()
        note(f"{ctx.run_id} long start")
        await asyncio.sleep(float(data["seconds"]) if first else 0)
        return "done"

    return await ctx.step("long", long)


@app.workflow(name="suicidal")
async def suicidal(ctx: codara.Context, _: Any) -> str:
    """Its step SIGKILLs the worker executing it, every time."""

    def die() -> str:
        note(f"{ctx.run_id} die")
        os.kill(os.getpid(), signal.SIGKILL)
        return "unreachable"

    return await ctx.step("die", die)
