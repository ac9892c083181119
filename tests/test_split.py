"""Chunking: sizes, structure-aware cuts, start indexes and hashes."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from rag.split import BadSplitterSettings, content_hash, split_documents

MARKDOWN = "# Guide\n\nIntro paragraph. " + "Filler sentence here. " * 12 + "\n\n## Install\n\nRun the installer. " + "More words. " * 10 + "\n\n## Use\n\n" + "Open the app. " * 15


def test_defaults_are_the_guides_and_chunks_fit():
    doc = Document(page_content="word " * 1000, metadata={"source": "s", "kind": "text"})
    chunks = split_documents([doc])
    assert all(len(chunk.page_content) <= 500 for chunk in chunks)
    assert [len(chunk.page_content) for chunk in chunks] == [499] * 10  # 100 words, the last space dropped


def test_start_index_and_hash_locate_each_chunk():
    doc = Document(page_content=MARKDOWN, metadata={"source": "s", "kind": "markdown", "title": "Guide"})
    for chunk in split_documents([doc], chunk_size=200):
        start = chunk.metadata["start_index"]
        assert MARKDOWN[start : start + len(chunk.page_content)] == chunk.page_content
        assert chunk.metadata["chunk_hash"] == content_hash(chunk.page_content)
        assert chunk.metadata["title"] == "Guide" and chunk.metadata["source"] == "s"


@pytest.mark.parametrize("kind", ["markdown", "html"])
def test_markdown_like_text_is_cut_at_headings(kind):
    doc = Document(page_content=MARKDOWN, metadata={"source": "s", "kind": kind})
    starts = [chunk.page_content.split("\n")[0] for chunk in split_documents([doc], chunk_size=300)]
    assert "## Install" in starts and "## Use" in starts


def test_plain_text_is_cut_at_paragraphs():
    text = "First paragraph. " * 10 + "\n\n" + "Second paragraph. " * 10
    chunks = split_documents([Document(page_content=text, metadata={"kind": "text"})], chunk_size=300)
    assert [chunk.page_content[:16] for chunk in chunks] == ["First paragraph.", "Second paragraph"]


def test_overlap_is_configurable():
    doc = Document(page_content=" ".join(f"w{n}" for n in range(300)), metadata={"kind": "text"})
    plain = split_documents([doc], chunk_size=100, chunk_overlap=0)
    overlapping = split_documents([doc], chunk_size=100, chunk_overlap=30)
    assert len(overlapping) > len(plain)
    assert overlapping[1].page_content.split()[0] in overlapping[0].page_content


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(BadSplitterSettings, match="chunk_overlap \\(500\\) must be smaller than chunk_size \\(500\\)"):
        split_documents([Document(page_content="x")], chunk_size=500, chunk_overlap=500)


def test_blank_documents_give_no_chunks():
    assert split_documents([Document(page_content="  \n\n \t ", metadata={"kind": "text"})]) == []
