"""The README documents every setting, exactly as engine/settings.py defines it."""

from __future__ import annotations

from engine.settings import settings_markdown
from tests.conftest import REPO


def test_readme_settings_table_current():
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    assert settings_markdown() in readme, "run `make docs` to refresh the README"
