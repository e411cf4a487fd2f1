"""Canaries in a run's input appear in no API response and no console page: the input is
masked before it is stored, so every view of the run, its journal and its review shows
tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Env

CANARY = "Jane.Doe+bank@Example.com, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32"
PIECES = ("Jane.Doe", "jane.doe", "4111 1111", "4111111111111111", "GB82", "WEST 1234")


async def test_no_view_of_a_run_or_its_review_shows_the_personal_values(env: Env) -> None:
    async with env.client("root") as root:
        body = {"workflow": "refunds",
                "input": {"amount": 70.0, "confidence": 0.1, "customer": CANARY}}  # fmt: skip
        created = await root.post("/api/runs", json=body)
        assert created.status_code == 201
        run_id = created.json()["id"]
        await env.app.work(until_idle=True)
        detail = await root.get(f"/api/runs/{run_id}")
        [review] = detail.json()["reviews"]
        pages = [
            created,
            detail,
            await root.get("/api/runs"),
            await root.get("/api/reviews"),
            await root.get(f"/api/reviews/{review['id']}"),
            await root.get("/runs"),
            await root.get(f"/runs/{run_id}"),
            await root.get(f"/reviews/{review['id']}"),
            await root.get("/queue"),
        ]
    assert all(p.status_code in (200, 201) for p in pages), [p.status_code for p in pages]
    assert "&lt;email:" in pages[6].text or "<email:" in pages[6].text  # the token is shown
    for page in pages:
        for piece in PIECES:
            assert piece not in page.text, (str(page.url), piece)
