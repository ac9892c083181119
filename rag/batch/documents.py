"""A job's documents: found under its inputs (files, folders, URLs) or in a store, and loaded into chunks one by one.

Example::

    sources, failures, store_entries = find_sources(["notes/"], settings, from_store=False)
    loader = DocumentLoader(settings, store_entries)
    title, content_hash, content, chunks = loader.load(sources[0])
    loader.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag.batch.jobs import digest
from rag.batch.outputs import BatchFailure
from rag.errors import RagError
from rag.settings import Settings


def find_sources(inputs: Sequence[str], settings: Settings, from_store: bool) -> tuple[list[str], list[BatchFailure], dict]:
    """``(sources, inputs that failed, store entries by source)``; the entries only ``from_store``."""
    if from_store:
        entries = _store_entries(settings, inputs)
        return [entry.source for entry in entries], [], {entry.source: entry for entry in entries}
    from rag.sources import expand_inputs

    found = expand_inputs(inputs, settings.include, settings.exclude, settings.include_hidden)
    return found.sources, [BatchFailure(failure.source, "load", failure.reason) for failure in found.failures], {}


def _store_entries(settings: Settings, under: Sequence[str]) -> list:
    """The store's indexed sources, those under ``under`` if given; raises :class:`rag.store.EmptyStore`."""
    from rag.sources import source_key
    from rag.store import EmptyStore, open_collection, open_record, require_nonempty

    require_nonempty(open_collection(settings, create=False) if settings.store_path.is_dir() else None, settings)
    with open_record(settings) as record:
        if not under:
            entries = record.entries()
        else:
            entries = list({entry.source: entry for item in under for entry in record.entries(source_key(item))}.values())
    entries = sorted((entry for entry in entries if entry.state == "indexed"), key=lambda entry: entry.source)
    if not entries and under:
        raise EmptyStore(f"no indexed source of collection {settings.collection!r} is under {', '.join(under)}")
    if not entries:  # chunks, but no source finished indexing (an ingest was interrupted)
        raise EmptyStore(f"no source of collection {settings.collection!r} finished indexing: run `rag ingest PATH ...` again")
    return entries


class DocumentLoader:
    """Loads each source in turn (files and URLs in a limited child process, or from the store)."""

    def __init__(self, settings: Settings, store_entries: dict):
        self.settings = settings
        self.store_entries = store_entries
        self._collection = None
        self._isolated = None
        if not store_entries and settings.isolate_loaders:
            from rag.sources.process import IsolatedLoader

            self._isolated = IsolatedLoader(settings.source_timeout, settings.loader_memory_mb)

    def load(self, source: str) -> tuple[str, str, str, list[tuple[str, dict]]]:
        """``(title, content hash, content id for the key, chunks)``; raises :class:`RagError` with the reason."""
        if self.store_entries:
            return self._from_store(self.store_entries[source])
        from rag.sources import LoadOptions
        from rag.sources.process import LoadRequest, load_and_split

        request = LoadRequest(source, LoadOptions.from_settings(self.settings), self.settings.chunk_size, self.settings.chunk_overlap)
        outcome = self._isolated.load(request) if self._isolated else load_and_split(request)
        if outcome.status != "loaded":
            raise RagError(outcome.reason or f"not loaded ({outcome.status})")
        if not outcome.chunks:
            raise RagError("no text to summarize")
        return outcome.title or source, outcome.content_hash, outcome.content_hash, outcome.chunks

    def _from_store(self, entry: Any) -> tuple[str, str, str, list[tuple[str, dict]]]:
        if self._collection is None:
            from rag.store import open_collection

            self._collection = open_collection(self.settings, create=False)
        found = self._collection.get(where={"source": entry.source}, include=["documents", "metadatas"])
        pairs = [(text, dict(meta or {})) for text, meta in zip(found["documents"] or [], found["metadatas"] or [])]
        pairs.sort(key=lambda pair: (pair[1].get("page") or 0, pair[1].get("start_index") or 0))
        if not pairs:
            raise RagError("the store holds no chunks for this source: re-ingest it")
        content = digest([text for text, _ in pairs])  # the chunks as indexed: the store's splitter made them
        return entry.title or entry.source, entry.content_hash or content, content, pairs

    def abort(self) -> None:
        if self._isolated is not None:
            self._isolated.abort()

    def close(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
