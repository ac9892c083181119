"""The one retriever: vector, lexical (BM25) or hybrid search over a store, as a LangChain ``BaseRetriever``.

``rag search``, ``ask``, ``chat`` and ``eval`` all retrieve through :func:`retriever`, so
what ``rag eval`` scores is what the model is given. Hybrid search fuses the vector and
the lexical ranking with reciprocal rank fusion; every hit carries ``metadata["score"]``
(cosine similarity to the query, whichever method found it; BM25 for lexical-only
retrieval), ``metadata["method"]`` (``vector``, ``lexical`` or ``vector+lexical``) and
``metadata["rank"]``. Chunks with the same text appear once. Optional: neighbours from
the same section appended to a hit's text, and score cut-offs (what they cut is in the
first hit's ``metadata["cut"]``; when no chunk reaches ``min_score`` nothing is returned,
and ``rag ask`` says it does not know without calling the model). When no hit scores
``unmentioned_max_score`` and the query names something no chunk contains (an acronym, a
code identifier, a mixed-case name: :func:`rag.lexical.named_terms`), the first hit's
``metadata["unmentioned"]`` lists those names, and ``rag ask`` says the documents never
mention them, again without the model.

Example::

    import rag
    retriever = rag.retriever(rag.Settings(collection="notes"))
    docs = retriever.invoke("how do I rename a branch?")
    chain = retriever | format_docs | prompt | llm          # compose it in your own LCEL chain
"""

from __future__ import annotations

import logging
import math
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rag.embed import embedder_id
from rag.errors import require_question
from rag.lexical import LexicalIndex, named_terms
from rag.repair import readable_count
from rag.settings import Settings
from rag.split import SPLITTER_ID, content_hash
from rag.store import (
    REINDEX_HINT,
    EmptyStore,
    IncompatibleCollection,
    StoreBusy,
    check_dimension,
    query_nearest,
    check_profile,
    open_collection,
    read_profile,
    store_lock,
)

logger = logging.getLogger(__name__)

RRF_K = 60  # the usual constant of reciprocal rank fusion: 1 / (60 + rank)
MIN_CANDIDATES = 20  # chunks each method proposes, at least, before fusion and deduplication
SEARCH_EXAMPLE = 'rag search "when was the lighthouse built?"'


class RagRetriever(BaseRetriever):
    """Chunks of a Chroma collection for a query, best first (see the module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Any
    embeddings: Embeddings | None = None
    lexical: LexicalIndex | None = None
    k: int = 4
    method: str = "hybrid"
    neighbours: int = 0
    min_score: float = 0.0
    min_score_ratio: float = 0.0
    unmentioned_max_score: float = 0.0
    lexical_weight: float = 1.0  # of the BM25 ranking in the fusion (the vector ranking weighs 1)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        require_question(query, "search query", SEARCH_EXAMPLE)
        if self.collection.count() == 0:
            return []
        depth = max(self.k * 3, MIN_CANDIDATES)
        vector = self._embed(query) if self.method != "lexical" else None
        ranked: dict[str, dict] = {}
        keyword_first = None
        if vector is not None:
            found = query_nearest(self.collection, vector, min(depth, self.collection.count()), embedder_id(self.embeddings))
            for rank, (chunk_id, text, metadata, distance) in enumerate(zip(found["ids"][0], found["documents"][0], found["metadatas"][0], found["distances"][0]), start=1):
                ranked[chunk_id] = {"text": text, "metadata": metadata or {}, "score": 1.0 - float(distance), "rrf": 1.0 / (RRF_K + rank), "methods": ["vector"]}
        if self.method != "vector" and self.lexical is not None:
            lexical = self.lexical.search(query[:10_000], depth)
            keyword_first = lexical[0][0] if lexical else None
            for rank, (chunk_id, bm25) in enumerate(lexical, start=1):
                entry = ranked.setdefault(chunk_id, {"rrf": 0.0, "methods": [], "bm25": bm25})
                entry["rrf"] += self.lexical_weight / (RRF_K + rank)
                entry["methods"].append("lexical")
                entry["bm25"] = bm25
            self._fill_lexical_only(ranked, vector)
        order = sorted(ranked.items(), key=lambda item: -item[1]["rrf"])
        hits: list[Document] = []
        seen: set[str] = set()
        for chunk_id, entry in order:
            if "text" not in entry:
                continue  # in the lexical index but no longer in Chroma (a crash being recovered)
            digest = content_hash(entry["text"])
            if digest in seen:
                continue
            seen.add(digest)
            score = entry["score"] if "score" in entry else entry.get("bm25", 0.0)
            metadata = {**entry["metadata"], "score": float(score), "method": "+".join(entry["methods"]), "id": chunk_id}
            hits.append(Document(page_content=entry["text"], metadata=metadata))
            if len(hits) == self.k:
                break
        hits = self._cut(hits, keyword_first)
        self._mark_unmentioned(query, hits)
        for rank, hit in enumerate(hits, start=1):
            hit.metadata["rank"] = rank
        return self._with_neighbours(hits) if self.neighbours else hits

    def _embed(self, query: str) -> list[float]:
        vector = self.embeddings.embed_query(query)
        check_dimension(self.collection, len(vector), embedder_id(self.embeddings))
        return vector

    def _fill_lexical_only(self, ranked: dict[str, dict], vector: list[float] | None) -> None:
        """Text, metadata and (with a query vector) cosine score of chunks only the lexical index found."""
        missing = [chunk_id for chunk_id, entry in ranked.items() if "text" not in entry]
        if not missing:
            return
        found = None
        if vector is not None:
            try:
                found = self.collection.get(ids=missing, include=["documents", "metadatas", "embeddings"])
            except Exception as error:  # chromadb's InternalError: a vector lost by a killed writer, until re-ingested
                logger.info("could not read the vectors of %d lexical hits (%s); scoring them 0", len(missing), error)
        if found is None:
            found = self.collection.get(ids=missing, include=["documents", "metadatas"])
        embeddings = found.get("embeddings")
        for index, chunk_id in enumerate(found["ids"]):
            entry = ranked[chunk_id]
            entry["text"], entry["metadata"] = found["documents"][index], found["metadatas"][index] or {}
            if vector is not None:
                entry["score"] = _cosine(vector, embeddings[index]) if embeddings is not None else 0.0

    def _cut(self, hits: list[Document], keyword_first: str | None = None) -> list[Document]:
        """Drop hits below ``min_score`` (all of them, if none reaches it) or far below the best one (``min_score_ratio``).

        The keyword index's first (chunk id ``keyword_first``) stays when another hit reaches ``min_score``:
        it holds the question's words, and a low cosine similarity is then the embedder's miss.
        """
        if not hits or (self.min_score <= 0 and self.min_score_ratio <= 0) or self.method == "lexical":
            return hits
        best = max(hit.metadata["score"] for hit in hits)
        if self.min_score > 0 and best < self.min_score:
            logger.info("no chunk reaches min_score %.3f (best %.3f): nothing retrieved", self.min_score, best)
            return []
        floor = max(self.min_score, best * self.min_score_ratio)
        kept = [hit for index, hit in enumerate(hits) if index == 0 or hit.metadata["id"] == keyword_first or hit.metadata["score"] >= floor]
        cut = [{"source": hit.metadata.get("source", ""), "score": round(hit.metadata["score"], 4)} for hit in hits if hit not in kept]
        if cut:
            kept[0].metadata["cut"] = cut
            logger.info("dropped %d of %d chunks scoring under %.3f", len(cut), len(hits), floor)
        return kept

    def _mark_unmentioned(self, query: str, hits: list[Document]) -> None:
        """Put in the first hit's ``unmentioned`` what the query names that no chunk contains, when every hit scores under ``unmentioned_max_score``."""
        if not hits or self.unmentioned_max_score <= 0 or self.lexical is None or self.method == "lexical":
            return
        if max(hit.metadata["score"] for hit in hits) >= self.unmentioned_max_score:
            return
        missing = self.lexical.unmentioned(named_terms(query[:10_000]))
        if missing:
            hits[0].metadata["unmentioned"] = missing
            logger.info("no chunk mentions %s and none scores %.2f", ", ".join(missing), self.unmentioned_max_score)

    def _with_neighbours(self, hits: list[Document]) -> list[Document]:
        """Each hit's text with up to ``neighbours`` chunks before and after it from the same source and section."""
        for hit in hits:
            meta = hit.metadata
            if "section" not in meta or "start_index" not in meta:
                continue
            found = self.collection.get(
                where={"$and": [{"source": meta.get("source", "")}, {"section": meta["section"]}]}, include=["documents", "metadatas"]
            )
            chunks = sorted(zip(found["metadatas"], found["documents"]), key=lambda item: item[0].get("start_index", 0))
            starts = [metadata.get("start_index", 0) for metadata, _ in chunks]
            if meta["start_index"] not in starts:
                continue
            where = starts.index(meta["start_index"])
            window = chunks[max(0, where - self.neighbours) : where + self.neighbours + 1]
            if len(window) > 1:
                hit.page_content = "\n\n".join(text for _, text in window)
                meta["neighbours"] = len(window) - 1
        return hits


def _cosine(first: list[float], second) -> float:
    dot = sum(a * b for a, b in zip(first, second))
    norm = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(float(b) * float(b) for b in second))
    return dot / norm if norm else 0.0


def retriever(settings: Settings | None = None, embeddings: Embeddings | None = None, *, k: int | None = None, collection: Any = None) -> RagRetriever:
    """The retriever of ``rag search``, ``ask``, ``chat`` and ``eval`` for ``settings``.

    Args:
        settings: store, collection, ``k``, ``retrieval`` method, ``neighbours``, cut-offs.
        embeddings: the store's embedder; loaded from settings when needed (not for ``lexical``).
        k: chunks per query (default ``settings.k``).
        collection: an already opened raw Chroma collection.

    Raises:
        EmptyStore: nothing is indexed in the collection.
        IncompatibleCollection: the collection was built with another embedder, or before
            the lexical index existed (rebuild it with ``rag ingest --reindex``).
        rag.repair.VectorIndexDamaged: a killed process left the vector index half saved
            (the next ``rag ingest`` rebuilds it).
    """
    settings = settings or Settings()
    k = settings.k if k is None else k
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    collection = collection if collection is not None else open_collection(settings, create=False)
    if collection is None or readable_count(collection, settings) == 0:  # damaged index files: one line saying so
        raise EmptyStore(f"nothing is indexed yet in collection {settings.collection!r} at {settings.store_path}: run `rag ingest PATH ...` first")
    splitter = read_profile(collection).get("splitter")
    if splitter is not None and splitter != SPLITTER_ID:
        raise IncompatibleCollection(
            f"collection {settings.collection!r} was split by another version of rag ({splitter}, not {SPLITTER_ID}): {REINDEX_HINT}"
        )
    method = settings.retrieval
    if method != "lexical" and embeddings is None:
        from rag.embed import load_embeddings

        embeddings = load_embeddings(settings)
    if embeddings is not None:
        check_profile(collection, {"embedder": embedder_id(embeddings)}, what="search")
    lexical = None
    if method != "vector":
        if settings.chroma_url:  # the lexical index lives in a store folder, which a server store does not have
            logger.warning("retrieval %r needs a store folder; with a Chroma server only vector search is available", method)
            method = "vector"
        else:
            lexical = open_lexical(settings, collection)
    return RagRetriever(
        collection=collection,
        embeddings=embeddings,
        lexical=lexical,
        k=k,
        method=method,
        neighbours=settings.neighbours,
        min_score=settings.min_score,
        min_score_ratio=settings.min_score_ratio,
        unmentioned_max_score=settings.unmentioned_max_score,
    )


def open_lexical(settings: Settings, collection) -> LexicalIndex:
    """The collection's lexical index, recovered first if a writer was killed; refuses stores built before it."""
    if not LexicalIndex.exists(settings.store_path):
        raise IncompatibleCollection(
            f"collection {settings.collection!r} has no lexical index (an older version built it): {REINDEX_HINT}, "
            "or search it with --retrieval vector"
        )
    index = LexicalIndex(settings.store_path, settings.collection)
    if index.dirty or index.count() != collection.count():
        try:
            with store_lock(settings, "rag search (lexical index recovery)"):
                index.reconcile(collection)
        except StoreBusy:
            logger.info("an ingest is writing the store; searching while it runs")
    if index.count() == 0:
        raise IncompatibleCollection(
            f"collection {settings.collection!r} has no lexical index (an older version built it): {REINDEX_HINT}, "
            "or search it with --retrieval vector"
        )
    return index


def search(query: str, k: int | None = None, settings: Settings | None = None, embeddings: Embeddings | None = None) -> list[tuple[Document, float]]:
    """Top ``k`` chunks (default ``settings.k``) for ``query`` with their scores, best first: :func:`retriever`'s.

    Each document carries ``score`` (cosine similarity; BM25 for lexical retrieval), ``method``
    and ``rank`` in its metadata. Raises ``EmptyQuestion`` (before anything loads),
    ``EmptyStore`` and ``IncompatibleCollection`` (another embedder, an older splitter).
    """
    require_question(query, "search query", SEARCH_EXAMPLE)
    docs = retriever(settings or Settings(), embeddings, k=k).invoke(query)
    return [(doc, doc.metadata["score"]) for doc in docs]


def hit_to_dict(doc: Document, score: float | None = None) -> dict:
    """A hit as ``rag search --json`` prints it: rank, score, method, source, title, section, text (and page, start_index)."""
    meta = doc.metadata
    fields = {key: meta[key] for key in ("page", "start_index", "neighbours") if key in meta}
    return {
        "rank": meta.get("rank"),
        "score": round(float(meta.get("score", 0.0)), 4),
        "method": meta.get("method", "vector"),
        "source": meta.get("source", ""),
        "title": meta.get("title", ""),
        "section": meta.get("section", ""),
        "text": doc.page_content,
        **fields,
    }


__all__ = ["RagRetriever", "retriever", "search", "hit_to_dict", "open_lexical"]
