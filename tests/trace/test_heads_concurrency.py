"""The chain heads stay one unbroken sequence when many runs end at once: two workers (two
stores, separate connections) finishing runs while runs are cancelled beside them."""

from __future__ import annotations

import asyncio

from scenario import make_app


async def test_concurrent_finishes_and_cancels_keep_one_chain(db_url: str) -> None:
    first, second = make_app(db_url), make_app(db_url)
    async with first, second:
        ids = await first.start_runs("five", [None] * 40)
        sleepers = await first.start_runs("nap", [None] * 10)

        async def cancel_all() -> None:
            for run_id in sleepers:
                await asyncio.sleep(0)
                await second.cancel(run_id)

        await asyncio.gather(
            first.work(concurrency=8, until_idle=True),
            second.work(concurrency=8, until_idle=True),
            cancel_all(),
        )
        statuses = {(await first.get_run(r)).status for r in ids}
        assert statuses == {"completed"}
        report = await first.verify()
        assert report.problems == []
        assert report.heads_checked == 50
        seqs = await first.store.execute_raw("SELECT seq FROM codara_chain_heads ORDER BY seq")
        assert [s for (s,) in seqs] == list(range(1, 51))
