"""Ingestion: load sources, split them, embed the chunks and index them in Chroma.

Example::

    from rag.ingest import ingest
    report = ingest(["data/"], Settings())
    print(report.added, report.failures)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.load import LoadFailure, load_sources
from rag.settings import Settings
from rag.split import split_documents
from rag.store import open_store, require_nonempty, upsert_chunks

logger = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What an ingest run did."""

    sources: int = 0
    chunks: int = 0
    added: int = 0
    failures: list[LoadFailure] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def ingest(inputs: Iterable[str | Path], settings: Settings | None = None, embeddings: Embeddings | None = None) -> IndexReport:
    """Index files and folders into the configured collection."""
    settings = settings or Settings()
    if embeddings is None:
        from rag.embed import load_embeddings

        embeddings = load_embeddings(settings)
    loaded = load_sources(inputs)
    chunks = split_documents(loaded.documents, settings.chunk_size, settings.chunk_overlap)
    store = open_store(settings, embeddings)
    added = upsert_chunks(store, chunks)
    return IndexReport(sources=len(loaded.sources), chunks=len(chunks), added=added, failures=loaded.failures)


def search(query: str, k: int = 4, settings: Settings | None = None, embeddings: Embeddings | None = None) -> list[tuple[Document, float]]:
    """Top ``k`` chunks for ``query`` with their similarity (1 = identical)."""
    settings = settings or Settings()
    if embeddings is None:
        from rag.embed import load_embeddings

        embeddings = load_embeddings(settings)
    store = open_store(settings, embeddings)
    require_nonempty(store, settings)
    return [(doc, 1.0 - distance) for doc, distance in store.similarity_search_with_score(query, k=k)]
