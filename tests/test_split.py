"""Chunking: sizes, structure-aware cuts, start indexes and hashes."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from rag.split import SECTION_SEPARATOR, BadSplitterSettings, chunk_heading, content_hash, embedding_text, first_tokens, split_documents

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
        assert chunk.metadata["chunk_hash"] == content_hash(embedding_text(chunk.page_content, chunk.metadata))
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


# --- sections ---------------------------------------------------------------------------------------

SPHINX_LIKE = (
    "# 12. Virtual Environments and Packages\u00b6\n\n"
    "## 12.1. Introduction\u00b6\n\n" + "Python applications often need packages. " * 12 + "\n\n"
    "## 12.2. Creating Virtual Environments\u00b6\n\n"
    "The module used to create and manage virtual environments is called venv. " * 3 + "\n\n"
    "To create one, run python -m venv tutorial-env in a terminal.\n\n"
    "### 12.2.1. Activating\u00b6\n\n" + "On Windows run the activate script. " * 14 + "\n"
)


def sphinx_chunks(chunk_size=300):
    doc = Document(page_content=SPHINX_LIKE, metadata={"source": "s", "kind": "html", "title": "Tutorial"})
    return split_documents([doc], chunk_size=chunk_size)


def test_chunks_carry_their_heading_path_and_no_header_link_marks():
    chunks = sphinx_chunks()
    sections = [chunk.metadata["section"] for chunk in chunks]
    assert "12. Virtual Environments and Packages > 12.2. Creating Virtual Environments" in sections
    assert "12. Virtual Environments and Packages > 12.2. Creating Virtual Environments > 12.2.1. Activating" in sections
    assert not any("\u00b6" in chunk.page_content or "\u00b6" in chunk.metadata["section"] for chunk in chunks)


def test_no_heading_only_or_tiny_chunks():
    chunks = sphinx_chunks()
    assert all(len(chunk.page_content) >= 300 // 4 for chunk in chunks)
    assert not any(chunk.page_content.strip().startswith("#") and "\n" not in chunk.page_content.strip() for chunk in chunks)
    venv = next(chunk for chunk in chunks if "-m venv" in chunk.page_content)  # the short last paragraph joined its section
    assert venv.metadata["section"].endswith("12.2. Creating Virtual Environments")


def test_embedded_text_has_title_and_section_in_front_the_chunk_does_not():
    chunk = next(chunk for chunk in sphinx_chunks() if "-m venv" in chunk.page_content)
    embedded = embedding_text(chunk.page_content, chunk.metadata)
    assert embedded.startswith("Tutorial > 12. Virtual Environments and Packages > 12.2. Creating Virtual Environments\n\n")
    assert embedded.endswith(chunk.page_content) and not chunk.page_content.startswith("Tutorial")
    assert embedding_text("plain", {"title": "T"}) == "plain"  # chunks of the splitter before sections: as they were


@pytest.mark.parametrize(
    ("title", "first_heading", "heading"),
    [
        ("git-rm(1)", "git-rm(1) Manual Page", "git-rm(1) > OPTIONS"),  # the first heading starts with the title
        ("Git - git-rm Documentation", "git-rm(1) Manual Page", "Git - git-rm Documentation > OPTIONS"),  # a site's title, in other words
        ("Python 3.12 documentation", "Python 3.12 release notes", "Python 3.12 documentation > Python 3.12 release notes > OPTIONS"),
        ("Git Book", "Git Basics", "Git Book > Git Basics > OPTIONS"),
    ],
)
def test_a_first_heading_naming_the_page_the_title_names_is_left_out_of_the_heading(title, first_heading, heading):
    metadata = {"title": title, "section": f"{first_heading}{SECTION_SEPARATOR}OPTIONS"}
    assert chunk_heading(metadata) == heading


def test_first_tokens_cuts_what_the_embedder_sees_at_whole_words():
    assert first_tokens("Title > Section\n\none  two\tthree four", 5) == "Title > Section one two"
    assert first_tokens("git rm --cached file", 4) == "git rm"  # --cached is 3 tokens: it would end at 5
    assert first_tokens("git-rm(1) > OPTIONS", 3) == "git-rm(1)"  # a first word is kept whole, however long
    assert first_tokens("one two\nthree", 5) == "one two\nthree"  # short enough: unchanged
    assert first_tokens("one, two.", 4) == "one, two."  # exactly the limit: unchanged
    assert first_tokens("one two three", 0) == "one two three"  # 0: all of it


def test_restructuredtext_sections():
    text = "Guide\n=====\n\nIntro. " + "Words here. " * 30 + "\n\nInstall\n-------\n\n" + "Run the installer now. " * 20 + "\n"
    chunks = split_documents([Document(page_content=text, metadata={"kind": "rst", "title": "Guide"})], chunk_size=300)
    assert [chunk.metadata["section"] for chunk in chunks][-1] == "Guide > Install"


def test_shell_comments_in_an_unfenced_example_are_not_headings():
    text = "## Examples\n\nLike this:\n\n# ... hack hack hack ...\n$ git stash\n\nAnd more text. " + "More. " * 10 + "\n"
    chunks = split_documents([Document(page_content=text, metadata={"kind": "html"})], chunk_size=500)
    assert [chunk.metadata["section"] for chunk in chunks] == ["Examples"]


def test_fewer_chunks_than_the_splitter_before_sections():
    doc = Document(page_content=SPHINX_LIKE * 3, metadata={"kind": "html", "title": "Tutorial"})
    assert len(split_documents([doc], chunk_size=300)) < len(split_documents([doc], chunk_size=300, sections=False))
