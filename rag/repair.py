"""Rebuilding a collection whose vector index a killed process left damaged, from the sources its record lists.

Chroma saves a collection's HNSW index in place, ``header.bin`` first and then the data files,
so a process killed in between (``kill -9``, a power cut) leaves a header that promises more
vectors than the files hold, and Chroma then fails every read of that collection. The next
``rag ingest`` finds it (:func:`sources_to_rebuild`): it drops the collection and indexes every
source the record lists again, taking the vectors from the vector cache (nothing already
embedded is embedded again). A search before that gets :class:`VectorIndexDamaged`: one line
saying so and what to run (:func:`readable_count`).

Example::

    extra = sources_to_rebuild(settings, client, record)   # [] when the collection reads fine
"""

from __future__ import annotations

import logging
import os

from rag.errors import RagError
from rag.settings import Settings

logger = logging.getLogger(__name__)


class VectorIndexDamaged(RagError):
    """The collection's vector index files are damaged (a process killed while Chroma saved them); ``damage`` names the first."""

    def __init__(self, message: str, damage: str) -> None:
        super().__init__(message)
        self.damage = damage


def index_damage(settings: Settings) -> list[str]:
    """One line per damaged file of the collection's vector index in the store folder (none: intact, or no such index)."""
    from rag.store_check import CHROMA_FILE, hnsw_problems, vector_segments

    folder = settings.store_path
    if settings.chroma_url or not (folder / CHROMA_FILE).exists():
        return []
    lines = []
    for collection, segment, space, _ in vector_segments(folder):
        if collection == settings.collection and (folder / segment).is_dir():
            lines += [f"{folder / segment / name}: {problem}" for name, problem in hnsw_problems(folder / segment, space)]
    return lines


def readable_count(collection, settings: Settings, *, holding_lock: bool = False) -> int:
    """``collection.count()``; when Chroma fails on damaged index files, :class:`VectorIndexDamaged` (with the fix).

    A reader (``holding_lock`` off) whose read fails while an ingest is writing gets
    :class:`rag.store.StoreBusy` naming it instead: the files are then in the middle of a save.
    """
    from chromadb.errors import InternalError

    from rag.store import store_lock

    try:
        return collection.count()
    except InternalError as error:
        if settings.chroma_url:  # a server's index files are not ours to check
            raise
        if holding_lock:
            damage = index_damage(settings)
        else:
            with store_lock(settings, "rag search (vector index check)"):  # StoreBusy: an ingest is saving the index now
                damage = index_damage(settings)
        if not damage:
            raise
        raise VectorIndexDamaged(
            f"the vector index of collection {settings.collection!r} is damaged ({damage[0]}; a process was stopped while "
            f"Chroma saved it): run `rag ingest` again, which rebuilds it from the recorded sources",
            damage[0],
        ) from error


def sources_to_rebuild(settings: Settings, client, record) -> list[str]:
    """The sources ``record`` lists, when the collection's vector index is damaged and must be rebuilt; else ``[]``.

    Called by an ingest holding the store's lock, before it reads the collection. Recorded
    files that no longer exist are left out (their chunks go with the damaged index; the
    warning counts them). A Chroma error without damaged files is raised as it is.
    """
    from chromadb.errors import NotFoundError

    from rag.sources.expand import is_url

    if settings.chroma_url:
        return []
    try:
        readable_count(client.get_collection(settings.collection), settings, holding_lock=True)
        return []
    except NotFoundError:
        return []
    except VectorIndexDamaged as damaged:
        recorded = [entry.source for entry in record.entries()]
        sources = [source for source in recorded if is_url(source) or os.path.exists(source)]
        logger.warning(
            "the vector index of collection %r is damaged (%s): rebuilding it from its %d recorded sources, vectors from the cache%s",
            settings.collection, damaged.damage, len(sources),
            f" ({len(recorded) - len(sources)} recorded files no longer exist)" if len(sources) < len(recorded) else "",
        )  # fmt: skip
        return sources
