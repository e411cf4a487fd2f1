"""A model call inside a workflow is journaled once; a replay never calls the model again."""

from __future__ import annotations

from pydantic import BaseModel

import codara
from codara.models import LLMCall, LLMSettings, llm_step
from codara.testing import FakeLLMServer, FakeReply


class Triage(BaseModel):
    intent: str
    urgent: bool


async def test_model_call_is_journaled_and_replayed_without_calling(
    db_url: str, fake_llm: FakeLLMServer, api_keys: dict[str, str]
) -> None:
    settings = LLMSettings(
        provider="openai",
        model="gpt-4o-mini",
        base_url=fake_llm.openai_base_url,
        input_price_per_mtok=0.15,
        output_price_per_mtok=0.6,
    )
    fake_llm.add(
        FakeReply(
            tool_name="final_result",
            tool_args={"intent": "card_arrival", "urgent": False},
            input_tokens=50,
            output_tokens=10,
        )
    )
    app = codara.App(db_url)
    seen: list[LLMCall] = []

    @app.workflow(name="llm")
    async def wf(ctx: codara.Context, text: str) -> str:
        call = await llm_step(
            ctx, "triage", settings, instructions="Classify.", prompt=text, output_type=Triage
        )
        seen.append(call)
        await ctx.wait_for("reviewed")
        return call.output_as(Triage).intent

    async with app:
        run_id = await app.start_run("llm", "Where is my card?")
        await app.work(until_idle=True)
        assert len(fake_llm.requests) == 1
        await app.send_signal(run_id, "reviewed")
        await app.work(until_idle=True)  # replays the journaled model call
        assert await app.output(run_id) == "card_arrival"
        assert len(fake_llm.requests) == 1, "the replay must not call the model again"
        assert seen[0] == seen[1]
        [row] = [r for r in await app.journal(run_id) if r.name == "triage"]
        record = LLMCall.model_validate_json(row.output or "")
        assert (record.input_tokens, record.output_tokens) == (50, 10)
        assert record.cost_usd is not None
        assert record.cost_usd > 0
        assert api_keys["openai"] not in (row.output or "") + (row.input or "")
