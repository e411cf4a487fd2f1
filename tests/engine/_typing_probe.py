
import codara

async def count(i: int) -> int:
    return i

async def wf(ctx: codara.Context, n: int) -> str:
    ok: int = await ctx.step("ok", count, 1)
    bad = await ctx.step("bad", count, "one")
    wrong: str = await ctx.step("wrong", count, 2)
    return str(ok + bad) + wrong
