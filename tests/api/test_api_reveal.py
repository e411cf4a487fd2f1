"""A reviewer sees the original behind a token only when ``[privacy] reveal`` lets one of
their roles see its kind, for an open item they may decide, with a purpose; each reveal is
in the item's hash-chained history and in ``codara_unmask_events``, and no other view shows
the value. On SQLite and PostgreSQL (the ``seeded`` fixture)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest

from codara.api import create_app
from codara.config import Settings
from codara.errors import ConfigError
from codara.privacy import TOKEN
from codara.trace import verify_chain

if TYPE_CHECKING:
    from conftest import Env, Seeded

CARD = "4111 1111 1111 1111"
IBAN = "GB82 WEST 1234 5698 7654 32"
CANARY = f"jane.doe@example.com, card {CARD}, IBAN {IBAN}"
RULES = Settings.model_validate({"privacy": {"reveal": {"finance": ["card"]}}})


@pytest.fixture
async def renv(
    seeded: Seeded, env_factory: Callable[..., Env], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Env]:
    """The refunds app with a vault, finance allowed to reveal card numbers."""
    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    e = env_factory(seeded, RULES)
    async with e.api.router.lifespan_context(e.api):
        yield e


async def _big_refund(env: Env) -> tuple[str, str, dict[str, str]]:
    """A refund the finance role must review; (run id, review id, kind -> token)."""
    run_id = await env.start(900.0, 0.95, customer=CANARY)
    review_id = await env.review_of(run_id)
    async with env.client("carol") as carol:
        item = (await carol.get(f"/api/reviews/{review_id}")).json()["item"]
    tokens = {t[1:].split(":")[0]: t for t in TOKEN.findall(item["context"]["customer"])}
    assert set(tokens) == {"email", "card", "iban"}, item["context"]
    return run_id, review_id, tokens


async def test_a_finance_reviewer_reveals_a_card_and_it_is_recorded(renv: Env) -> None:
    run_id, review_id, tokens = await _big_refund(renv)
    async with renv.client("carol") as carol:
        shown = await carol.post(
            f"/api/reviews/{review_id}/reveal",
            json={"token": tokens["card"], "purpose": "compare with the issuer's fraud list"},
        )
        assert shown.status_code == 200, shown.text
        assert shown.json() == {"token": tokens["card"], "kind": "card", "value": CARD}
        assert shown.headers["cache-control"] == "no-store"
        detail = await carol.get(f"/api/reviews/{review_id}")
    [event] = [h for h in detail.json()["history"] if h["action"] == "reveal"]
    assert event["actor"] == "carol"
    assert event["detail"] == {
        "token": tokens["card"],
        "kind": "card",
        "purpose": "compare with the issuer's fraud list",
    }
    assert "4111" not in detail.text
    events = await renv.app.store.execute_raw(
        "SELECT actor, token, kind, run_id, purpose FROM codara_unmask_events"
    )
    assert [tuple(e) for e in events] == [
        (
            "carol",
            tokens["card"],
            "card",
            run_id,
            f"review {review_id}: compare with the issuer's fraud list",
        )
    ]
    report = await verify_chain(renv.app.store)
    assert report.problems == [], report.problems
    # a reveal is not a decision: the item is still open, the run still waits
    assert detail.json()["item"]["status"] == "pending"


async def test_only_the_allowed_kinds_roles_and_tokens_reveal(renv: Env) -> None:
    _, review_id, tokens = await _big_refund(renv)
    url = f"/api/reviews/{review_id}/reveal"
    purpose = "checking"
    async with renv.client("carol") as carol, renv.client("root") as root:
        async with renv.client("alice") as alice, renv.client("olga") as olga:
            # finance may reveal cards, not IBANs
            iban = await carol.post(url, json={"token": tokens["iban"], "purpose": purpose})
            assert iban.status_code == 403, iban.text
            assert "may not reveal iban" in iban.json()["error"]["message"]
            # an admin is not allowed unless a role of theirs is listed
            by_root = await root.post(url, json={"token": tokens["card"], "purpose": purpose})
            assert by_root.status_code == 403, by_root.text
            # support cannot see a finance item; an operator sees it but may not decide it
            by_alice = await alice.post(url, json={"token": tokens["card"], "purpose": purpose})
            assert by_alice.status_code == 403
            by_olga = await olga.post(url, json={"token": tokens["card"], "purpose": purpose})
            assert by_olga.status_code == 403
        # a token of the right kind that is not in this item
        other = await carol.post(url, json={"token": "<card:0123456789ab>", "purpose": purpose})
        assert other.status_code == 404, other.text
        # a value instead of a token is refused without being echoed
        raw = await carol.post(url, json={"token": CARD, "purpose": purpose})
        assert raw.status_code == 422, raw.text
        assert "4111" not in raw.text
        # no purpose, or only blanks
        for body in ({"token": tokens["card"]}, {"token": tokens["card"], "purpose": "   "}):
            blank = await carol.post(url, json=body)
            assert blank.status_code == 422, blank.text
        # no such review
        gone = await carol.post(
            "/api/reviews/nosuchreview/reveal", json={"token": tokens["card"], "purpose": purpose}
        )
        assert gone.status_code == 404
    rows = await renv.app.store.execute_raw("SELECT COUNT(*) FROM codara_unmask_events")
    assert rows[0][0] == 0  # nothing was revealed, nothing recorded


async def test_no_reveal_after_the_decision_or_after_erasure(renv: Env) -> None:
    from codara.engine._privacy import erase, privacy

    _, review_id, tokens = await _big_refund(renv)
    _, other_id, other_tokens = await _big_refund(renv)
    url = f"/api/reviews/{review_id}/reveal"
    async with renv.client("carol") as carol:
        assert (await carol.post(f"/api/reviews/{review_id}/approve")).status_code == 200
        late = await carol.post(url, json={"token": tokens["card"], "purpose": "after"})
        assert late.status_code == 409, late.text
        # the same card in another open item, erased (right to erasure): nothing to open
        assert other_tokens["card"] == tokens["card"]
        await erase(renv.app.store, privacy(), CARD, by="dpo")
        erased = await carol.post(
            f"/api/reviews/{other_id}/reveal", json={"token": tokens["card"], "purpose": "x"}
        )
        assert erased.status_code == 404, erased.text
        assert "erased" in erased.json()["error"]["message"]


async def test_without_the_vault_key_the_server_says_so(
    renv: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, review_id, tokens = await _big_refund(renv)
    monkeypatch.delenv("CODARA_VAULT_KEY")
    async with renv.client("carol") as carol:
        shown = await carol.post(
            f"/api/reviews/{review_id}/reveal", json={"token": tokens["card"], "purpose": "x"}
        )
    assert shown.status_code == 400, shown.text
    assert "CODARA_VAULT_KEY" in shown.json()["error"]["message"]


async def test_the_console_offers_reveal_to_allowed_reviewers_only(renv: Env) -> None:
    _, review_id, tokens = await _big_refund(renv)
    async with renv.client("carol") as carol, renv.client("root") as root:
        page = await carol.get(f"/reviews/{review_id}")
        assert page.status_code == 200
        assert 'action="/reviews/' + review_id + '/reveal"' in page.text
        offered = re.findall(r'name="token" value="([^"]+)"', page.text)
        assert [t.replace("&lt;", "<").replace("&gt;", ">") for t in offered] == [tokens["card"]]
        assert CARD not in page.text
        assert "Personal data" not in (await root.get(f"/reviews/{review_id}")).text
        shown = await carol.post(
            f"/reviews/{review_id}/reveal", data={"token": tokens["card"], "purpose": "fraud"}
        )
        assert shown.status_code == 200, shown.text
        assert f'id="revealed-value">{CARD}<' in shown.text
        assert shown.headers["cache-control"] == "no-store"
        again = await carol.get(f"/reviews/{review_id}")  # the next view shows the token
        assert CARD not in again.text
        assert "reveal" in again.text  # in the history
        refused = await carol.post(
            f"/reviews/{review_id}/reveal", data={"token": tokens["iban"], "purpose": "fraud"}
        )
        assert refused.status_code == 403
        assert "GB82" not in refused.text


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"reveal": {"finance": ["cards"]}}, "unknown kind(s) cards"),
        ({"reveal": {"Finance Team": ["card"]}}, "is not a role name"),
        ({"reveal": {"finance": "card"}}, "must be a list of kinds"),
        ({"reveal": ["finance"]}, "must be a table"),
        ({"reveals": {}}, "unknown key(s): reveals"),
    ],
)
def test_a_broken_privacy_section_stops_the_server_at_start(
    privacy: dict[str, object], message: str
) -> None:
    import codara

    settings = Settings.model_validate({"privacy": privacy})
    with pytest.raises(ConfigError) as exc:
        create_app(codara.App("sqlite:///:memory:", settings=settings))
    assert message in exc.value.message
