"""Chunking with LangChain's ``RecursiveCharacterTextSplitter``.

Example::

    from rag.split import split_documents
    chunks = split_documents(documents, chunk_size=500, chunk_overlap=0)
"""

from __future__ import annotations

import hashlib

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_documents(documents: list[Document], chunk_size: int = 500, chunk_overlap: int = 0) -> list[Document]:
    """Split documents into chunks carrying ``start_index`` and ``chunk_hash`` metadata."""
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    chunks = splitter.split_documents(documents)
    for chunk in chunks:
        chunk.metadata["chunk_hash"] = content_hash(chunk.page_content)
    return chunks
