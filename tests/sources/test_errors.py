"""rag.sources.errors: failures shown on one line, whatever the file names hold."""

from __future__ import annotations

from rag.sources import LoadFailure, display_form, expand_inputs


def test_names_with_newlines_and_control_characters_are_shown_on_one_line(tmp_path):
    path = tmp_path / "two\nlines\x1b[31m.md"
    path.write_text("# Odd name\n", encoding="utf-8")
    (source,) = expand_inputs([tmp_path]).sources
    assert source == str(path.resolve())  # the source itself is the real name
    assert display_form(source) == str(tmp_path.resolve()) + "/two\\nlines\\x1b[31m.md"
    failure = LoadFailure(source, "cannot read file:\nreason")
    assert "\n" not in failure.display and "\x1b" not in failure.display
    assert failure.display.endswith("two\\nlines\\x1b[31m.md: cannot read file:\\nreason")
    assert display_form("plain/name — é.md") == "plain/name — é.md"
    assert display_form("bad\udcffbyte\u2028end") == "bad\\udcffbyte\\u2028end"
