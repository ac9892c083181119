"""Ingestion: load sources, split them, embed what is new and index it in Chroma.

Indexing is incremental and idempotent:

- a source whose bytes did not change is skipped without parsing or embedding;
- a changed source gets its new chunks added and its old ones removed; a chunk
  whose text is already in the collection (boilerplate repeated on every page,
  a paragraph that moved) reuses that vector instead of being embedded again;
- a source that fails to load keeps the chunks it had;
- sources gone from a folder are removed only with ``prune=True``;
- a run stopped at any point (Ctrl-C, ``kill -9``) leaves the sources it was
  writing marked pending; the next run redoes them and ends with exactly the
  chunks a clean run gives.

Loading and splitting run ahead in a child process (see :mod:`rag.sources.ahead`)
while this process embeds, so a hostile file costs at most ``source_timeout``. New chunks
are written to Chroma a few hundred at a time, across sources; a source is marked indexed
once its chunks are written.

Example::

    from rag.indexing import ingest, search
    report = ingest(["notes/", "https://example.org/"], Settings(collection="notes"))
    print(report.chunks_added, report.failures)
    for doc, score in search("what is X?"):     # settings.k chunks
        print(score, doc.metadata["source"])
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.embeddings import Embeddings

from rag.embed import embedder_id
from rag.errors import RagError
from rag.lexical import LexicalIndex, open_lexical_for_writing, sync_source
from rag.repair import sources_to_rebuild
from rag.sources import LoadFailure, LoadOptions, expand_inputs, source_key
from rag.sources.ahead import load_ahead
from rag.sources.process import LOADER_NICENESS, IsolatedLoader, LoadOutcome, LoadRequest, prestart
from rag.settings import Settings
from rag.split import build_splitter, embedding_text, first_tokens, splitter_profile
from rag.store import EmptyStore, IncompatibleCollection, NotIndexed, SourceEntry, batched, check_dimension, check_profile
from rag.store import chunk_id, chunks_of_source, clean_metadata, delete_chunks, open_client, open_collection, open_record
from rag.store import read_profile, recorded_sources, store_location, store_lock, vectors_for_hashes, write_profile
from rag.vector_cache import VectorCache, embed_missing

logger = logging.getLogger(__name__)

EMBED_BATCH = 64  # chunks per embedding call: a progress step
WRITE_BATCH = 512  # new chunks written to Chroma in one upsert, across sources: each upsert costs ~40 ms however small


@dataclass
class IndexReport:
    """What an ingest (or forget) run did, in sources and in chunks."""

    store: str = ""
    collection: str = ""
    sources: int = 0  # sources found under the inputs
    sources_added: int = 0
    sources_updated: int = 0
    sources_skipped: int = 0  # unchanged
    sources_deleted: int = 0
    sources_failed: int = 0
    chunks_added: int = 0
    chunks_updated: int = 0  # same text, new place or title (no embedding)
    chunks_skipped: int = 0  # already indexed as they are
    chunks_deleted: int = 0
    embedded: int = 0  # vectors computed this run
    reused_vectors: int = 0  # new chunks whose text was already embedded
    reindexed: bool = False
    seconds: float = 0.0
    failures: list[LoadFailure] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        """Chunks the sources of this run now have in the collection."""
        return self.chunks_added + self.chunks_updated + self.chunks_skipped

    @property
    def added(self) -> int:
        return self.chunks_added

    @property
    def succeeded(self) -> int:
        return self.sources_added + self.sources_updated + self.sources_skipped

    @property
    def nothing_done(self) -> bool:
        """Something failed and nothing else happened (no source indexed, checked or removed)."""
        return bool(self.failures) and self.succeeded == 0 and self.sources_deleted == 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(chunks=self.chunks, added=self.added)
        return data


def ingest(
    inputs: Iterable[str | os.PathLike],
    settings: Settings | None = None,
    embeddings: Embeddings | None = None,
    *,
    prune: bool = False,
    reindex: bool = False,
    progress: bool = False,
) -> IndexReport:
    """Index files, folders and URLs into the configured collection.

    Args:
        inputs: paths of files or folders, and ``http(s)`` URLs.
        settings: store, collection, splitter and loading limits; default ``Settings()``.
        embeddings: the embedder; default the configured GPT4All model.
        prune: also remove indexed sources that are no longer found under the folders given.
        reindex: drop the collection first and rebuild it from ``inputs`` with the current
            embedder and splitter (needed to change either on an existing collection).
        progress: show a progress bar on stderr.

    Returns:
        An :class:`IndexReport`; sources that failed are in ``report.failures`` with the reason.

    Raises:
        IncompatibleCollection: the collection was built with another embedder or splitter
            (checked before anything is computed).
        StoreBusy: another process is writing to the store.
    """
    started = time.monotonic()
    settings = settings or Settings()
    build_splitter("text", settings.chunk_size, settings.chunk_overlap)  # bad splitter settings fail here
    found = expand_inputs(inputs, settings.include, settings.exclude, settings.include_hidden)
    report = IndexReport(store=store_location(settings), collection=settings.collection, sources=len(found.sources))
    if found.sources and _isolated(settings):
        prestart(settings.loader_memory_mb, LOADER_NICENESS)  # ready by the time the store is open and the embedder loaded
    with store_lock(settings, "rag ingest"):
        if reindex and not settings.chroma_url:  # damaged files Chroma or SQLite cannot even open are moved aside first
            from rag.store_check import set_aside_damage

            set_aside_damage(settings.store_path, settings.collection)
        if embeddings is None:
            from rag.embed import load_embeddings

            embeddings = load_embeddings(settings)
        run = _IngestRun(settings, embeddings, report, progress)
        try:
            given = set(found.sources)
            rebuilt = [source for source in run.prepare(reindex) if source not in given]  # a damaged vector index: every recorded source
            report.sources += len(rebuilt)
            run.index(found.sources + rebuilt)
            if prune:
                run.prune(found.folders, found.missing, set(found.sources))
        finally:
            run.close()
    missing_pruned = set(run.pruned_inputs)
    report.failures[:0] = [failure for failure in found.failures if failure.source not in missing_pruned]
    sources = set(found.sources)
    report.sources_failed = sum(1 for failure in report.failures if failure.source in sources)
    report.seconds = round(time.monotonic() - started, 3)
    logger.info(
        "ingest: %d sources (%d added, %d updated, %d unchanged, %d deleted, %d failed); %d chunks added, %d embedded",
        report.sources, report.sources_added, report.sources_updated, report.sources_skipped,
        report.sources_deleted, report.sources_failed, report.chunks_added, report.embedded,
    )  # fmt: skip
    return report


class _IngestRun:
    """The state of one ingest: collection, record, loader, progress."""

    def __init__(self, settings: Settings, embeddings: Embeddings, report: IndexReport, progress: bool) -> None:
        self.settings = settings
        self.embeddings = embeddings
        self.report = report
        self.options = LoadOptions.from_settings(settings)
        self.profile = {"embedder": embedder_id(embeddings), **splitter_profile(settings.chunk_size, settings.chunk_overlap, settings.embed_tokens)}
        self.client = open_client(settings)
        self.collection = None
        self.record = open_record(settings, self.client)
        self.limit = self.client.get_max_batch_size()
        self.show_progress = progress
        self.bar = None
        self.pruned_inputs: list[str] = []
        self.lexical: LexicalIndex | None = None
        cache_key = str(self.profile["embedder"]) + (f" tokens:{settings.embed_tokens}" if settings.embed_tokens else "")
        self.vector_cache = VectorCache.open(settings.store_path, cache_key)
        self.unwritten: list[tuple[str, list[float], str, dict]] = []  # new chunks embedded, not yet in Chroma
        self.unfinished: list[Callable[[], None]] = []  # what completes each source of them, once they are written

    def prepare(self, reindex: bool) -> list[str]:
        """Open (or drop and recreate) the collection and its lexical index; the sources to rebuild a damaged one from."""
        rebuild = [] if reindex else sources_to_rebuild(self.settings, self.client, self.record)
        if reindex or rebuild:
            self._drop_collection()
            self.report.reindexed = True
        self.collection = open_collection(self.settings, self.client)
        check_profile(self.collection, self.profile)
        write_profile(self.collection, self.profile)
        self.lexical = open_lexical_for_writing(self.settings, self.collection, reindex or bool(rebuild))
        return rebuild

    def _drop_collection(self) -> None:
        from chromadb.errors import NotFoundError

        try:
            self.client.delete_collection(self.settings.collection)
            logger.info("dropped collection %r to re-index it", self.settings.collection)
        except NotFoundError:
            pass
        self.record.drop_collection()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.record.close()
        self.vector_cache.close()
        if self.lexical is not None:
            self.lexical.close()

    # --- indexing ---

    def index(self, sources: list[str]) -> None:
        if not sources:
            return
        if self.show_progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(sources), unit="source", desc="ingest", file=sys.stderr, dynamic_ncols=True)
        requests = iter([self._request(source) for source in sources])
        settings = self.settings  # a loader process at low priority yields the CPU to the embedder
        loader = IsolatedLoader(settings.source_timeout, settings.loader_memory_mb, LOADER_NICENESS) if _isolated(settings) else None
        with contextlib.closing(load_ahead(requests, loader)) as outcomes:
            for outcome in outcomes:
                if outcome.status == "failed":
                    logger.info("could not load %s: %s", outcome.source, outcome.reason)
                    self.report.failures.append(LoadFailure(outcome.source, outcome.reason or "unknown error"))
                elif outcome.status == "unchanged":
                    self._skip(outcome)
                else:
                    self._index_source(outcome)
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(embedded=self.report.embedded, failed=len(self.report.failures), refresh=False)
        self._write()

    def _request(self, source: str) -> LoadRequest:
        entry = self.record.get(source)
        fresh = entry is not None and entry.state == "indexed" and entry.pipeline == self.options.signature
        return LoadRequest(
            source,
            self.options,
            self.settings.chunk_size,
            self.settings.chunk_overlap,
            known_hash=entry.content_hash if fresh else None,
            validators=entry.validators if fresh else None,  # a URL's page is fetched only if it changed
        )

    def _skip(self, outcome: LoadOutcome) -> None:
        entry = self.record.get(outcome.source)
        self.record.mark_checked(outcome.source, outcome.validators)
        self.report.sources_skipped += 1
        self.report.chunks_skipped += entry.chunks if entry else 0

    def _index_source(self, outcome: LoadOutcome) -> None:
        source = outcome.source
        previous = self.record.get(source)
        ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict] = []
        occurrences: Counter[str] = Counter()
        for text, metadata in outcome.chunks:
            digest = metadata["chunk_hash"]
            ids.append(chunk_id(source, digest, occurrences[digest]))
            occurrences[digest] += 1
            texts.append(text)
            metadatas.append(clean_metadata({**metadata, "source": source}))
        existing = chunks_of_source(self.collection, source)
        new = [index for index, id_ in enumerate(ids) if id_ not in existing]
        moved = [index for index, id_ in enumerate(ids) if id_ in existing and existing[id_] != metadatas[index]]
        kept = set(ids)
        stale = [id_ for id_ in existing if id_ not in kept]

        self.record.mark_pending(source)  # until every write below is done
        if self.lexical is not None:
            self.lexical.mark_dirty()  # until both indexes hold the same chunks
        for group in batched(new, EMBED_BATCH):
            self._embed_new([ids[i] for i in group], [texts[i] for i in group], [metadatas[i] for i in group])
        for group in batched(moved, self.limit):
            self.collection.update(ids=[ids[i] for i in group], metadatas=[metadatas[i] for i in group])
        delete_chunks(self.collection, stale, self.limit)

        def finish() -> None:  # once the new chunks are in Chroma
            if self.lexical is not None:
                sync_source(self.lexical, source, ids, texts, metadatas)
            changed = bool(new or moved or stale)
            self.record.mark_indexed(
                source, chunks=len(ids), title=outcome.title, kind=outcome.kind, content_hash=outcome.content_hash or "",
                validators=outcome.validators, pipeline=self.options.signature, changed=changed,
            )  # fmt: skip
            report = self.report
            if previous is None or previous.content_hash is None:
                report.sources_added += 1
            elif changed:
                report.sources_updated += 1
            else:
                report.sources_skipped += 1
            report.chunks_added += len(new)
            report.chunks_updated += len(moved)
            report.chunks_skipped += len(ids) - len(new) - len(moved)
            report.chunks_deleted += len(stale)

        self.unfinished.append(finish)

    def _embed_new(self, ids: list[str], texts: list[str], metadatas: list[dict]) -> None:
        """Embed the texts not embedded yet (each distinct text once, none in the store's vector cache); the chunks wait in ``unwritten``."""
        hashes = [metadata["chunk_hash"] for metadata in metadatas]
        vectors = vectors_for_hashes(self.collection, hashes)
        missing: dict[str, str] = {}
        for digest, text, metadata in zip(hashes, texts, metadatas):
            if digest not in vectors:
                # title and section path in front, cut to the tokens the embedder is given
                missing.setdefault(digest, first_tokens(embedding_text(text, metadata), self.settings.embed_tokens))
        found, embedded = embed_missing(self.embeddings, missing, self.vector_cache)
        if found:
            self._check_dimension(len(next(iter(found.values()))))
        vectors.update(found)
        self.report.embedded += embedded
        self.report.reused_vectors += len(hashes) - embedded
        self.unwritten.extend(zip(ids, [vectors[digest] for digest in hashes], texts, metadatas))
        if len(self.unwritten) >= WRITE_BATCH:
            self._write()
        if self.bar is not None:
            self.bar.set_postfix(embedded=self.report.embedded, failed=len(self.report.failures))

    def _write(self) -> None:
        """Write the chunks waiting in ``unwritten`` to Chroma in as few upserts as it takes, then finish the sources all of whose
        chunks are written (a source being embedded finishes at a later write)."""
        for group in batched(self.unwritten, self.limit):
            ids, vectors, texts, metadatas = (list(column) for column in zip(*group))
            self.collection.upsert(ids=ids, embeddings=vectors, documents=texts, metadatas=metadatas)
        self.unwritten.clear()
        for finish in self.unfinished:
            finish()
        self.unfinished.clear()

    def _check_dimension(self, dimension: int) -> None:
        if read_profile(self.collection).get("dimension") is None:
            write_profile(self.collection, {"dimension": dimension})
            self.collection = open_collection(self.settings, self.client)
        else:
            check_dimension(self.collection, dimension, str(self.profile["embedder"]))

    # --- pruning ---

    def prune(self, folders: list[str], missing: list[str], found: set[str]) -> None:
        """Remove sources under ``folders`` (or at ``missing`` paths) that this run did not find."""
        for root in [*folders, *missing]:
            gone = [entry for entry in self.record.entries(under=root) if entry.source not in found]
            for entry in gone:
                self._remove(entry)
            if root in missing and gone:
                self.pruned_inputs.append(root)

    def _remove(self, entry: SourceEntry) -> None:
        existing = chunks_of_source(self.collection, entry.source)
        if self.lexical is not None:
            self.lexical.mark_dirty()
        delete_chunks(self.collection, list(existing), self.limit)
        if self.lexical is not None:
            self.lexical.delete(list(self.lexical.ids(entry.source) | set(existing)))
            self.lexical.mark_clean()
        self.record.delete(entry.source)
        self.report.sources_deleted += 1
        self.report.chunks_deleted += len(existing)
        logger.info("removed %s (%d chunks)", entry.source, len(existing))


def _isolated(settings: Settings) -> bool:
    """Whether sources load in the child process (it needs POSIX pipes and rlimits)."""
    return settings.isolate_loaders and os.name == "posix"


# --- reading the index ---------------------------------------------------------------------------------


def list_sources(settings: Settings | None = None) -> list[SourceEntry]:
    """What the collection holds: one entry per source (chunks, title, when last ingested)."""
    return recorded_sources(settings or Settings())


def forget(sources: Iterable[str], settings: Settings | None = None) -> IndexReport:
    """Remove sources' chunks from the collection.

    Each item is a URL, a file path, or a folder (every source below it). Raises
    :class:`NotIndexed` if one matches nothing.
    """
    settings = settings or Settings()
    started = time.monotonic()
    report = IndexReport(store=store_location(settings), collection=settings.collection)
    with store_lock(settings, "rag forget"), open_record(settings) as record:
        client = open_client(settings)
        collection = open_collection(settings, client, create=False)
        limit = client.get_max_batch_size()
        lexical = open_lexical_for_writing(settings, collection, reindex=False) if collection is not None else None
        for item in sources:
            key = source_key(item)
            entries = record.entries(under=key)
            in_chroma = chunks_of_source(collection, key) if collection is not None else {}
            if not entries and not in_chroma:
                raise NotIndexed(f"not indexed in collection {settings.collection!r}: {key} (see `rag sources`)")
            targets = {entry.source for entry in entries} | ({key} if in_chroma else set())
            for source in sorted(targets):
                ids = list(chunks_of_source(collection, source)) if collection is not None else []
                if ids:
                    if lexical is not None:
                        lexical.mark_dirty()
                    delete_chunks(collection, ids, limit)
                if lexical is not None:
                    lexical.delete(list(lexical.ids(source) | set(ids)))
                    lexical.mark_clean()
                record.delete(source)
                report.sources_deleted += 1
                report.chunks_deleted += len(ids)
        if lexical is not None:
            lexical.close()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def __getattr__(name: str) -> Any:
    """``search`` and ``hit_to_dict`` are the retriever's (:mod:`rag.retrieval`), imported on first use:
    an ingest does without LangChain's runnables and tracers (a third of a second to import)."""
    if name in ("search", "hit_to_dict"):
        from rag import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["hit_to_dict", "IndexReport", "ingest", "search", "list_sources", "forget", "IncompatibleCollection", "RagError"]
