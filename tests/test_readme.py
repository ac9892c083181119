"""The README's generated sections (CLI reference, architecture table) match the code."""

from __future__ import annotations

import pytest

from scripts.readme_sections import PACKAGE, README, SECTIONS, module_summaries, updated_readme


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_readme_section_is_current(section):
    readme = README.read_text(encoding="utf-8")
    assert readme == updated_readme(readme, (section,)), "README is stale: run `python scripts/readme_sections.py`"


def test_every_module_says_what_it_owns_and_stays_small():
    for _stage, module, summary in module_summaries():
        assert summary, f"{module} has no docstring saying what it owns"
    oversized = {
        path.relative_to(PACKAGE.parent).as_posix(): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert not oversized, f"modules over 500 lines (split them by responsibility): {oversized}"
