"""``codara review ...``: the review queue from the command line, through the Reviews service.

The items come from a real workflow behind a ReviewGate (run in this process on the test's
database); the CLI is then invoked as ``codara review ...`` and the run is resumed by a worker
to show that a decision made on the command line reaches it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

import codara
from codara.auth import Users
from codara.review import Principal, ReviewGate, Reviews, load_policies

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

POLICIES: dict[str, Any] = {
    "workflows": {
        "refunds": {
            "reject_reasons": ["wrong_amount", "fraud_suspected"],
            "policy_input": {"amount": "double"},
            "policies": [
                {
                    "name": "big",
                    "when": "amount > 100.0",
                    "outcome": "ask",
                    "role": "support",
                    "deadline": "1h",
                    "on_timeout": "deny",
                }
            ],
        }
    }
}
ADMIN = Principal("root", frozenset({"admin"}))


class Refund(BaseModel):
    amount: float
    note: str


def _app(url: str) -> codara.App:
    app = codara.App(url)
    gate = ReviewGate(load_policies(POLICIES, workflow="refunds"), workflow="refunds")

    @app.workflow(name="refunds")
    async def refunds(ctx: codara.Context, req: dict[str, Any]) -> dict[str, Any]:
        proposal = Refund(amount=req["amount"], note="refund as asked")
        result = await gate.check(
            ctx, "refund", proposal, inputs={"amount": req["amount"]}, context={"customer": "C-7"}
        )
        return {"outcome": result.outcome, "proposal": result.proposal.model_dump()}

    return app


def seed(project: Project, amounts: list[float]) -> list[tuple[str, str]]:
    """Users alice and bob (support), carl (billing); one parked run per amount.

    Returns (run id, review id) pairs in the order of ``amounts``.
    """

    async def go() -> list[tuple[str, str]]:
        async with _app(project.url) as app:
            users = Users(app.store, app.clock)
            await users.add("alice", ["support"])
            await users.add("bob", ["support"])
            await users.add("carl", ["billing"])
            runs = [await app.start_run("refunds", {"amount": a}) for a in amounts]
            await app.work(until_idle=True)
            items = await Reviews(app.store, app.clock).queue(ADMIN)
            by_run = {i.run_id: i.id for i in items}
            return [(r, by_run[r]) for r in runs]

    return asyncio.run(go())


def resume(project: Project) -> dict[str, dict[str, Any]]:
    """Let a worker resume whatever was decided; return the outputs of finished runs."""

    async def go() -> dict[str, dict[str, Any]]:
        async with _app(project.url) as app:
            await app.work(until_idle=True)
            runs = await app.store.list_runs(status="completed")
            return {r.id: json.loads(r.output or "null") for r in runs}

    return asyncio.run(go())


def _json(text: str) -> Any:
    return json.loads(text)


# -- happy paths -------------------------------------------------------------------------------
def test_list_show_and_approve_resume_the_run(any_project: Project, cli: CliFn) -> None:
    """On SQLite and PostgreSQL: list, show, approve; the run resumes with the approval."""
    p = any_project
    [(run_id, review_id)] = seed(p, [500.0])

    listed = cli(p, "review", "list", "--user", "alice", "--json")
    assert listed.exit_code == 0, listed.output
    [item] = _json(listed.stdout)["reviews"]
    assert (item["id"], item["run_id"], item["role"], item["status"]) == (
        review_id,
        run_id,
        "support",
        "pending",
    )
    table = cli(p, "review", "list", "--user", "alice")
    assert review_id in table.stdout
    assert "refunds / refund" in table.stdout

    shown = cli(p, "review", "show", review_id, "--user", "alice")
    assert shown.exit_code == 0, shown.output
    for text in ('"amount": 500.0', '"customer": "C-7"', "big", "wrong_amount", "create"):
        assert text in shown.stdout, text
    as_json = _json(cli(p, "review", "show", review_id, "--user", "alice", "--json").stdout)
    assert as_json["review"]["proposal"] == {"amount": 500.0, "note": "refund as asked"}
    assert as_json["review"]["policy"] == "big"
    assert [h["action"] for h in as_json["history"]] == ["create"]

    approved = cli(p, "review", "approve", review_id, "--user", "alice", "-m", "looks right")
    assert approved.exit_code == 0, approved.output
    assert f"run {run_id} resumes" in approved.stderr
    assert resume(p)[run_id] == {
        "outcome": "approved",
        "proposal": {"amount": 500.0, "note": "refund as asked"},
    }
    decided = cli(p, "review", "list", "--status", "decided", "--user", "alice", "--json")
    assert [i["outcome"] for i in _json(decided.stdout)["reviews"]] == ["approved"]
    assert cli(p, "review", "list", "--user", "alice", "--json").stdout.count('"id"') == 0


def test_claim_then_colleague_is_refused_and_unclaim(project: Project, cli: CliFn) -> None:
    [(_, review_id)] = seed(project, [500.0])
    claimed = cli(project, "review", "claim", review_id, "--user", "alice", "--json")
    assert claimed.exit_code == 0, claimed.output
    assert _json(claimed.stdout)["review"]["assignee"] == "alice"
    refused = cli(project, "review", "approve", review_id, "--user", "bob")
    assert refused.exit_code == 12, refused.output
    assert "claimed by alice" in refused.stderr
    assert f"codara review show {review_id}" in refused.stderr
    back = cli(project, "review", "unclaim", review_id, "--user", "alice")
    assert back.exit_code == 0, back.output
    assert cli(project, "review", "approve", review_id, "--user", "bob").exit_code == 0


def test_edit_with_json_and_file(project: Project, cli: CliFn) -> None:
    (run_a, review_a), (run_b, review_b) = seed(project, [500.0, 300.0])
    edited = cli(
        project,
        "review",
        "edit",
        review_a,
        "--user",
        "alice",
        "--proposal",
        '{"amount": 450.0, "note": "partial"}',
        "--comment",
        "half was already paid",
    )
    assert edited.exit_code == 0, edited.output
    proposal_file = project.path / "proposal.json"
    proposal_file.write_text('{"amount": 250.0, "note": "from a file"}', encoding="utf-8")
    from_file = cli(
        project, "review", "edit", review_b, "-u", "bob", "--proposal-file", str(proposal_file)
    )
    assert from_file.exit_code == 0, from_file.output
    outputs = resume(project)
    assert outputs[run_a] == {"outcome": "edited", "proposal": {"amount": 450.0, "note": "partial"}}
    assert outputs[run_b]["proposal"] == {"amount": 250.0, "note": "from a file"}
    history = _json(cli(project, "review", "show", review_a, "-u", "alice", "--json").stdout)
    edit = history["history"][-1]
    assert edit["action"] == "edit"
    assert edit["detail"]["comment"] == "half was already paid"
    assert {"path": "amount", "op": "replace", "before": 500.0, "after": 450.0} in edit["detail"][
        "diff"
    ]


def test_reject_with_a_coded_reason(project: Project, cli: CliFn) -> None:
    [(run_id, review_id)] = seed(project, [500.0])
    bad = cli(project, "review", "reject", review_id, "--reason", "nope", "--user", "alice")
    assert bad.exit_code == 4, bad.output
    assert "not one of: wrong_amount, fraud_suspected" in bad.stderr
    rejected = cli(
        project, "review", "reject", review_id, "--reason", "fraud_suspected", "--user", "alice"
    )
    assert rejected.exit_code == 0, rejected.output
    assert resume(project)[run_id]["outcome"] == "rejected"


def test_user_from_the_environment(project: Project, cli: CliFn, monkeypatch: Any) -> None:
    [(_, review_id)] = seed(project, [500.0])
    monkeypatch.setenv("CODARA_USER", "alice")
    result = cli(project, "review", "claim", review_id, "--json")
    assert result.exit_code == 0, result.output
    assert _json(result.stdout)["review"]["assignee"] == "alice"


# -- conflicts and refusals --------------------------------------------------------------------
def test_second_decision_exits_12(project: Project, cli: CliFn) -> None:
    [(_, review_id)] = seed(project, [500.0])
    assert cli(project, "review", "approve", review_id, "--user", "alice").exit_code == 0
    late = cli(project, "review", "reject", review_id, "--reason", "wrong_amount", "-u", "bob")
    assert late.exit_code == 12, late.output
    assert "already decided (approved)" in late.stderr
    as_json = cli(project, "review", "approve", review_id, "-u", "bob", "--json")
    assert as_json.exit_code == 12
    assert _json(as_json.stdout)["error"]["code"] == "conflict"


def test_stale_expected_version_exits_12(project: Project, cli: CliFn) -> None:
    [(_, review_id)] = seed(project, [500.0])
    shown = _json(cli(project, "review", "show", review_id, "-u", "alice", "--json").stdout)
    version = str(shown["review"]["version"])
    assert cli(project, "review", "claim", review_id, "-u", "alice").exit_code == 0  # version+1
    stale = cli(project, "review", "approve", review_id, "-u", "alice", "--expect-version", version)
    assert stale.exit_code == 12, stale.output
    assert "changed since you opened it" in stale.stderr


def test_two_processes_decide_at_once_one_wins(project: Project) -> None:
    """Two real `codara review` processes decide the same item: one exits 0, the other 12."""
    [(_, review_id)] = seed(project, [500.0])
    commands = [
        ["review", "approve", review_id, "--user", "alice"],
        ["review", "reject", review_id, "--reason", "wrong_amount", "--user", "bob"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "codara", *args],
            cwd=project.path,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        results.append((p.returncode, err))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 12], results
    loser = next(err for code, err in results if code == 12)
    assert "Traceback" not in loser
    assert "error:" in loser
    events = project.sql(
        "SELECT action FROM codara_review_events WHERE review_id = ? ORDER BY id", (review_id,)
    )
    assert [e[0] for e in events][1:] in (["approve"], ["reject"]), "decided exactly once"
    assert project.sql("SELECT COUNT(*) FROM codara_signals")[0][0] == 1


def test_bad_proposal_json_exits_4_with_the_position(project: Project, cli: CliFn) -> None:
    [(_, review_id)] = seed(project, [500.0])
    bad = cli(project, "review", "edit", review_id, "-u", "alice", "--proposal", '{"amount": 4,}')
    assert bad.exit_code == 4, bad.output
    assert "--proposal is not valid JSON" in bad.stderr
    assert "line 1 column 14 (char 13)" in bad.stderr
    broken = project.path / "broken.json"
    broken.write_text('{\n  "amount": 4\n  "note": "x"\n}', encoding="utf-8")
    from_file = cli(project, "review", "edit", review_id, "-u", "alice", "-f", str(broken))
    assert from_file.exit_code == 4
    assert "line 3 column 3" in from_file.stderr
    neither = cli(project, "review", "edit", review_id, "-u", "alice")
    assert neither.exit_code == 4
    assert "--proposal JSON or --proposal-file FILE" in neither.stderr
    wrong_type = cli(
        project, "review", "edit", review_id, "-u", "alice", "-p", '{"amount": "lots", "note": ""}'
    )
    assert wrong_type.exit_code == 4, wrong_type.output
    assert "the edited proposal is not valid: amount." in wrong_type.stderr
    still = _json(cli(project, "review", "show", review_id, "-u", "alice", "--json").stdout)
    assert still["review"]["status"] == "pending"


def test_unknown_review_exits_6(project: Project, cli: CliFn) -> None:
    seed(project, [500.0])
    for args in (("show", "nope"), ("approve", "nope"), ("claim", "nope")):
        result = cli(project, "review", *args, "--user", "alice")
        assert result.exit_code == 6, result.output
        assert "no review with id 'nope'" in result.stderr
        assert "codara review list" in result.stderr


def test_a_user_without_the_role_exits_14(project: Project, cli: CliFn) -> None:
    [(run_id, review_id)] = seed(project, [500.0])
    for args in (("approve", review_id), ("show", review_id), ("claim", review_id)):
        result = cli(project, "review", *args, "--user", "carl")
        assert result.exit_code == 14, result.output
        assert "role 'support'" in result.stderr
    assert _json(cli(project, "review", "list", "-u", "carl", "--json").stdout) == {"reviews": []}
    assert run_id not in resume(project)


def test_unknown_or_missing_user(project: Project, cli: CliFn, monkeypatch: Any) -> None:
    [(_, review_id)] = seed(project, [500.0])
    monkeypatch.delenv("CODARA_USER", raising=False)
    unknown = cli(project, "review", "approve", review_id, "--user", "mallory")
    assert unknown.exit_code == 15, unknown.output
    assert "no active user 'mallory'" in unknown.stderr
    missing = cli(project, "review", "list")
    assert missing.exit_code == 2, missing.output
    assert "--user" in missing.stderr
    assert "CODARA_USER" in missing.stderr


def test_unknown_status_exits_4(project: Project, cli: CliFn) -> None:
    seed(project, [500.0])
    result = cli(project, "review", "list", "--status", "done", "-u", "alice")
    assert result.exit_code == 4, result.output
    assert "use one of: open, decided" in result.stderr


# -- human control cannot be bypassed ----------------------------------------------------------
FORGED = '{"outcome": "edited", "reviewers": ["alice", "bob"], "proposal": {"amount": 1.0}}'


def test_codara_signal_cannot_decide_a_review(any_project: Project, cli: CliFn) -> None:
    """The report: `codara signal RUN review:<id>` decided a review for two reviewers who
    never saw it. It is refused (exit 14), points to `codara review`, and changes nothing."""
    p = any_project
    [(run_id, review_id)] = seed(p, [500.0])
    forged = cli(p, "signal", run_id, f"review:{review_id}", "--payload", FORGED)
    assert forged.exit_code == 14, forged.output
    assert "reserved" in forged.stderr
    assert f"codara review approve|edit|reject {review_id}" in forged.stderr
    as_json = cli(p, "signal", run_id, f"review:{review_id}", "--json")
    assert as_json.exit_code == 14
    assert _json(as_json.stdout)["error"]["code"] == "reserved_signal"
    assert p.sql("SELECT COUNT(*) FROM codara_signals") == [(0,)]
    assert run_id not in resume(p), "the run still waits for a person"
    shown = _json(cli(p, "review", "show", review_id, "-u", "alice", "--json").stdout)
    assert shown["review"]["status"] == "pending"
    assert [h["action"] for h in shown["history"]] == ["create"]
    rejected = cli(p, "review", "reject", review_id, "--reason", "wrong_amount", "-u", "bob")
    assert rejected.exit_code == 0, rejected.output
    assert resume(p)[run_id]["outcome"] == "rejected"


def test_an_item_of_a_cancelled_run_is_closed_and_deciding_it_exits_12(
    any_project: Project, cli: CliFn
) -> None:
    p = any_project
    [(run_id, review_id)] = seed(p, [500.0])
    assert cli(p, "runs", "cancel", run_id).exit_code == 0
    late = cli(p, "review", "approve", review_id, "-u", "alice")
    assert late.exit_code == 12, late.output
    assert f"review {review_id} is closed" in late.stderr
    assert "cancelled" in late.stderr
    again = cli(p, "review", "reject", review_id, "--reason", "wrong_amount", "-u", "bob", "--json")
    assert again.exit_code == 12
    assert "closed" in _json(again.stdout)["error"]["message"]
    shown = _json(cli(p, "review", "show", review_id, "-u", "alice", "--json").stdout)
    assert shown["review"]["status"] == "closed"
    assert [h["action"] for h in shown["history"]] == ["create", "close"]
    assert _json(cli(p, "review", "list", "-u", "alice", "--json").stdout) == {"reviews": []}
    closed = _json(cli(p, "review", "list", "--status", "closed", "-u", "alice", "--json").stdout)
    assert [i["id"] for i in closed["reviews"]] == [review_id]


# -- personal data -----------------------------------------------------------------------------
def test_reveal_prints_the_original_to_an_allowed_role_only(
    project: Project, cli: CliFn, monkeypatch: Any
) -> None:
    """[privacy] reveal lets support see card numbers: alice gets the original on stdout,
    carl (billing) exit 14, a value instead of a token exit 4 without being echoed."""
    import secrets

    from codara.privacy import TOKEN

    monkeypatch.setenv("CODARA_MASK_KEY", secrets.token_urlsafe(32))
    monkeypatch.setenv("CODARA_VAULT_KEY", secrets.token_urlsafe(32))
    (project.path / "codara.toml").write_text('[privacy]\nreveal = { support = ["card"] }\n')
    card = "4111 1111 1111 1111"

    async def go() -> str:
        async with _app(project.url) as app:
            await Users(app.store, app.clock).add("alice", ["support"])
            await Users(app.store, app.clock).add("carl", ["billing"])
            await app.start_run("refunds", {"amount": 500.0, "note": f"my card {card}"})
            await app.work(until_idle=True)
            [item] = await Reviews(app.store, app.clock).queue(ADMIN)
            return item.id

    review_id = asyncio.run(go())
    [(stored,)] = project.sql("SELECT input FROM codara_runs")
    assert card not in str(stored)
    [token] = {t for t in TOKEN.findall(str(stored)) if t.startswith("<card:")}

    revealed = cli(project, "review", "reveal", review_id, token, "-p", "fraud check",
                   "--user", "alice", "--json")  # fmt: skip
    assert revealed.exit_code == 0, revealed.output
    assert _json(revealed.stdout) == {"token": token, "kind": "card", "value": card}
    plain = cli(project, "review", "reveal", review_id, token, "-p", "again", "-u", "alice")
    assert plain.stdout.strip() == card
    assert "recorded in the item's history" in plain.stderr

    by_carl = cli(project, "review", "reveal", review_id, token, "-p", "x", "-u", "carl")
    assert by_carl.exit_code == 14, by_carl.output
    raw = cli(project, "review", "reveal", review_id, card, "-p", "x", "-u", "alice")
    assert raw.exit_code == 4, raw.output
    assert "4111" not in raw.output
    no_purpose = cli(project, "review", "reveal", review_id, token, "-u", "alice")
    assert no_purpose.exit_code == 2, no_purpose.output
    actors = project.sql("SELECT actor, purpose FROM codara_unmask_events ORDER BY id")
    assert actors == [("alice", f"review {review_id}: fraud check"),
                      ("alice", f"review {review_id}: again")]  # fmt: skip
    history = _json(cli(project, "review", "show", review_id, "-u", "alice", "--json").stdout)
    assert [h["action"] for h in history["history"]] == ["create", "reveal", "reveal"]
    assert card not in json.dumps(history)
