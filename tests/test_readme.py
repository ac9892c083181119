"""The README's CLI reference is the real --help output."""

from __future__ import annotations

from scripts.cli_reference import END, README, START, updated_readme


def test_readme_cli_reference_is_current():
    readme = README.read_text(encoding="utf-8")
    assert START in readme and END in readme
    assert readme == updated_readme(readme), "README is stale: run `python scripts/cli_reference.py`"
