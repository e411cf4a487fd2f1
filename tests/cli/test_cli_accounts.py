"""``codara users disable|enable|list`` and ``codara tokens list|revoke ID``: a disabled user's
tokens are revoked, and a token is revoked by the id `tokens list` shows (never its secret)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import CliFn, Project  # tests/cli/conftest.py


def test_tokens_list_revoke_by_id_and_users_disable_enable(cli: CliFn, project: Project) -> None:
    assert cli(project, "db", "upgrade").exit_code == 0
    assert cli(project, "users", "add", "ann", "--role", "support").exit_code == 0
    first = cli(project, "tokens", "create", "ann", "--name", "ci", "--json")
    second = cli(project, "tokens", "create", "ann", "--name", "laptop", "--json")
    secrets = [json.loads(r.stdout)["token"] for r in (first, second)]
    listed = cli(project, "tokens", "list", "--json")
    assert listed.exit_code == 0, listed.output
    tokens = json.loads(listed.stdout)["tokens"]
    assert sorted(t["name"] for t in tokens) == ["ci", "laptop"]
    assert not any(s in listed.stdout for s in secrets), "a listing never shows secrets"
    ci = next(t for t in tokens if t["name"] == "ci")
    r = cli(project, "tokens", "revoke", ci["id"])
    assert r.exit_code == 0, r.output
    state = dict(project.sql("SELECT name, revoked FROM codara_tokens"))
    assert state == {"ci": 1, "laptop": 0}
    assert cli(project, "tokens", "revoke", "0" * 16).exit_code != 0  # no such token

    assert cli(project, "users", "disable", "ann").exit_code == 0
    assert dict(project.sql("SELECT name, revoked FROM codara_tokens")) == {"ci": 1, "laptop": 1}
    users = json.loads(cli(project, "users", "list", "--json").stdout)["users"]
    assert [(u["username"], u["disabled"]) for u in users] == [("ann", True)]
    assert cli(project, "users", "enable", "ann").exit_code == 0
    users = json.loads(cli(project, "users", "list", "--json").stdout)["users"]
    assert [(u["username"], u["disabled"]) for u in users] == [("ann", False)]
    # enabling does not bring the revoked tokens back
    assert dict(project.sql("SELECT name, revoked FROM codara_tokens")) == {"ci": 1, "laptop": 1}
    assert cli(project, "users", "disable", "nobody").exit_code != 0


def test_users_unlock_ends_a_lockout(cli: CliFn, project: Project) -> None:
    assert cli(project, "db", "upgrade").exit_code == 0
    assert cli(project, "users", "add", "ann", "--role", "support").exit_code == 0
    project.sql(
        "INSERT INTO codara_login_throttle (key, failures, last_failure, locked_until) "
        "VALUES ('user:ann', 7, 1, 4102444800)"
    )
    r = cli(project, "users", "unlock", "ann", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"username": "ann", "was_throttled": True}
    assert project.sql("SELECT COUNT(*) FROM codara_login_throttle") == [(0,)]
    assert project.sql("SELECT outcome FROM codara_login_events") == [("unlocked",)]
    again = cli(project, "users", "unlock", "ann", "--json")
    assert json.loads(again.stdout)["was_throttled"] is False
    assert cli(project, "users", "unlock", "bad name!").exit_code != 0
