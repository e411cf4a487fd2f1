"""docs/reference/config.md is generated from the settings models and kept in step with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codara.cli._loader import APP_ENV
from codara.config import REFERENCE_PATH, Settings, load_settings, reference_markdown
from codara.review._notify import NotificationSettings

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python tools/gen_config_reference.py"


def test_the_committed_reference_is_the_generated_one() -> None:
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        f"{REFERENCE_PATH} is out of date with src/codara/config.py: run `{REGENERATE}` from "
        "the repository's root and commit the result"
    )


def test_every_key_and_variable_is_in_the_reference() -> None:
    from codara import config

    text = reference_markdown()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if section == "source_file" or model is None:
            continue
        assert f"## `[{section}]`" in text
        assert isinstance(model, type)
        docs = config.field_docs(model)
        for key in model.model_fields:
            assert f"| `{key}` |" in text
            assert docs.get(key), f"[{section}] {key} has no docstring in config.py"
            assert config._md(docs[key])[:60] in text, f"[{section}] {key}: its docstring"

    for var in (*config._ENV_OVERRIDES, "CODARA_CONFIG", APP_ENV):
        assert f"| `{var}` |" in text
    notifications = next(line for line in text.splitlines() if "`[notifications]`" in line)
    for key in NotificationSettings.model_fields:
        assert f"`{key}`" in notifications


def test_each_documented_variable_sets_the_documented_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codara import config

    monkeypatch.chdir(tmp_path)  # no codara.toml here
    for var, (section, key) in config._ENV_OVERRIDES.items():
        samples = {"url": "sqlite:///x.db", "durability": "os", "trusted_proxies": "10.0.0.0/8"}
        value = samples.get(key, "7")
        settings = load_settings(environ={var: value})
        got = getattr(getattr(settings, section), key)
        assert str(got) in (value, f"{value}.0"), var
        unset = load_settings(environ={var: ""})
        default = getattr(getattr(Settings(), section), key)
        assert getattr(getattr(unset, section), key) == default, var


def test_the_generators_check_mode_finds_the_committed_file_up_to_date() -> None:
    script = ROOT / "tools" / "gen_config_reference.py"
    check = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout
