"""`python -m examples.support_triage --crm-url URL` with a URL that cannot work: one clear
line and its exit code, no traceback, no password."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.support_triage.__main__ import main

CONFIG = Path(__file__).parents[2] / "examples" / "support_triage" / "codara.toml"


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("notaurl", 3, "the CRM URL is not a database URL"),
        ("oracle+nodriver://x/y", 3, "cannot be used: Can't load plugin"),
        ("postgresql://crm:s3cret-pw@127.0.0.1:1/test", 16, "Connection refused"),
        ("sqlite:////nonexistent-dir/sub/crm.db", 16, "unable to open database file"),
    ],
)
def test_a_crm_url_that_cannot_work_stops_the_demo_clearly(
    url: str, code: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the example's relative paths (demo-out/...) land here
    monkeypatch.setenv("COLUMNS", "400")  # one line per message
    assert main(["--config", str(CONFIG), "--tickets", "5", "--crm-url", url]) == code
    out = capsys.readouterr().out
    assert says in " ".join(out.split()), out
    assert "Traceback" not in out
    assert "s3cret-pw" not in out
