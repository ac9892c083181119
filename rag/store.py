"""The Chroma vector store on disk, and the bookkeeping beside it.

A store is a folder holding a Chroma ``PersistentClient`` (one collection per
name), ``rag-sources.sqlite3`` (which sources each collection holds, their
content hashes and chunk counts) and ``rag-write.lock`` (one writer at a time).
Each collection's metadata records the embedder and the splitter settings it
was built with; :func:`check_profile` refuses to mix others in.
With ``settings.chroma_url`` the store is a Chroma server instead (``HttpClient``),
and the record and the lock live on that server (:mod:`rag.chroma_server`).
Retrieval over a store is :mod:`rag.retrieval`.

Example::

    from rag.store import open_store
    store = open_store(settings, embeddings)      # a langchain_chroma.Chroma
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from langchain_core.embeddings import Embeddings

from rag.embed import embedder_id
from rag.errors import RagError
from rag.paths import ensure_directory
from rag.settings import Settings

logger = logging.getLogger(__name__)

RECORD_FILE = "rag-sources.sqlite3"
LOCK_FILE = "rag-write.lock"
STORE_FOLDER_FIX = "choose a folder you can write to with --store or RAG_STORE_DIR"
PROFILE_PREFIX = "rag:"
LEGACY_EMBEDDER_ID = "NFCEmbeddings"  # what versions before the embedder identity recorded for every GGUF model
REINDEX_HINT = "rebuild it with `rag ingest --reindex PATH ...`"


class EmptyStore(RagError, LookupError):
    """Nothing is indexed in the collection yet."""


class IncompatibleCollection(RagError):
    """The collection was built with another embedder or splitter."""


class StoreBusy(RagError):
    """Another process is writing to the store."""


class NotIndexed(RagError, LookupError):
    """The source named is not in the collection."""


# --- Chroma -----------------------------------------------------------------------------------------


def open_client(settings: Settings):
    """A Chroma ``PersistentClient`` for the store directory, or an ``HttpClient`` for ``chroma_url``; telemetry off."""
    if settings.chroma_url:
        from rag.chroma_server import http_client

        return http_client(settings)
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    ensure_directory(settings.store_path, "store folder", STORE_FOLDER_FIX)
    return chromadb.PersistentClient(path=str(settings.store_path), settings=ChromaSettings(anonymized_telemetry=False))


def store_location(settings: Settings) -> str:
    """Where the store is, as messages and reports name it: the server URL or the folder."""
    return settings.chroma_url or str(settings.store_path)


def check_collection_name(name: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]", name) or ".." in name:
        raise RagError(
            f"bad collection name {name!r}: use 3-512 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
        )


def open_collection(settings: Settings, client=None, *, create: bool = True):
    """The raw Chroma collection (cosine distance); ``None`` if missing and ``create`` is off."""
    check_collection_name(settings.collection)
    if settings.chroma_url:
        from rag.chroma_server import RESERVED_COLLECTIONS

        if settings.collection in RESERVED_COLLECTIONS:
            raise RagError(f"collection name {settings.collection!r} is rag's bookkeeping on a Chroma server: choose another --collection")
    client = client or open_client(settings)
    if create:
        return client.get_or_create_collection(settings.collection, metadata={"hnsw:space": "cosine"})
    from chromadb.errors import NotFoundError

    try:
        return client.get_collection(settings.collection)
    except NotFoundError:
        return None


def open_store(settings: Settings, embeddings: Embeddings):
    """The collection as a LangChain ``Chroma`` vector store (cosine distance).

    Raises :class:`IncompatibleCollection` when it was indexed with another embedder.
    """
    from langchain_chroma import Chroma

    client = open_client(settings)
    collection = open_collection(settings, client)
    check_profile(collection, embedder_profile(embeddings), what="search")
    return Chroma(
        client=client,
        collection_name=settings.collection,
        embedding_function=embeddings,
        collection_metadata={"hnsw:space": "cosine"},
    )


def require_nonempty(store, settings: Settings) -> None:
    """Raise :class:`EmptyStore` when the collection (LangChain ``Chroma`` or raw) holds nothing."""
    collection = getattr(store, "_collection", store)
    if collection is None or collection.count() == 0:
        raise EmptyStore(
            f"nothing is indexed yet in collection {settings.collection!r} at {store_location(settings)}: "
            "run `rag ingest PATH ...` first"
        )


# --- what a collection records about how it was built -----------------------------------------------


def embedder_profile(embeddings: Embeddings) -> dict[str, object]:
    return {"embedder": embedder_id(embeddings)}


def read_profile(collection) -> dict[str, object]:
    metadata = collection.metadata or {}
    return {key[len(PROFILE_PREFIX) :]: value for key, value in metadata.items() if key.startswith(PROFILE_PREFIX)}


def check_profile(collection, wanted: dict[str, object], what: str = "ingest") -> None:
    """Raise :class:`IncompatibleCollection` if ``collection`` was built with other settings than ``wanted``.

    Only the keys in ``wanted`` are compared (search needs the same embedder, not the
    same splitter). A collection with chunks but no profile (made by an older
    version) is refused too: nothing says what its vectors mean.
    """
    recorded = read_profile(collection)
    if not recorded:
        if collection.count() == 0:
            return
        raise IncompatibleCollection(
            f"collection {collection.name!r} has {collection.count()} chunks but no record of the embedder and "
            f"splitter that made them (an older version built it): {REINDEX_HINT}"
        )
    if "embedder" in wanted and recorded.get("embedder") == LEGACY_EMBEDDER_ID:
        raise IncompatibleCollection(
            f"collection {collection.name!r} was built by an older version that did not record which embedding "
            f"model made its vectors: {REINDEX_HINT}"
        )
    differences = [
        f"{key} {recorded[key]!r} (this {what}: {value!r})" if key in recorded else f"no {key} (an older version built it; this {what}: {value!r})"
        for key, value in wanted.items()
        if recorded.get(key) != value
    ]
    if differences:
        raise IncompatibleCollection(
            f"collection {collection.name!r} was indexed with " + ", ".join(differences) + "; mixing them would make "
            f"search meaningless: use the same settings, another --collection, or {REINDEX_HINT}"
        )


def check_dimension(collection, dimension: int, embedder: str) -> None:
    """Raise :class:`IncompatibleCollection` if the collection's recorded vector dimension is not ``dimension``."""
    recorded = read_profile(collection).get("dimension")
    if recorded is not None and recorded != dimension:
        raise _dimension_mismatch(collection.name, recorded, dimension, embedder)


def _dimension_mismatch(name: str, recorded: object, dimension: int, embedder: str) -> IncompatibleCollection:
    held = f"{recorded}-dimensional vectors" if recorded is not None else "vectors of another dimension"
    return IncompatibleCollection(
        f"collection {name!r} holds {held} but the embedder {embedder!r} makes "
        f"{dimension}-dimensional ones: use the embedder it was built with, another --collection, or {REINDEX_HINT}"
    )


def write_profile(collection, profile: dict[str, object]) -> None:
    """Record ``profile`` (merged into what is there) in the collection's metadata."""
    current = {key: value for key, value in (collection.metadata or {}).items() if not key.startswith("hnsw:")}
    merged = {**current, **{PROFILE_PREFIX + key: value for key, value in profile.items()}}
    if merged != current:
        collection.modify(metadata=merged)  # the distance function stays in the collection's configuration


# --- chunks -----------------------------------------------------------------------------------------


def chunk_id(source: str, chunk_hash: str, occurrence: int = 0) -> str:
    """A stable id: the same text at the same place in the order of a source's equal chunks."""
    return hashlib.sha256(f"{source}\0{chunk_hash}\0{occurrence}".encode()).hexdigest()[:32]


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def chunks_of_source(collection, source: str) -> dict[str, dict]:
    """{chunk id: metadata} of one source's chunks in the collection."""
    found = collection.get(where={"source": source}, include=["metadatas"])
    return dict(zip(found["ids"], found["metadatas"] or [{}] * len(found["ids"])))


def vectors_for_hashes(collection, hashes: Iterable[str], batch: int = 500) -> dict[str, list[float]]:
    """Vectors already in the collection for chunk texts with these hashes (each text embedded once)."""
    wanted = sorted(set(hashes))
    found: dict[str, list[float]] = {}
    for group in batched(wanted, batch):
        result = collection.get(where={"chunk_hash": {"$in": list(group)}}, include=["embeddings", "metadatas"])
        for metadata, vector in zip(result["metadatas"] or [], result["embeddings"] if result["embeddings"] is not None else []):
            found.setdefault(metadata["chunk_hash"], [float(value) for value in vector])
    return found


def delete_chunks(collection, ids: Sequence[str], limit: int) -> None:
    for group in batched(list(ids), limit):
        collection.delete(ids=list(group))


def clean_metadata(metadata: dict) -> dict:
    """Chroma stores only str/int/float/bool values."""
    return {key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool))}


# --- nearest neighbours -------------------------------------------------------------------------------


def query_nearest(collection, vector: list[float], n: int, embedder: str) -> dict:
    """Chroma's ``query`` for one vector; a vector of another dimension is :class:`IncompatibleCollection`."""
    from chromadb.errors import InvalidArgumentError, InvalidDimensionException

    check_dimension(collection, len(vector), embedder)
    try:
        return collection.query(query_embeddings=[vector], n_results=n, include=["documents", "metadatas", "distances"])
    except (InvalidArgumentError, InvalidDimensionException) as error:  # a collection that does not record its dimension
        if "dimension" not in str(error):
            raise
        raise _dimension_mismatch(collection.name, None, len(vector), embedder) from None


# --- the record of indexed sources --------------------------------------------------------------------


@dataclass
class SourceEntry:
    source: str
    state: str  # "indexed", or "pending" while (or if a crash left it) being written
    chunks: int = 0
    title: str | None = None
    kind: str | None = None
    content_hash: str | None = None  # of the raw bytes last indexed
    pipeline: str | None = None  # loader settings that produced the chunks
    ingested_at: str | None = None  # when its chunks last changed
    checked_at: str | None = None  # when it was last seen unchanged or indexed
    etag: str | None = None  # a URL's ETag and Last-Modified as last fetched: the next fetch is conditional
    last_modified: str | None = None

    @property
    def validators(self) -> tuple[str | None, str | None] | None:
        """(ETag, Last-Modified) for a conditional re-fetch, if the server sent either."""
        return (self.etag, self.last_modified) if self.etag or self.last_modified else None

    def to_dict(self) -> dict:
        return asdict(self)


def indexed_entry(
    previous: SourceEntry | None, source: str, chunks: int, title: str | None, kind: str | None, content_hash: str,
    pipeline: str, changed: bool, validators: tuple[str | None, str | None] | None,
) -> SourceEntry:  # fmt: skip
    """The record entry of a source just indexed: ``ingested_at`` moves only when its chunks ``changed``."""
    now = utc_timestamp()
    kept = previous is not None and previous.ingested_at is not None and not changed
    etag, last_modified = validators or (None, None)
    return SourceEntry(
        source, "indexed", chunks, title, kind, content_hash, pipeline, previous.ingested_at if kept else now, now, etag, last_modified
    )


class SourceRecord:
    """Which sources each collection holds (SQLite beside the Chroma files).

    A source is marked ``pending`` before its chunks are written and ``indexed``
    with its new hash after, so a run killed half-way leaves it pending and the
    next run re-does it.
    """

    _COLUMNS = ("source", "state", "chunks", "title", "kind", "content_hash", "pipeline", "ingested_at", "checked_at", "etag", "last_modified")

    def __init__(self, settings: Settings) -> None:
        ensure_directory(settings.store_path, "store folder", STORE_FOLDER_FIX)
        self.collection = settings.collection
        self.db = sqlite3.connect(settings.store_path / RECORD_FILE, isolation_level=None, timeout=30)
        # WAL with synchronous=NORMAL survives a killed process (only power loss may drop the last commits).
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sources ("
            " collection TEXT NOT NULL, source TEXT NOT NULL, state TEXT NOT NULL, chunks INTEGER NOT NULL DEFAULT 0,"
            " title TEXT, kind TEXT, content_hash TEXT, pipeline TEXT, ingested_at TEXT, checked_at TEXT,"
            " etag TEXT, last_modified TEXT, PRIMARY KEY (collection, source))"
        )
        # Record files written before a column existed get it (empty: the next fetch of a URL is a plain one).
        present = {row[1] for row in self.db.execute("PRAGMA table_info(sources)")}
        for column in ("etag", "last_modified"):
            if column not in present:
                self.db.execute(f"ALTER TABLE sources ADD COLUMN {column} TEXT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SourceRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, source: str) -> SourceEntry | None:
        row = self.db.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM sources WHERE collection = ? AND source = ?", (self.collection, source)
        ).fetchone()
        return SourceEntry(*row) if row else None

    def entries(self, under: str | None = None) -> list[SourceEntry]:
        """All entries, or those whose source is ``under`` (itself or below it, as a path or URL prefix)."""
        rows = self.db.execute(
            f"SELECT {', '.join(self._COLUMNS)} FROM sources WHERE collection = ? ORDER BY source", (self.collection,)
        ).fetchall()
        return entries_under([SourceEntry(*row) for row in rows], under)

    def mark_pending(self, source: str) -> None:
        self.db.execute(
            "INSERT INTO sources (collection, source, state) VALUES (?, ?, 'pending')"
            " ON CONFLICT (collection, source) DO UPDATE SET state = 'pending'",
            (self.collection, source),
        )

    def mark_indexed(
        self, source: str, *, chunks: int, title: str | None, kind: str | None, content_hash: str, pipeline: str, changed: bool,
        validators: tuple[str | None, str | None] | None = None,
    ) -> None:  # fmt: skip
        entry = indexed_entry(self.get(source), source, chunks, title, kind, content_hash, pipeline, changed, validators)
        self.db.execute(
            f"INSERT OR REPLACE INTO sources (collection, {', '.join(self._COLUMNS)}) VALUES (?{', ?' * len(self._COLUMNS)})",
            (self.collection, *(getattr(entry, column) for column in self._COLUMNS)),
        )

    def mark_checked(self, source: str, validators: tuple[str | None, str | None] | None = None) -> None:
        """Seen unchanged now; ``validators`` (ETag, Last-Modified), when given, replace the recorded ones."""
        self.db.execute("UPDATE sources SET checked_at = ? WHERE collection = ? AND source = ?", (utc_timestamp(), self.collection, source))
        if validators:
            self.db.execute(
                "UPDATE sources SET etag = ?, last_modified = ? WHERE collection = ? AND source = ?", (*validators, self.collection, source)
            )

    def delete(self, source: str) -> None:
        self.db.execute("DELETE FROM sources WHERE collection = ? AND source = ?", (self.collection, source))

    def drop_collection(self) -> None:
        self.db.execute("DELETE FROM sources WHERE collection = ?", (self.collection,))


def entries_under(entries: list[SourceEntry], under: str | None) -> list[SourceEntry]:
    """``entries`` whose source is ``under`` (itself or below it, as a path or URL prefix); all if ``None``."""
    if under is None:
        return entries
    prefix = under.rstrip("/" + os.sep)
    return [entry for entry in entries if entry.source == under or entry.source.startswith(prefix + os.sep) or entry.source.startswith(prefix + "/")]


def open_record(settings: Settings, client=None):
    """The source record: :class:`SourceRecord` beside an embedded store, or kept on the Chroma server."""
    if not settings.chroma_url:
        return SourceRecord(settings)
    from rag.chroma_server import ServerSourceRecord

    return ServerSourceRecord(client or open_client(settings), settings)


def recorded_sources(settings: Settings) -> list[SourceEntry]:
    """Every entry of the collection's source record (none if the store was never written)."""
    if not settings.chroma_url and not (settings.store_path / RECORD_FILE).exists():
        return []
    with open_record(settings) as record:
        return record.entries()


def utc_timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601): when a record, lock or report was written."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- one writer at a time -------------------------------------------------------------------------------


@contextlib.contextmanager
def store_lock(settings: Settings, purpose: str) -> Iterator[None]:
    """Hold the store's write lock; raise :class:`StoreBusy` naming the holder if it is taken.

    The lock is the operating system's (``flock``), so a killed holder releases it. On a
    Chroma server it is a per-collection lease on the server (:func:`rag.chroma_server.server_lock`).
    """
    if settings.chroma_url:
        from rag.chroma_server import server_lock

        with server_lock(open_client(settings), settings, purpose):
            yield
        return
    ensure_directory(settings.store_path, "store folder", STORE_FOLDER_FIX)
    path = settings.store_path / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock without the holder's details
        import filelock

        try:
            with filelock.FileLock(str(path) + ".filelock", timeout=0):
                yield
        except filelock.Timeout:
            raise StoreBusy(f"store {settings.store_path} is being written by another process; wait for it to finish") from None
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusy(
                f"store {settings.store_path} is being written by {_describe_holder(fd)}; "
                "wait for it to finish (or stop it) and try again"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "command": " ".join(sys.argv)[:300],
            "since": utc_timestamp(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if not holder.get("pid"):
        return "another process (just starting)"
    return f"{holder.get('purpose', 'another process')} (pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('since', '?')}: {holder.get('command', '')})"
