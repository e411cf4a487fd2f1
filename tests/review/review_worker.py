"""A worker process for the review crash test: a workflow that always asks a person."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import codara
from codara.review import ReviewGate, install_reviews, load_policies

POLICIES: dict[str, Any] = {
    "policy_input": {"n": "int"},
    "policies": [
        {
            "name": "always",
            "when": "n >= 0",
            "outcome": "ask",
            "role": "checker",
            "deadline": "24h",
            "on_timeout": "deny",
        }
    ],
}
LEDGER = "CREATE TABLE IF NOT EXISTS review_ledger (run_id TEXT, outcome TEXT)"


def build(url: str) -> codara.App:
    app = codara.App(url)
    gate = ReviewGate(load_policies(POLICIES, workflow="checked"), workflow="checked")
    install_reviews(app)

    async def record(tx: codara.Tx, run_id: str, outcome: str) -> None:
        await tx.execute(
            "INSERT INTO review_ledger VALUES (:run_id, :outcome)",
            {"run_id": run_id, "outcome": outcome},
        )

    @app.workflow(name="checked")
    async def checked(ctx: codara.Context, n: int) -> str:
        result = await gate.check(ctx, "act", {"n": n}, inputs={"n": n})
        await ctx.transaction("record", record, ctx.run_id, result.outcome)
        return result.outcome

    return app


async def main(url: str) -> None:
    async with build(url) as app:
        await app.work(concurrency=64)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
