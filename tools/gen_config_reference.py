"""Write docs/reference/config.md from the settings models in src/codara/config.py.

Run from the repository's root: ``python tools/gen_config_reference.py`` (``--check`` exits 1
when the committed file differs, without writing). tests/test_docs_config.py fails until the
committed file is what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from codara.config import REFERENCE_PATH, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    target = ROOT / REFERENCE_PATH
    text = reference_markdown()
    if "--check" in argv:
        same = target.exists() and target.read_text(encoding="utf-8") == text
        print(f"{REFERENCE_PATH} is {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
