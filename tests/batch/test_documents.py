"""A job's documents (rag.batch.documents): a store's sources, and the empty store's message."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.batch import summarize_batch
from rag.store import EmptyStore
from tests.batch.fakes import TOPICS, fake_local


def test_summarizes_each_source_of_a_store(corpus, tmp_path, batch_settings, fake_embeddings):
    from rag.indexing import ingest

    ingest([corpus], batch_settings, fake_embeddings)
    local = fake_local()

    report = summarize_batch([], tmp_path / "out", batch_settings, from_store=True, local_llm=local)

    assert report.status == "done" and sorted(Path(r["source"]).name for r in report.records) == sorted(TOPICS)
    assert all(c["chunk"] is not None for r in report.records for c in r["citations"])
    only = summarize_batch([corpus / "bakery.md"], tmp_path / "out", batch_settings, from_store=True, local_llm=fake_local())
    assert [Path(r["source"]).name for r in only.records] == ["bakery.md"] and only.reused == 1


def test_an_empty_store_says_what_to_do(tmp_path, batch_settings):
    with pytest.raises(EmptyStore, match="rag ingest"):
        summarize_batch([], tmp_path / "out", batch_settings, from_store=True, local_llm=fake_local())
