"""A file source's plan names exactly the files it will read, all inside its scope.

Refusals happen in plan, before any byte of a file is read, and say why; the same request
outside the scope is refused whether or not the file exists (a refusal tells nothing about
what is outside).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from codara.errors import InputError, ScopeError, SourceError
from codara.sources import Plan
from codara.sources._files import FileSource, FileSourceConfig


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with an inbox in scope and a secrets folder beside it, and a file outside root."""
    root = tmp_path / "root"
    for rel in ["inbox/a.csv", "inbox/b.csv", "inbox/2026/c.csv", "inbox/notes.txt",
                "exports/x/y/z.parquet", "secrets/keys.csv"]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("id\n1\n")
    (tmp_path / "outside.csv").write_text("id\n1\n")
    return root


def source(root: Path, *paths: str) -> FileSource:
    return FileSource("inbox", FileSourceConfig(root=root, paths=paths))


def test_a_glob_plans_the_matching_files_sorted_and_relative(tree: Path) -> None:
    files = source(tree, "inbox/*.csv", "exports/**/*.parquet")
    plan = files.plan("inbox/*.csv")
    assert plan == Plan(
        source="inbox", target="inbox/*.csv", touched=("inbox/a.csv", "inbox/b.csv")
    )
    # * stays within a directory, ** crosses any number of them
    assert files.plan("exports/**/*.parquet").touched == ("exports/x/y/z.parquet",)
    assert files.plan("./inbox//b.csv").touched == ("inbox/b.csv",)
    assert files.plan("inbox/[a]*").touched == ("inbox/a.csv",)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/passwd", "is absolute"),
        ("inbox/../secrets/keys.csv", "climbs out with '..'"),
        ("../outside.csv", "climbs out with '..'"),
        ("", "is empty"),
        ("inbox\\a.csv", "backslash"),
        ("secrets/keys.csv", "outside the scope"),  # exists
        ("secrets/none.csv", "outside the scope"),  # does not: same answer
        ("secrets/*.csv", "outside the scope"),
        ("nothing/*.csv", "outside the scope"),
        ("inbox/*", "outside the scope"),  # also matches notes.txt: the whole request is refused
        ("**/*.csv", "outside the scope"),  # reaches secrets/keys.csv
        ("inbox/notes.txt", "outside the scope"),
    ],
)
def test_requests_outside_the_scope_are_refused_with_the_rule_path(
    tree: Path, target: str, why: str
) -> None:
    with pytest.raises(ScopeError, match=why) as info:
        source(tree, "inbox/*.csv", "inbox/**/*.csv").plan(target)
    assert info.value.rule == "path"
    assert info.value.hint is not None
    assert "inbox/*.csv" in info.value.hint
    assert str(tree) not in str(info.value)  # the server's own paths are not told


def test_links_are_followed_to_their_real_files_and_refused_when_they_leave_scope(
    tree: Path, tmp_path: Path
) -> None:
    inbox = tree / "inbox"
    (inbox / "escape.csv").symlink_to(tmp_path / "outside.csv")
    (inbox / "secret.csv").symlink_to(tree / "secrets" / "keys.csv")  # in root, not in scope
    (inbox / "alias.csv").symlink_to(inbox / "a.csv")  # in scope both ends: fine
    (inbox / "out").symlink_to(tmp_path)  # a directory link out of the root
    files = source(tree, "inbox/*.csv", "inbox/*/*.csv")
    with pytest.raises(ScopeError, match="leads out of the root") as info:
        files.plan("inbox/escape.csv")
    assert info.value.rule == "path"
    with pytest.raises(ScopeError, match="link to a file outside the scope"):
        files.plan("inbox/secret.csv")
    with pytest.raises(ScopeError, match="leads out of the root"):
        files.plan("inbox/out/outside.csv")
    with pytest.raises(ScopeError, match="is a link"):
        files.plan("inbox/*.csv")  # a glob that meets a bad link is refused whole
    assert files.plan("inbox/alias.csv").touched == ("inbox/alias.csv",)


async def test_a_link_swapped_after_the_plan_is_refused_when_the_read_starts(tree: Path) -> None:
    files = source(tree, "inbox/*.csv")
    link = tree / "inbox" / "late.csv"
    link.symlink_to(tree / "inbox" / "a.csv")
    plan = files.plan("inbox/late.csv")
    link.unlink()
    link.symlink_to(tree / "secrets" / "keys.csv")

    with pytest.raises(ScopeError, match="outside the scope"):
        await anext(files.batches(plan))
    forged = Plan(source="inbox", target="x", touched=("secrets/keys.csv",))  # not from plan()
    with pytest.raises(ScopeError, match="outside the scope"):
        await anext(files.batches(forged))


def test_a_glob_in_scope_that_matches_nothing_plans_nothing_but_a_missing_path_fails(
    tree: Path,
) -> None:
    files = source(tree, "inbox/*.csv", "spool/*.jsonl")
    assert files.plan("inbox/2027-*.csv").touched == ()  # an inbox with nothing new
    assert files.plan("spool/*.jsonl").touched == ()  # even when the folder is not there
    with pytest.raises(SourceError, match=r"has no file 'inbox/zzz.csv'"):
        files.plan("inbox/zzz.csv")


def test_malformed_requests_are_input_errors(tree: Path) -> None:
    (tree / "inbox" / "dir.csv").mkdir()
    files = source(tree, "inbox/*", "inbox/*.csv")
    with pytest.raises(InputError, match="takes no parameters"):
        files.plan("inbox/a.csv", limit=3)
    with pytest.raises(InputError, match="is not a file"):
        files.plan("inbox/dir.csv")
    with pytest.raises(InputError, match=r"cannot tell the format of 'inbox/notes.txt'"):
        files.plan("inbox/notes.txt")
    assert files.plan("inbox/*.csv").touched == ("inbox/a.csv", "inbox/b.csv")  # no dir.csv
