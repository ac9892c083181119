"""Chunking with LangChain's ``RecursiveCharacterTextSplitter``.

Markdown, and HTML (which :mod:`rag.sources.html` turns into Markdown-like text), are cut
at headings, code fences and rules before paragraphs; reStructuredText at its
section markup; plain text and PDF pages at paragraphs, lines, then words.
Every chunk carries ``start_index`` and ``chunk_hash`` (SHA-256 of its text)
besides its document's metadata.

Example::

    from rag.split import split_documents
    chunks = split_documents(documents, chunk_size=500, chunk_overlap=0)
"""

from __future__ import annotations

import hashlib

from langchain_core.documents import Document

from rag.errors import RagError

# Recorded with each collection; bump when the separators change.
SPLITTER_ID = "recursive-v2"


class BadSplitterSettings(RagError, ValueError):
    """chunk_size / chunk_overlap do not make sense together."""


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_splitter(kind: str, chunk_size: int = 500, chunk_overlap: int = 0):
    """The splitter for a document kind (``markdown``, ``html``, ``rst``, ``text``, ``pdf``)."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    if chunk_overlap >= chunk_size:
        raise BadSplitterSettings(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    language = {"markdown": Language.MARKDOWN, "html": Language.MARKDOWN, "rst": Language.RST}.get(kind)
    if language is None:
        return RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    return RecursiveCharacterTextSplitter.from_language(
        language, chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )


def split_documents(documents: list[Document], chunk_size: int = 500, chunk_overlap: int = 0) -> list[Document]:
    """Split documents into chunks carrying ``start_index`` and ``chunk_hash`` metadata.

    Each document's ``kind`` metadata picks the separators (see :func:`build_splitter`).
    """
    splitters: dict[str, object] = {}
    chunks: list[Document] = []
    for document in documents:
        kind = document.metadata.get("kind", "text")
        if kind not in splitters:
            splitters[kind] = build_splitter(kind, chunk_size, chunk_overlap)
        for chunk in splitters[kind].split_documents([document]):
            if chunk.page_content.strip():
                chunk.metadata["chunk_hash"] = content_hash(chunk.page_content)
                chunks.append(chunk)
    return chunks


def splitter_profile(chunk_size: int, chunk_overlap: int) -> dict[str, object]:
    """What a collection records about how its chunks were cut."""
    return {"splitter": SPLITTER_ID, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap}
