"""Atomic file replacement (rag.atomic): a failed write keeps the old file and leaves no temporary behind."""

from __future__ import annotations

import os

import pytest

from rag.atomic import write_atomic


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "summaries.jsonl"
    write_atomic(target, "old\n")

    def broken_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and not list(tmp_path.rglob("*.tmp"))
