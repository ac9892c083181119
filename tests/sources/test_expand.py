"""rag.sources.expand: folders, globs, hidden files, symlink loops, URLs and source keys."""

from __future__ import annotations

import os
from pathlib import Path

from rag.sources.expand import expand_inputs, normalize_url, source_key


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _names(found, root: Path) -> list[str]:
    return [Path(source).relative_to(root.resolve()).as_posix() for source in found.sources]


def test_folders_are_walked_recursively_skipping_hidden_and_unsupported(tmp_path):
    _tree(tmp_path, {"a.md": "a", "sub/b.txt": "b", "sub/deeper/c.html": "c", ".hidden.md": "h", ".git/x.md": "x", "image.png": "p"})
    assert _names(expand_inputs([tmp_path]), tmp_path) == ["a.md", "sub/b.txt", "sub/deeper/c.html"]
    with_hidden = _names(expand_inputs([tmp_path], include_hidden=True), tmp_path)
    assert with_hidden == [".git/x.md", ".hidden.md", "a.md", "sub/b.txt", "sub/deeper/c.html"]


def test_include_and_exclude_globs(tmp_path):
    _tree(tmp_path, {"a.md": "a", "b.txt": "b", "docs/c.md": "c", "docs/drafts/d.md": "d", "node_modules/e.md": "e"})
    assert _names(expand_inputs([tmp_path], include=["*.md"]), tmp_path) == ["a.md", "docs/c.md", "docs/drafts/d.md", "node_modules/e.md"]
    assert _names(expand_inputs([tmp_path], include=["docs/*.md"]), tmp_path) == ["docs/c.md", "docs/drafts/d.md"]
    assert _names(expand_inputs([tmp_path], exclude=["drafts", "node_modules", "*.txt"]), tmp_path) == ["a.md", "docs/c.md"]
    assert _names(expand_inputs([tmp_path], exclude=["docs/drafts/*"]), tmp_path) == ["a.md", "b.txt", "docs/c.md", "node_modules/e.md"]


def test_symlink_loops_end_and_files_are_listed_once(tmp_path):
    _tree(tmp_path, {"real/a.md": "a", "real/sub/b.md": "b"})
    os.symlink(tmp_path / "real", tmp_path / "real" / "sub" / "loop")
    os.symlink(tmp_path / "real", tmp_path / "again")
    os.symlink(tmp_path / "real" / "a.md", tmp_path / "link-to-a.md")
    assert _names(expand_inputs([tmp_path]), tmp_path) == ["real/a.md", "real/sub/b.md"]


def test_a_self_looping_symlink_in_a_folder_is_reported(tmp_path):
    _tree(tmp_path, {"a.md": "a"})
    os.symlink("loop.md", tmp_path / "loop.md")
    os.symlink("loop", tmp_path / "loop")  # no extension: it could have been a folder
    os.symlink(".hidden-loop", tmp_path / ".hidden-loop")
    os.symlink("skipped.md", tmp_path / "skipped.md")
    found = expand_inputs([tmp_path], exclude=["skipped.md"])
    assert _names(found, tmp_path) == ["a.md"]
    assert sorted((Path(f.source).name, f.reason.split(":")[0]) for f in found.failures) == [("loop", "symlink loop"), ("loop.md", "symlink loop")]


def test_a_self_looping_symlink_named_directly_is_a_loop_not_missing(tmp_path):
    os.symlink("loop.md", tmp_path / "loop.md")
    found = expand_inputs([tmp_path / "loop.md"])
    assert found.sources == [] and found.missing == []
    assert [(Path(f.source).name, f.reason.split(":")[0]) for f in found.failures] == [("loop.md", "symlink loop")]


def test_a_malformed_url_is_a_failure_not_a_crash():
    found = expand_inputs(["http://[::1/notes"])
    assert found.sources == [] and [f.reason.split(":")[0] for f in found.failures] == ["not a valid URL"]


def test_missing_paths_and_empty_folders_are_failures(tmp_path):
    (tmp_path / "empty").mkdir()
    found = expand_inputs([tmp_path / "nope.md", tmp_path / "empty"])
    assert found.sources == []
    assert [(Path(f.source).name, f.reason.split(" (")[0]) for f in found.failures] == [
        ("nope.md", "no such file or folder"),
        ("empty", "no supported files found"),
    ]


def test_urls_are_normalized_as_source_ids():
    assert normalize_url("HTTPS://Example.ORG/a/b?x=1#section") == "https://example.org/a/b?x=1"
    assert expand_inputs(["https://example.org", "https://example.org/#top"]).sources == ["https://example.org/"]


def test_a_source_key_is_the_normalized_url_or_the_resolved_path(tmp_path, monkeypatch):
    assert source_key("HTTPS://Example.ORG#top") == "https://example.org/"
    (tmp_path / "real.md").write_text("r", encoding="utf-8")
    os.symlink(tmp_path / "real.md", tmp_path / "link.md")
    monkeypatch.chdir(tmp_path)
    assert source_key("link.md") == str((tmp_path / "real.md").resolve())
    assert source_key(Path("gone/deleted.md")) == str(tmp_path.resolve() / "gone" / "deleted.md")  # need not exist
    assert source_key(tmp_path / "link.md") == expand_inputs([tmp_path / "link.md"]).sources[0]
