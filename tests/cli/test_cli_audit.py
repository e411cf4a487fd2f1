"""`codara audit verify` and `codara audit anchor`: the loud unkeyed warning, anchors that
catch a deleted run, signed anchors that catch a forged anchor file."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # fixtures' types only: conftest is not imported as a module
    from conftest import CliFn, Project

KEY = "cli-test-audit-key-0123456789"


def _run_greet(p: Project, cli: CliFn, name: str) -> str:
    result = cli(p, "run", "greet", "--input", json.dumps({"name": name}))
    assert result.exit_code == 0, result.output
    rows = p.sql("SELECT id FROM codara_runs ORDER BY created_at DESC, id DESC")
    return str(rows[0][0])


def test_unkeyed_verify_warns_and_an_anchor_catches_a_deleted_run(
    any_project: Project, cli: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CODARA_AUDIT_KEY", raising=False)
    p = any_project
    first = _run_greet(p, cli, "ada")
    _run_greet(p, cli, "bo")
    ok = cli(p, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "WARNING: CODARA_AUDIT_KEY is not set: the chain is unkeyed" in ok.stdout
    assert "checked 2 run(s), 6 journal row(s), 0 review(s) with 0 event(s), 2 chain head(s)" in (
        ok.stdout
    )
    written = cli(p, "audit", "anchor", "--out", "anchor.json")
    assert written.exit_code == 0, written.output
    anchor = json.loads((p.path / "anchor.json").read_text())
    assert (anchor["seq"], anchor["signature"]) == (2, None)
    assert cli(p, "audit", "verify", "--anchor", "anchor.json").exit_code == 0

    # Delete the first run, its heads entry, and re-chain the later entry without a key:
    # the database alone is consistent again; the anchor is not fooled.
    p.sql("DELETE FROM codara_journal WHERE run_id = ?", (first,))
    p.sql("DELETE FROM codara_runs WHERE id = ?", (first,))
    alone = cli(p, "audit", "verify")
    assert alone.exit_code == 20
    assert f"run {first}: the run was deleted" in alone.stdout
    p.sql("DELETE FROM codara_chain_heads WHERE seq = 1")
    p.sql("UPDATE codara_chain_heads SET seq = 1")
    from codara.store._audit import HEADS_GENESIS, UNKEYED, head_text

    kind, subject, length, head, state, at = p.sql(
        "SELECT kind, subject, length, head, state, at FROM codara_chain_heads"
    )[0]
    text = head_text(
        1, str(kind), str(subject), int(str(length)), str(head), str(state), float(str(at)),
        HEADS_GENESIS,
    )  # fmt: skip
    p.sql(
        "UPDATE codara_chain_heads SET prev_hash = ?, hash = ?",
        (HEADS_GENESIS, UNKEYED.seal(text)),
    )
    assert cli(p, "audit", "verify").exit_code == 0  # undetectable without a key or anchor
    caught = cli(p, "audit", "verify", "--anchor", "anchor.json", "--json")
    assert caught.exit_code == 20
    report = json.loads(caught.stdout)
    assert report["anchor_checked"] is True
    assert report["keyed"] is False
    assert "warning" in report
    assert [x["problem"] for x in report["problems"]] == [
        "heads #2, named by the anchor, is missing: the chain heads were truncated or rewritten"
    ]


def test_keyed_anchor_is_signed_and_a_forged_one_is_refused(
    project: Project, cli: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODARA_AUDIT_KEY", KEY)
    p = project
    run_id = _run_greet(p, cli, "ada")
    rows = p.sql("SELECT hash FROM codara_journal WHERE run_id = ?", (run_id,))
    assert all(str(h).startswith("k1:") and len(str(h)) == 64 for (h,) in rows)
    ok = cli(p, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "WARNING" not in ok.stdout
    printed = cli(p, "audit", "anchor")
    assert printed.exit_code == 0, printed.output
    anchor = json.loads(printed.stdout)
    assert anchor["signature"].startswith("k1:")
    (p.path / "anchor.json").write_text(printed.stdout)
    assert cli(p, "audit", "verify", "--anchor", "anchor.json").exit_code == 0

    anchor["seq"] = 0  # point the anchor before everything: the signature no longer holds
    (p.path / "forged.json").write_text(json.dumps(anchor))
    forged = cli(p, "audit", "verify", "--anchor", "forged.json")
    assert forged.exit_code == 4, forged.output
    assert "does not verify" in forged.stderr

    monkeypatch.delenv("CODARA_AUDIT_KEY")
    keyless = cli(p, "audit", "verify", "--anchor", "anchor.json")
    assert keyless.exit_code == 3, keyless.output
    assert "is signed, but CODARA_AUDIT_KEY is not set" in keyless.stderr
    unkeyed = cli(p, "audit", "verify")
    assert unkeyed.exit_code == 20
    assert "but CODARA_AUDIT_KEY is not set: cannot check it" in unkeyed.stdout


def test_a_short_key_is_a_clear_error(
    project: Project, cli: CliFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(project, "db", "upgrade").exit_code == 0
    monkeypatch.setenv("CODARA_AUDIT_KEY", "short")
    result = cli(project, "audit", "verify")
    assert result.exit_code == 3, result.output
    assert "CODARA_AUDIT_KEY is too short" in result.stderr
    assert "short" not in result.stderr.replace("too short", "")  # the secret is never shown
