"""The Chroma vector store on disk.

Example::

    from rag.store import open_store
    store = open_store(settings, embeddings)      # a langchain_chroma.Chroma
    store.similarity_search_with_score("query", k=4)
"""

from __future__ import annotations

import logging

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.errors import RagError
from rag.settings import Settings

logger = logging.getLogger(__name__)


class EmptyStore(RagError, LookupError):
    """Nothing is indexed in the collection yet."""


def open_client(settings: Settings):
    """A Chroma ``PersistentClient`` for the store directory, telemetry off."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings.store_path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(settings.store_path), settings=ChromaSettings(anonymized_telemetry=False))


def open_store(settings: Settings, embeddings: Embeddings):
    """The collection as a LangChain ``Chroma`` vector store (cosine distance)."""
    from langchain_chroma import Chroma

    return Chroma(
        client=open_client(settings),
        collection_name=settings.collection,
        embedding_function=embeddings,
        collection_metadata={"hnsw:space": "cosine"},
    )


def chunk_id(chunk: Document) -> str:
    """A stable id: the same chunk of the same source always gets the same id."""
    meta = chunk.metadata
    return f"{meta['source']}#{meta.get('start_index', 0)}:{meta['chunk_hash'][:16]}"


def upsert_chunks(store, chunks: list[Document], batch_size: int | None = None) -> int:
    """Write chunks with stable ids in batches Chroma accepts; returns the number written."""
    limit = batch_size or store._client.get_max_batch_size()
    for start in range(0, len(chunks), limit):
        batch = chunks[start : start + limit]
        store.add_documents(batch, ids=[chunk_id(chunk) for chunk in batch])
    return len(chunks)


def require_nonempty(store, settings: Settings) -> None:
    if store._collection.count() == 0:
        raise EmptyStore(
            f"nothing is indexed yet in collection {settings.collection!r} at {settings.store_path}: "
            "run `rag ingest PATH ...` first"
        )
