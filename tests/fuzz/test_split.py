"""Fuzzing the section-aware splitter (rag.split) and the HTML reader before it (rag.sources.html).

For generated Markdown, reStructuredText and HTML documents, and for arbitrary text: no
exception; every chunk is non-blank, is the (cleaned) document's own text at its
``start_index``, stays within 1.5 chunk sizes (the merge limit the splitter documents);
section paths are heading titles of the document; no chunk is a heading alone; nothing
written under a heading is lost; the same input always gives the same chunks.
"""

from __future__ import annotations

import html

from hypothesis import example, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document

from rag.sources import LoadError
from rag.sources.html import html_to_text
from rag.split import _MARKS, SECTION_SEPARATOR, content_hash, embedding_text, split_documents
from tests.fuzz.conftest import scaled

# Words never start a Markdown or reST construct: a line starting with "#" is a heading, "§" marks reST titles.
VOCABULARY = ("a", "I", "tide", "harbour", "Kestrel", "1887", "naïve", "café,", "Straße.", "Ærø", "日本語の", "テキスト", "한국어", "λόγος",
              "(note)", "it's", "end.", "why?", "yes!", "re.sub", "--force", "x" * 30, "emoji🚤", "a_b", "1.5", "e.g.")  # fmt: skip
word = st.sampled_from(VOCABULARY)
line = st.lists(word, min_size=1, max_size=10).map(" ".join)
paragraph = st.lists(line, min_size=1, max_size=4).map("\n".join)
sizes = st.integers(min_value=40, max_value=600).flatmap(lambda size: st.tuples(st.just(size), st.sampled_from([0, 0, size // 10])))


def _title(words: list[str]) -> str:
    return " ".join(" ".join(words).split())


markdown_block = st.one_of(
    st.tuples(st.just("heading"), st.integers(1, 6), st.lists(word, min_size=1, max_size=8).map(_title)),
    st.tuples(st.just("paragraph"), st.just(0), paragraph),
    st.tuples(st.just("code"), st.just(0), paragraph),
)


def _markdown(blocks: list[tuple[str, int, str]]) -> str:
    parts = []
    for kind, level, text in blocks:
        parts.append("#" * level + " " + text if kind == "heading" else f"```\n{text}\n```" if kind == "code" else text)
    return "\n\n".join(parts) + "\n"


def _rst(blocks: list[tuple[str, int, str]]) -> str:
    adornments = "=-~^\"'"
    parts = []
    for kind, level, text in blocks:
        if kind == "heading":
            title = "§ " + text
            rule = adornments[level - 1] * (len(title) + level % 2)
            parts.append(f"{rule}\n{title}\n{rule}" if level == 1 else f"{title}\n{rule}")
        else:
            parts.append(text)
    return "\n\n".join(parts) + "\n"


def _split(text: str, kind: str, chunk_size: int, overlap: int) -> list[Document]:
    return split_documents([Document(page_content=text, metadata={"source": "doc", "kind": kind, "title": "Doc"})], chunk_size, overlap)


def _is_heading_line(line: str, kind: str) -> bool:
    stripped = line.strip()
    if kind == "rst":
        return stripped.startswith("§") or (len(set(stripped)) == 1 and stripped[0] in "=-~^\"'")
    return stripped.startswith("#")


def check_chunks(text: str, kind: str, chunk_size: int, overlap: int, titles: set[str] | None = None) -> list[Document]:
    """The properties every split must have; returns the chunks."""
    chunks = _split(text, kind, chunk_size, overlap)
    cleaned = _MARKS.sub("", text)
    for chunk in chunks:
        content, metadata = chunk.page_content, chunk.metadata
        assert content.strip(), "no blank chunk"
        start = metadata["start_index"]
        assert 0 <= start and cleaned[start : start + len(content)] == content, "a chunk is the document's own text at its start_index"
        assert len(content) <= chunk_size * 3 // 2, f"chunk of {len(content)} characters for chunk_size {chunk_size}"
        assert isinstance(metadata["section"], str)
        path = [part for part in metadata["section"].split(SECTION_SEPARATOR)] if metadata["section"] else []
        assert all(isinstance(part, str) and part.strip() for part in path)
        if titles is not None:
            assert set(path) <= titles, f"section path {path} names only the document's headings"
            lines = [line for line in content.splitlines() if line.strip()]
            assert not all(_is_heading_line(line, kind) for line in lines), f"heading-only chunk {content!r}"
        assert metadata["chunk_hash"] == content_hash(embedding_text(content, metadata))
    again = _split(text, kind, chunk_size, overlap)
    assert [(c.page_content, c.metadata) for c in again] == [(c.page_content, c.metadata) for c in chunks], "deterministic"
    return chunks


def _body_words(blocks: list[tuple[str, int, str]]) -> set[str]:
    return {token for kind, _, text in blocks if kind != "heading" for token in text.split()}


@given(blocks=st.lists(markdown_block, min_size=1, max_size=12), size=sizes)
@example(blocks=[("heading", 2, "00000 00000000"), ("paragraph", 0, "0 0 0 0 0 0 0 0 0 0 0")], size=(40, 0))  # was a heading-only chunk
def test_markdown_sections_split_into_bounded_chunks_of_the_source(blocks, size):
    text = _markdown(blocks)
    titles = {title.replace(">", "-") for kind, _, title in blocks if kind == "heading"}
    chunks = check_chunks(text, "markdown", *size, titles=titles)
    found = {token for chunk in chunks for token in chunk.page_content.split()}
    assert _body_words(blocks) <= found, "nothing written under a heading is lost"


@given(blocks=st.lists(markdown_block, min_size=1, max_size=12), size=sizes)
@example(blocks=[("heading", 1, "0 0 0 000"), ("paragraph", 0, "0")], size=(40, 0))  # the title was cut from its underline, alone
def test_rst_sections_split_into_bounded_chunks_of_the_source(blocks, size):
    text = _rst([block for block in blocks if block[0] != "code"] or [("paragraph", 0, "text")])
    titles = {"§ " + title.replace(">", "-") for kind, _, title in blocks if kind == "heading"}
    chunks = check_chunks(text, "rst", *size, titles=titles)
    found = {token for chunk in chunks for token in chunk.page_content.split()}
    assert _body_words([block for block in blocks if block[0] != "code"]) <= found


@given(text=st.text(max_size=3000), kind=st.sampled_from(["markdown", "html", "rst", "text", "pdf"]), size=sizes)
@example(text="# a\n\n" + "b " * 40, kind="markdown", size=(40, 0))
@example(text="x\n¶\n\u200b# h ¶\n\ny", kind="markdown", size=(40, 4))
def test_any_text_splits_into_bounded_chunks_of_the_source(text, kind, size):
    check_chunks(text, kind, *size)


def _html_node(children):
    tags = ["div", "p", "section", "article", "main", "span", "b", "ul", "ol", "li", "pre", "blockquote", "table", "tr", "td",
            "h1", "h2", "h3", "h4", "h5", "h6", "nav", "footer", "script", "style", "template"]  # fmt: skip
    attributes = st.sampled_from(["", ' class="content"', ' class="sidebar"', ' role="navigation"', ' hidden', ' id="nav"'])
    return st.tuples(st.sampled_from(tags), attributes, st.lists(children, min_size=1, max_size=5)).map(
        lambda node: f"<{node[0]}{node[1]}>{''.join(node[2])}</{node[0]}>"
    )


html_text = st.one_of(line.map(html.escape), st.sampled_from(["<br>", '<img alt="a picture">', "<!-- note -->", "&amp; &lt;b&gt;", "&#182;"]))
html_page = st.recursive(html_text, _html_node, max_leaves=40).map(lambda body: f"<html><head><title>T</title></head><body>{body}</body></html>")


@given(page=html_page, size=sizes, strip=st.booleans())
def test_generated_html_reads_and_splits_into_bounded_chunks(page, size, strip):
    title, text = html_to_text(page.encode("utf-8"), strip_boilerplate=strip)
    assert title == "T"
    check_chunks(text, "html", *size)


@given(raw=st.binary(max_size=3000) | st.text(max_size=2000).map(str.encode), size=sizes)
@settings(max_examples=scaled(0.5))
def test_any_bytes_read_as_html_give_text_or_a_load_error(raw, size):
    try:
        title, text = html_to_text(raw)
    except LoadError:
        return
    assert title is None or isinstance(title, str)
    check_chunks(text, "html", *size)


@given(
    depth=st.integers(min_value=1000, max_value=6000),
    tags=st.lists(st.sampled_from(["div", "section", "span", "b", "blockquote", "ul", "li", "article", "p", "td"]), min_size=1, max_size=4),
    closed=st.booleans(),
)
@settings(max_examples=scaled(0.05))
@example(depth=20_000, tags=["div"], closed=True)
def test_deeply_nested_html_raises_no_recursion_error(depth, tags, closed):
    opening = "".join(f"<{tags[level % len(tags)]}>" for level in range(depth))
    closing = "".join(f"</{tags[level % len(tags)]}>" for level in reversed(range(depth))) if closed else ""
    page = f"<html><body>{opening}<h2>Deep</h2><p>deep text</p>{closing}</body></html>".encode()
    _, text = html_to_text(page)
    assert "deep text" in text
    check_chunks(text, "html", 200, 0)
