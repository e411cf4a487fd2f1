"""``python -m codara``: the same as the ``codara`` command."""

from __future__ import annotations

from codara.cli import main

if __name__ == "__main__":
    main()
