"""Settings come from codara.toml and CODARA_* variables, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from codara.config import load_settings
from codara.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.store.url == "sqlite:///codara.db"
    assert settings.store.durability == "fsync"
    assert settings.source_file is None


def test_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "codara.toml"
    cfg.write_text(
        '[store]\nurl = "sqlite:///a.db"\ndurability = "os"\n[worker]\nconcurrency = 4\n'
    )
    settings = load_settings(cfg, environ={"CODARA_DATABASE_URL": "sqlite:///b.db"})
    assert settings.store.url == "sqlite:///b.db"
    assert settings.store.durability == "os"
    assert settings.worker.concurrency == 4


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "codara.toml"
    cfg.write_text('[store]\nurl = "sqlite:///a.db"\ndurability = os\n')
    with pytest.raises(ConfigError, match=r"line 3") as info:
        load_settings(cfg, environ={})
    assert str(cfg) in info.value.message


def test_unknown_key_and_bad_value_are_named(tmp_path: Path) -> None:
    cfg = tmp_path / "codara.toml"
    cfg.write_text('[store]\nurll = "x"\ndurability = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert "store.urll" in info.value.message
    assert "store.durability" in info.value.message
    assert info.value.hint


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(environ={"CODARA_CONFIG": str(tmp_path / "missing.toml")})


def test_bad_environment_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"worker\.concurrency"):
        load_settings(environ={"CODARA_WORKER_CONCURRENCY": "lots"})
