"""Summarizing one document (rag.batch.tasks): length limits, map-reduce within the context, errors never become summaries."""

from __future__ import annotations

import pytest

from rag.batch import limit_words, summarize_batch
from tests.batch.fakes import count_tokens, fake_local, read_jsonl


def test_max_words_asks_for_the_length_and_cuts_longer_summaries(corpus, tmp_path, batch_settings):
    local = fake_local()
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=local, max_words=6)

    assert all("Write at most 6 words." in prompt for prompt in local.llm.calls)
    assert all(len(record["summary"].split()) <= 7 for record in report.records)
    assert any(record["truncated"] for record in report.records)


def test_limit_words_prefers_a_sentence_end():
    assert limit_words("One two three. Four five six seven.", 5) == ("One two three.", True)
    assert limit_words("One two three four five six seven", 4) == ("One two three four…", True)
    assert limit_words("Short.", 5) == ("Short.", False)
    assert limit_words("Any length at all.", None) == ("Any length at all.", False)


def test_a_document_longer_than_the_context_is_map_reduced_within_it(tmp_path, batch_settings):
    folder = tmp_path / "long"
    folder.mkdir()
    paragraphs = [f"Section {n} covers the harbour crane number {n} and its load limit of {n * 7} tonnes in detail." for n in range(60)]
    (folder / "manual.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (folder / "note.txt").write_text("A short note about the crane manual and its author, Ada Brandt.", encoding="utf-8")
    local = fake_local(n_ctx=600, max_tokens=64)

    report = summarize_batch([folder], tmp_path / "out", batch_settings, local_llm=local)

    assert report.status == "done"
    manual = next(record for record in report.records if record["source"].endswith("manual.txt"))
    assert manual["method"] == "map_reduce" and manual["tokens"]["calls"] > 2
    assert max(count_tokens(prompt) for prompt in local.llm.calls) <= 600 - 64
    chunks = {citation["chunk"] for citation in manual["citations"]}
    assert chunks and all(0 <= chunk < manual["chunks"] for chunk in chunks) and max(chunks) > 0
    note = next(record for record in report.records if record["source"].endswith("note.txt"))
    assert note["method"] == "stuff"


@pytest.mark.parametrize("error_style", ["event", "data"])


def test_a_streamed_server_error_is_an_error_never_a_summary(corpus, tmp_path, batch_settings, fake_server, error_style):
    server = fake_server(error_style=error_style)
    (corpus / "poison.md").write_text("# Poison\n\nThis POISON document breaks the server slot.", encoding="utf-8")
    out = tmp_path / "out"

    report = summarize_batch([corpus], out, batch_settings, servers=[server.url])

    assert report.status == "partial"
    (failure,) = report.failures
    assert failure.source.endswith("poison.md") and "SERVER ERROR TEXT" in failure.reason
    for path in out.rglob("*.json*"):
        text = path.read_text()
        if path.name not in {"report.json"}:
            assert "SERVER ERROR TEXT" not in text, path
    assert not any(record["source"].endswith("poison.md") for record in read_jsonl(out / "summaries.jsonl"))
