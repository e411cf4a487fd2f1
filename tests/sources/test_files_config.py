"""A file source's configuration is checked when it loads, each problem said plainly."""

from __future__ import annotations

from pathlib import Path

import pytest

from codara.errors import ConfigError
from codara.sources._files import FileSourceConfig


def load(root: Path | str, **keys: object) -> FileSourceConfig:
    return FileSourceConfig.load("inbox", {"kind": "file", "root": str(root), **keys})


def test_a_valid_source_loads_with_its_root_resolved(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    config = load(tmp_path / "link", paths=["inbox/*.csv"], encoding="UTF8")
    assert config.root == (tmp_path / "data").resolve()
    assert config.encoding == "utf-8"  # normalised, so the reader names it one way
    assert config.format is None
    assert config.header
    assert config.delimiter == ","
    assert load(tmp_path, paths=["x"], encoding="utf-8-sig").encoding == "utf-8"


@pytest.mark.parametrize("make", ["missing", "file"])
def test_a_root_that_is_not_a_directory_stops_at_load_with_a_hint(
    tmp_path: Path, make: str
) -> None:
    root = tmp_path / "nowhere"
    if make == "file":
        root.write_text("x")
    with pytest.raises(ConfigError, match=r"\[sources.inbox\].*nowhere") as info:
        load(root, paths=["*.csv"])
    assert info.value.hint is not None
    assert "existing directory" in info.value.hint


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"paths": []}, "paths: Tuple should have at least 1 item"),
        ({"paths": ["/etc/*.csv"]}, "is absolute"),
        ({"paths": ["inbox/../../etc/passwd"]}, "climbs out with '..'"),
        ({"paths": ["inbox\\a.csv"]}, "backslash"),
        ({"paths": ["inbox/a**.csv"]}, r"\*\* must be a whole segment"),
        ({"paths": [""]}, "is empty"),
        ({"paths": ["a"], "format": "xml"}, "format: Input should be 'csv', 'jsonl' or 'parquet'"),
        ({"paths": ["a"], "encoding": "utf-16"}, "does not write a newline as the byte 0x0A"),
        ({"paths": ["a"], "encoding": "klingon"}, "unknown encoding 'klingon'"),
        ({"paths": ["a"], "delimiter": ";;"}, "delimiter must be one character"),
        ({"paths": ["a"], "delimiter": '"'}, "delimiter must be one character"),
        ({"paths": ["a"], "header": False}, "without a header needs columns"),
        ({"paths": ["a"], "columns": ["id", "id"]}, "columns repeat a name"),
        ({"paths": ["a"], "format": "jsonl", "columns": ["id"]}, "columns applies to CSV"),
        ({"paths": ["a"], "columns": ["id"], "timestamp_field": "at"}, "is not one of the columns"),
        ({"paths": ["a"], "batch_rows": 0}, "batch_rows: Input should be greater than or equal"),
        ({"paths": ["a"], "max_record_bytes": 10}, "max_record_bytes"),
        ({"paths": ["a"], "pathz": ["b"]}, "pathz: Extra inputs are not permitted"),
        ({"paths": ["a"], "kind": "sql"}, "kind: Input should be 'file'"),
    ],
)
def test_bad_keys_stop_at_load_naming_the_source_and_the_key(
    tmp_path: Path, keys: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(tmp_path, **keys)
    assert str(info.value).startswith("invalid [sources.inbox]: ")
    assert info.value.hint is not None
