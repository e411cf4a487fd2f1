"""An app with a gated workflow, for the `codara gate` tests: ``answers`` proposes an intent
and asks its policies (from the project's codara.toml) whether it may answer on its own."""

from __future__ import annotations

from typing import Any

import codara
from codara.config import load_settings
from codara.review import ReviewGate, install_reviews


def build(url: str | None = None, config: str | None = None) -> codara.App:
    settings = load_settings(config)
    app = codara.App(url, settings=settings) if url else codara.App(settings=settings)
    gate = ReviewGate.from_settings(settings, "answers")
    install_reviews(app)

    @app.workflow(name="answers", version="3")
    async def answers(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = {"intent": req["intent"]}
        result = await gate.check(ctx, "reply", proposal, inputs={"confidence": req["confidence"]})
        return {"outcome": result.outcome}

    return app


def __getattr__(name: str) -> Any:
    """``gate_app:app``, built when the CLI asks for it (from the project's codara.toml)."""
    if name == "app":
        return build()
    raise AttributeError(name)
