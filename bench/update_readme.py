"""Rewrite the README's settings table from engine/settings.py (`make docs`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.settings import settings_markdown  # noqa: E402

START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    table = f"{START}\n{settings_markdown()}\n{END}"
    readme.write_text(pattern.sub(lambda _: table, text), encoding="utf-8")


if __name__ == "__main__":
    main()
