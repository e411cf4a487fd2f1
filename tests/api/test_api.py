"""The REST API and the console over HTTP, on SQLite and PostgreSQL: authentication on every
route, roles, the review lifecycle resuming runs, conflicts, CSRF, and GETs that never decide."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from typer.testing import CliRunner

import codara
from codara.api._auth import PUBLIC_PATHS
from codara.auth import AuthError, Users
from codara.auth._web import SESSION_COOKIE, csrf_token
from codara.cli import app as cli_app

if TYPE_CHECKING:
    from conftest import Env, Seeded  # tests/api/conftest.py

A_ID = "0123456789abcdef0123456789abcdef"


def _routes(env: Env) -> list[tuple[str, str, APIRoute]]:
    """(method, full path, route) for every HTTP route of the app, included routers too."""
    out: list[tuple[str, str, APIRoute]] = []
    for ctx in iter_route_contexts(env.api.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute) and ctx.path and ctx.methods:
            out.extend((m, ctx.path, route) for m in sorted(set(ctx.methods) - {"HEAD"}))
    assert len(out) > 20, out
    return out


def _fill(path: str, **values: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), A_ID), path)


async def _login(env: Env, client: httpx.AsyncClient, user: str) -> str:
    """Log ``client`` in through the console's form; return the session's CSRF token."""
    r = await client.post("/login", data={"username": user, "password": env.password, "next": "/"})
    assert r.status_code == 303, r.text
    cookie = r.cookies[SESSION_COOKIE]
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    client.cookies.set(SESSION_COOKIE, cookie)
    return csrf_token(cookie)


# -- authentication and roles, for every route in the table -----------------------------------
async def test_every_route_refuses_anonymous_and_bad_tokens(env: Env) -> None:
    routes = _routes(env)
    public = {(m, p) for m, p, _ in routes if p in PUBLIC_PATHS}
    assert public == {("GET", "/healthz"), ("GET", "/login"), ("POST", "/login")}
    users = Users(env.app.store, env.app.clock)
    revoked = await users.create_token("alice", "old")
    await users.revoke(revoked)
    expired = await users.create_token("alice", "short", ttl=60)
    env.clock.advance(61)
    checked = 0
    async with env.client() as anon:
        for method, template, _ in routes:
            if template in PUBLIC_PATHS:
                continue
            path = _fill(template)
            for headers in (
                {},
                {"Authorization": "Bearer cdr_" + "x" * 43},
                {"Authorization": "Basic YWxpY2U6cGFzcw=="},
                {"Authorization": f"Bearer {revoked}"},
                {"Authorization": f"Bearer {expired}"},
            ):
                r = await anon.request(method, path, headers=headers, json={})
                checked += 1
                if path.startswith("/api/") or path == "/openapi.json":
                    assert r.status_code == 401, (method, path, headers, r.text)
                    assert r.json()["error"]["code"] == "unauthenticated"
                elif method == "GET":
                    assert r.status_code == 303, (method, path, r.status_code)
                    assert r.headers["location"].startswith("/login?next=")
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
            # a forged session cookie is no better than no cookie
            anon.cookies.set(SESSION_COOKIE, "cdr_" + "y" * 43)
            r = await anon.request(method, path)
            anon.cookies.clear()
            assert r.status_code in (401, 303), (method, path, r.status_code)
        # even a path that does not exist says 401 before 404
        assert (await anon.get("/api/nope")).status_code == 401
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        assert (await anon.get("/static/htmx.min.js")).status_code == 200
    assert checked > 100


async def test_wrong_role_is_forbidden(env: Env) -> None:
    run_id = await env.start(900.0, confidence=0.99)  # 'big': the finance queue
    review_id = await env.review_of(run_id)
    routes = _routes(env)
    operator_routes = {(m, p) for m, p, _ in routes if p.startswith(("/api/runs", "/runs"))}
    assert len(operator_routes) == 8, operator_routes
    async with env.client("alice") as alice:  # a support reviewer
        for method, template in sorted(operator_routes):
            path = _fill(template, run_id=run_id, name="go")
            r = await alice.request(method, path, json={"workflow": "refunds", "input": {}})
            assert r.status_code == 403, (method, path, r.status_code, r.text)
        for method, template, _ in routes:  # every route on a finance item
            if "{review_id}" not in template:
                continue
            path = _fill(template, review_id=review_id)
            if path.startswith("/api/"):
                body = {"proposal": {}, "reason_code": "wrong_amount", "to": "carol",
                        "token": "<card:0123456789ab>", "purpose": "x"}  # fmt: skip
                r = await alice.request(method, path, json=body)
            else:  # console forms
                form = {"proposal": "{}", "reason_code": "wrong_amount",
                        "token": "<card:0123456789ab>", "purpose": "x"}  # fmt: skip
                r = await alice.request(method, path, data=form if method == "POST" else None)
            assert r.status_code == 403, (method, template, r.status_code, r.text)
        listed = (await alice.get("/api/reviews")).json()["items"]
        assert listed == []
        assert (await alice.get("/api/reviews?role=finance")).json()["items"] == []
        assert (await alice.get("/api/reviews/counts")).json()["queues"] == []
    async with env.client("carol") as carol:
        [item] = (await carol.get("/api/reviews")).json()["items"]
        assert item["id"] == review_id
    async with env.client("olga") as olga:  # an operator sees every queue, decides none
        assert len((await olga.get("/api/reviews")).json()["items"]) == 1
        r = await olga.post(f"/api/reviews/{review_id}/approve")
        assert r.status_code == 403
        assert (await olga.get("/api/me")).json()["is_operator"] is True


# -- the review lifecycle ----------------------------------------------------------------------
async def test_claim_approve_edit_reject_bulk_resume_the_runs(env: Env) -> None:
    runs = [await env.start(50.0 + i) for i in range(3)]
    cheap = [await env.start(5.0 + i, low_risk=True) for i in range(2)]
    ids = {r: await env.review_of(r) for r in runs + cheap}
    async with env.client("alice") as alice, env.client("dan") as dan:
        listed = (await alice.get("/api/reviews")).json()["items"]
        assert {i["id"] for i in listed} == set(ids.values())
        counts = (await alice.get("/api/reviews/counts")).json()["queues"]
        assert counts == [
            {
                "role": "support",
                "open": 5,
                "next_due_at": env.clock() + 3600,
                "oldest_created_at": env.clock(),
            }
        ]
        first = ids[runs[0]]
        r = await alice.post(f"/api/reviews/{first}/claim", json={"ttl": 600})
        assert r.status_code == 200
        assert r.json()["assignee"] == "alice"
        assert (await dan.post(f"/api/reviews/{first}/approve")).status_code == 409
        assert (await alice.post(f"/api/reviews/{first}/unclaim")).json()["assignee"] is None
        r = await alice.post(f"/api/reviews/{first}/delegate", json={"to": "carol"})
        assert r.status_code == 422, "carol does not hold the role"
        r = await alice.post(f"/api/reviews/{first}/delegate", json={"to": "dan"})
        assert r.json()["assignee"] == "dan"
        assert (await alice.post(f"/api/reviews/{first}/approve")).status_code == 409
        r = await dan.post(f"/api/reviews/{first}/approve", json={"version": r.json()["version"]})
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "approved"

        bad = await alice.post(
            f"/api/reviews/{ids[runs[1]]}/edit", json={"proposal": {"amount": "lots"}}
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "input_error"
        edit = {"proposal": {"amount": 40.0, "note": "partial"}, "comment": "half was used"}
        assert (await alice.post(f"/api/reviews/{ids[runs[1]]}/edit", json=edit)).is_success
        nope = await alice.post(f"/api/reviews/{ids[runs[2]]}/reject", json={"reason_code": "x"})
        assert nope.status_code == 422
        reject = {"reason_code": "fraud_suspected", "comment": "known pattern"}
        r = await dan.post(f"/api/reviews/{ids[runs[2]]}/reject", json=reject)
        assert r.status_code == 200
        assert r.json()["result"]["reason_code"] == "fraud_suspected"

        mixed = await alice.post(
            "/api/reviews/bulk-approve", json={"ids": [ids[cheap[0]], ids[runs[0]]]}
        )
        assert mixed.status_code in (409, 422)  # runs[0] is decided and not low-risk
        assert (await alice.get(f"/api/reviews/{ids[cheap[0]]}")).json()["item"]["status"] == (
            "pending"
        ), "checked before deciding any"
        r = await alice.post("/api/reviews/bulk-approve", json={"ids": [ids[c] for c in cheap]})
        assert r.status_code == 200
        assert [i["outcome"] for i in r.json()["items"]] == [
            "approved",
            "approved",
        ]
        detail = (await alice.get(f"/api/reviews/{ids[runs[2]]}")).json()
        assert [h["action"] for h in detail["history"]] == ["create", "reject"]
        assert any(j["kind"] for j in detail["journal"])
        assert (await alice.get("/api/reviews")).json()["items"] == []
        decided = (await alice.get("/api/reviews?status=decided")).json()["items"]
        assert len(decided) == 5
    await env.app.work(until_idle=True)
    outs = [await env.app.output(r) for r in runs + cheap]
    assert outs[0] == {
        "outcome": "approved",
        "amount": 50.0,
        "note": "refund as asked",
        "reviewers": ["dan"],
        "reason_code": None,
    }
    assert outs[1]["outcome"] == "edited"
    assert outs[1]["amount"] == 40.0
    assert outs[1]["note"] == "partial"
    assert outs[2]["outcome"] == "rejected"
    assert outs[2]["reason_code"] == "fraud_suspected"
    assert [o["outcome"] for o in outs[3:]] == ["approved", "approved"]


async def test_two_reviewers_at_once_exactly_one_wins(env: Env) -> None:
    run_id = await env.start(50.0)
    review_id = await env.review_of(run_id)
    async with env.client("alice") as alice, env.client("dan") as dan:
        version = (await alice.get(f"/api/reviews/{review_id}")).json()["item"]["version"]
        results = await asyncio.gather(
            alice.post(f"/api/reviews/{review_id}/approve", json={"version": version}),
            dan.post(
                f"/api/reviews/{review_id}/reject",
                json={"reason_code": "wrong_amount", "version": version},
            ),
        )
    assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 409)
    assert loser.json()["error"]["code"] == "conflict"
    await env.app.work(until_idle=True)
    assert (await env.app.get_run(run_id)).status == "completed"
    signals = await env.app.store.execute_raw(
        "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (run_id,)
    )
    assert signals[0][0] == 1, "decided exactly once"


# -- runs and signals (operators) --------------------------------------------------------------
async def test_operators_start_inspect_signal_and_cancel_runs(env: Env) -> None:
    async with env.client("root") as root, env.client("olga") as olga:
        r = await olga.post("/api/runs", json={"input": {"amount": 9}})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "input_error"
        assert r.json()["detail"][0]["loc"] == ["body", "workflow"]
        r = await olga.post("/api/runs", json={"workflow": "nope", "input": {}})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "unknown_workflow"
        body = {"workflow": "refunds", "input": {"amount": 70.0, "confidence": 0.1}}
        r = await root.post("/api/runs", json=body)
        assert r.status_code == 201
        assert r.json()["status"] == "queued"
        run_id = r.json()["id"]
        await env.app.work(until_idle=True)
        detail = (await olga.get(f"/api/runs/{run_id}")).json()
        assert detail["run"]["status"] == "waiting"
        assert [i["role"] for i in detail["reviews"]] == ["support"]
        assert [j["name"] for j in detail["journal"]][:2] == ["policy:refund", "review:refund"]
        listed = (await olga.get("/api/runs", params={"status": "waiting"})).json()["runs"]
        assert [x["id"] for x in listed] == [run_id]
        assert (await olga.get("/api/runs", params={"status": "bogus"})).status_code == 422
        assert (await olga.get(f"/api/runs/{'f' * 32}")).status_code == 404
        assert (await olga.get("/api/runs/bad%20id")).status_code == 422

        review_id = detail["reviews"][0]["id"]
        r = await root.post(f"/api/reviews/{review_id}/approve")  # root started the run
        assert r.status_code == 403
        assert "four-eyes" in r.json()["error"]["hint"]
        forged = await olga.post(f"/api/runs/{run_id}/signals/review:{review_id}", json={})
        assert forged.status_code == 403, "decisions only through the review routes"
        r = await olga.post(f"/api/runs/{run_id}/signals/poke", json={"payload": {"x": 1}})
        assert r.status_code == 200
        assert r.json()["signal"] == "poke"

        assert (await olga.post(f"/api/runs/{run_id}/cancel")).json()["status"] == "cancelled"
        again = await olga.post(f"/api/runs/{run_id}/cancel")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "conflict"
        assert (await olga.get("/runs")).status_code == 200
        page = await olga.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert "policy:refund" in page.text


# -- the console: sessions, CSRF, GETs never decide --------------------------------------------
async def test_console_session_csrf_and_decisions(env: Env) -> None:
    run_ids = [await env.start(50.0), await env.start(60.0)]
    first, second = [await env.review_of(r) for r in run_ids]
    async with env.client() as browser:
        csrf = await _login(env, browser, "alice")
        bad = await browser.post("/login", data={"username": "alice", "password": "wrong!!!!"})
        assert bad.status_code == 401
        assert "wrong user name or password" in bad.text
        queue = await browser.get("/queue")
        assert queue.status_code == 200
        assert first in queue.text
        assert csrf in queue.text
        page = await browser.get(f"/reviews/{first}")
        assert "refund as asked" in page.text
        assert "policy:refund" in page.text
        for data in ({}, {"csrf_token": "0" * 64}, {"csrf_token": csrf_token("cdr_other")}):
            r = await browser.post(f"/reviews/{first}/approve", data=data)
            assert r.status_code == 403, r.text
        r = await browser.post(f"/api/reviews/{first}/approve")  # cookie, no header
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "csrf_failed"
        r = await browser.post(
            f"/reviews/{first}/edit", data={"csrf_token": csrf, "proposal": "{not json"}
        )
        assert r.status_code == 422
        assert "not valid JSON" in r.text
        assert "{not json" in r.text
        r = await browser.post(
            f"/api/reviews/{first}/claim", headers={"X-CSRF-Token": csrf}, json={}
        )
        assert r.status_code == 200
        r = await browser.post(f"/reviews/{first}/approve", data={"csrf_token": csrf})
        assert r.status_code == 303
        assert r.headers["location"] == f"/reviews/{second}?done=approved"
        r = await browser.post(
            f"/reviews/{first}/approve", data={"csrf_token": csrf, "version": "0"}
        )
        assert r.status_code == 409
        assert "already decided" in r.text
        r = await browser.post(
            f"/reviews/{second}/reject",
            data={"csrf_token": csrf, "reason_code": "wrong_amount", "comment": "typo"},
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/queue?done=rejected"
        assert (await browser.post("/logout", data={"csrf_token": csrf})).status_code == 303
        r = await browser.get("/queue")
        assert r.status_code == 303, "the session was revoked"
    await env.app.work(until_idle=True)
    assert (await env.app.output(run_ids[0]))["outcome"] == "approved"
    assert (await env.app.output(run_ids[1]))["reason_code"] == "wrong_amount"


async def test_console_queue_filters_and_bulk_approve(sqlite_env: Env) -> None:
    env = sqlite_env
    cheap = [await env.start(5.0, low_risk=True), await env.start(6.0, low_risk=True)]
    risky = await env.start(70.0)
    ids = [await env.review_of(r) for r in cheap]
    async with env.client() as browser:
        csrf = await _login(env, browser, "alice")
        page = (await browser.get("/queue")).text
        assert page.count('type="checkbox" name="ids"') == 2, "only low-risk items"
        assert "Approve selected low-risk items" in page
        assert (await browser.get("/queue?role=Bad%00")).status_code == 422
        assert "Nothing to review" in (await browser.get("/queue?role=finance")).text
        r = await browser.post(
            "/queue/bulk-approve",
            data={"csrf_token": csrf, "ids": [*ids, await env.review_of(risky)]},
        )
        assert r.status_code == 422, "all are checked before any is decided"
        r = await browser.post("/queue/bulk-approve", data={"csrf_token": csrf, "ids": ids})
        assert r.status_code == 303
        page = (await browser.get(r.headers["location"])).text
        assert "Approved 2 low-risk item(s)." in page
        decided = (await browser.get("/queue?status=decided")).text
        assert all(i in decided for i in ids)
        assert (await browser.get("/runs")).status_code == 403, "reviewers see no runs"
    await env.app.work(until_idle=True)
    assert [(await env.app.output(r))["outcome"] for r in cheap] == ["approved", "approved"]
    assert (await env.app.get_run(risky)).status == "waiting"


async def test_get_never_decides(env: Env) -> None:
    run_id = await env.start(50.0)
    review_id = await env.review_of(run_id)
    async with env.client() as browser, env.client("alice") as alice:
        await _login(env, browser, "root")
        routes = _routes(env)
        readable = {p for m, p, _ in routes if m == "GET"}
        for method, template, _ in routes:
            path = _fill(template, run_id=run_id, review_id=review_id, name="go")
            if method == "GET":
                for client in (browser, alice):
                    r = await client.get(path)
                    assert r.status_code < 500, (path, r.status_code)
            elif template not in readable:  # a link to an action, opened by a mail scanner
                for client in (browser, alice):
                    assert (await client.get(path)).status_code in (404, 405), path
    async with env.client("alice") as alice:
        detail = (await alice.get(f"/api/reviews/{review_id}")).json()
    assert detail["item"]["status"] == "pending"
    assert [h["action"] for h in detail["history"]] == ["create"]
    signals = await env.app.store.execute_raw(
        "SELECT COUNT(*) FROM codara_signals WHERE run_id = ?", (run_id,)
    )
    assert signals[0][0] == 0


# -- the CLI: codara serve, users, tokens ------------------------------------------------------
APP_MODULE = """
import codara

app = codara.App()


@app.workflow(name="hello")
async def hello(ctx: codara.Context, data: dict) -> dict:
    return data
"""


def test_cli_users_tokens_and_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeded_sqlite: Seeded
) -> None:
    module = f"serve_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(APP_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    env = {"CODARA_DATABASE_URL": seeded_sqlite.url, "CODARA_APP": f"{module}:app"}
    runner = CliRunner()

    def codara_cli(*args: str, stdin: str | None = None) -> Any:
        result = runner.invoke(cli_app, list(args), input=stdin, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    added = codara_cli("users", "add", "vera", "--role", "support", "--role", "fraud",
                       "--password-stdin", stdin="s3cret-pass\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = json.loads(codara_cli("--json", "users", "list").stdout)
    assert {"username": "vera", "roles": ["fraud", "support"], "disabled": False} in (
        listed["users"]
    )
    short = codara_cli("users", "add", "vic", "--role", "x", "--password-stdin", stdin="short\n")
    assert short.exit_code == 4, short.output
    created = codara_cli("tokens", "create", "vera", "--name", "ci")
    assert created.exit_code == 0
    token = created.stdout.strip()
    assert token.startswith("cdr_")

    async def who(token: str) -> str:
        async with codara.App(seeded_sqlite.url) as app:
            return (await Users(app.store, app.clock).authenticate(token)).username

    assert asyncio.run(who(token)) == "vera"
    assert codara_cli("tokens", "revoke", token).exit_code == 0
    with pytest.raises(AuthError):
        asyncio.run(who(token))
    assert codara_cli("tokens", "create", "nobody").exit_code == AuthError.exit_code

    served: list[tuple[str, int, int]] = []

    def fake_server(api: FastAPI, host: str, port: int, log_level: str) -> None:
        async def probe() -> int:
            async with api.router.lifespan_context(api):
                transport = httpx.ASGITransport(app=api)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return (await c.get("/healthz")).status_code

        served.append((host, port, asyncio.run(probe())))

    monkeypatch.setattr("codara.cli._serve.run_server", fake_server)
    result = codara_cli("serve", "--port", "8123")
    assert result.exit_code == 0, result.output
    assert served == [("127.0.0.1", 8123, 200)]
    env["CODARA_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    refused = codara_cli("serve")
    assert refused.exit_code == 9, refused.output  # the schema is checked, never migrated
    assert "codara db upgrade" in refused.output
    assert len(served) == 1
