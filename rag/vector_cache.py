"""Content-hash vector cache: a text embedded once by an embedder is never embedded again in that store folder.

One SQLite file in the store folder maps (embedder id, SHA-256 of the embedded text) to its
vector, so identical chunks are embedded once across sources *and* collections, and a
collection dropped with ``--reindex`` (same embedder) or rebuilt elsewhere in the folder
gets its vectors back without running the embedder. Vectors are stored as float32, the
precision Chroma keeps them in. A cache that cannot be opened or written only costs speed:
the embedder runs as if it were empty.

Example::

    from rag.vector_cache import VectorCache
    with VectorCache.open(settings.store_path, "all-MiniLM-L6-v2.f32.gguf ... nfc") as cache:
        known = cache.get(["3f2a...", "9bc1..."])      # {sha256: vector} of those already embedded
        cache.put({"77de...": [0.1, 0.2, ...]})
"""

from __future__ import annotations

import logging
import sqlite3
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from langchain_core.embeddings import Embeddings

logger = logging.getLogger(__name__)

CACHE_FILE = "vector-cache.sqlite3"
_LOOKUP_BATCH = 500  # SQLite's default limit on host parameters is 999

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    embedder TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedder, text_sha256)
) WITHOUT ROWID
"""


class VectorCache:
    """The vectors one embedder computed for texts, by the SHA-256 of each text; see the module docstring."""

    def __init__(self, connection: sqlite3.Connection | None, embedder: str) -> None:
        self.connection = connection
        self.embedder = embedder

    @classmethod
    def open(cls, folder: Path, embedder: str) -> VectorCache:
        """The cache in ``folder`` (created if needed) for ``embedder``; a disabled cache if it cannot be opened."""
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(Path(folder) / CACHE_FILE, timeout=30.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.commit()
        except (OSError, sqlite3.Error) as error:
            logger.warning("vector cache in %s not used: %s", folder, error)
            return cls(None, embedder)
        return cls(connection, embedder)

    def get(self, digests: Iterable[str]) -> dict[str, list[float]]:
        """The cached vectors among ``digests`` (SHA-256 hex of embedded texts), by digest."""
        wanted = list(dict.fromkeys(digests))
        found: dict[str, list[float]] = {}
        if self.connection is None:
            return found
        try:
            for start in range(0, len(wanted), _LOOKUP_BATCH):
                group = wanted[start : start + _LOOKUP_BATCH]
                rows = self.connection.execute(
                    f"SELECT text_sha256, vector FROM vectors WHERE embedder = ? AND text_sha256 IN ({','.join('?' * len(group))})",
                    [self.embedder, *group],
                )
                for digest, blob in rows:
                    found[digest] = array("f", blob).tolist()
        except sqlite3.Error as error:
            logger.warning("vector cache lookup failed, embedding instead: %s", error)
        return found

    def put(self, vectors: Mapping[str, Sequence[float]]) -> None:
        """Remember ``vectors`` (by SHA-256 hex of their texts) for this embedder."""
        if self.connection is None or not vectors:
            return
        try:
            with self.connection:
                self.connection.executemany(
                    "INSERT OR REPLACE INTO vectors (embedder, text_sha256, vector) VALUES (?, ?, ?)",
                    [(self.embedder, digest, array("f", vector).tobytes()) for digest, vector in vectors.items()],
                )
        except sqlite3.Error as error:
            logger.warning("vector cache not updated: %s", error)

    def __len__(self) -> int:
        if self.connection is None:
            return 0
        return self.connection.execute("SELECT COUNT(*) FROM vectors WHERE embedder = ?", [self.embedder]).fetchone()[0]

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def embed_missing(embeddings: Embeddings, texts: Mapping[str, str], cache: VectorCache) -> tuple[dict[str, list[float]], int]:
    """(vectors of ``texts`` by digest, how many were computed): those in ``cache``, the rest embedded and added to it.

    Args:
        embeddings: the embedder, used only for the texts not in the cache.
        texts: the texts to embed, by the SHA-256 hex of each.
        cache: the store folder's cache, opened for this embedder (:meth:`VectorCache.open`).
    """
    if not texts:
        return {}, 0
    vectors = cache.get(texts)
    wanted = {digest: text for digest, text in texts.items() if digest not in vectors}
    if wanted:
        # float32, as cached and as Chroma keeps them: a text gets the same vector embedded or cached
        computed = {digest: array("f", vector).tolist() for digest, vector in zip(wanted, embeddings.embed_documents(list(wanted.values())))}
        cache.put(computed)
        vectors.update(computed)
    return vectors, len(wanted)
