"""The README tour: a workflow slow enough to kill its worker half way."""

from __future__ import annotations

import asyncio

import codara

app = codara.App()


async def count(i: int) -> int:
    await asyncio.sleep(0.5)  # stands for a call to a model or an API
    return i


@app.workflow(name="count", version="1")
async def count_to(ctx: codara.Context, n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total += await ctx.step(f"count-{i}", count, i)
    return total
