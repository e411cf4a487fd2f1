"""Human control over HTTP, on SQLite and PostgreSQL: no route sends a review's signal, and a
review whose run was cancelled is closed with it (409 on a late decision, never 200)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Env  # tests/api/conftest.py

FORGED = {"payload": {"outcome": "edited", "proposal": {"amount": 1.0}, "reviewers": ["dan"]}}


async def test_no_route_sends_a_review_signal(env: Env) -> None:
    run_id = await env.start(60.0)
    review_id = await env.review_of(run_id)
    async with env.client("olga") as olga, env.client("root") as root:
        for who in (olga, root):
            r = await who.post(f"/api/runs/{run_id}/signals/review:{review_id}", json=FORGED)
            assert r.status_code == 403, r.text
            error = r.json()["error"]
            assert error["code"] == "reserved_signal"
            assert "/api/reviews/{id}/approve" in error["hint"]
        await env.app.work(until_idle=True)
        assert (await olga.get(f"/api/runs/{run_id}")).json()["run"]["status"] == "waiting"
        item = (await olga.get(f"/api/reviews/{review_id}")).json()
        assert item["item"]["status"] == "pending"
        assert [h["action"] for h in item["history"]] == ["create"]


async def test_a_late_decision_on_a_cancelled_run_is_409_and_the_item_closed(env: Env) -> None:
    """The report: a real reject after the run was cancelled answered 200 and did nothing."""
    run_id = await env.start(60.0)
    review_id = await env.review_of(run_id)
    async with env.client("olga") as olga, env.client("alice") as alice:
        assert (await olga.post(f"/api/runs/{run_id}/cancel")).status_code == 200
        r = await alice.post(
            f"/api/reviews/{review_id}/reject", json={"reason_code": "wrong_amount"}
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "conflict"
        assert "closed" in r.json()["error"]["message"]
        assert "cancelled" in r.json()["error"]["message"]
        for action in ("approve", "claim"):
            again = await alice.post(f"/api/reviews/{review_id}/{action}")
            assert again.status_code == 409, again.text
        item = (await alice.get(f"/api/reviews/{review_id}")).json()
        assert item["item"]["status"] == "closed"
        assert [h["action"] for h in item["history"]] == ["create", "close"]
        assert item["history"][1]["detail"] == {"run_status": "cancelled"}
        assert (await alice.get("/api/reviews")).json()["items"] == []
        closed = (await alice.get("/api/reviews", params={"status": "closed"})).json()["items"]
        assert [i["id"] for i in closed] == [review_id]
        detail = (await olga.get(f"/api/runs/{run_id}")).json()
        assert [i["status"] for i in detail["reviews"]] == ["closed"]
