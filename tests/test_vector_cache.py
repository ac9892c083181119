"""The content-hash vector cache: identical texts embedded once per store folder, across sources and collections."""

from __future__ import annotations

import hashlib
from array import array

from rag.indexing import ingest
from rag.vector_cache import CACHE_FILE, VectorCache, embed_missing
from tests.test_indexing import CountingEmbeddings, paragraphs


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_vectors_round_trip_as_float32_per_embedder(tmp_path):
    vector = [0.1, -2.5, 3.0]
    with VectorCache.open(tmp_path, "model-a") as cache:
        cache.put({sha("hello"): vector})
        assert cache.get([sha("hello"), sha("other")]) == {sha("hello"): array("f", vector).tolist()}
        assert len(cache) == 1
    with VectorCache.open(tmp_path, "model-b") as other:  # another embedder's vectors mean something else
        assert other.get([sha("hello")]) == {}
    with VectorCache.open(tmp_path, "model-a") as again:  # kept on disk
        assert list(again.get([sha("hello")])) == [sha("hello")]


def test_many_lookups_in_one_call(tmp_path):
    digests = {sha(str(n)): [float(n)] for n in range(1200)}  # more than SQLite's host-parameter limit
    with VectorCache.open(tmp_path, "m") as cache:
        cache.put(digests)
        assert cache.get(digests) == digests


def test_embed_missing_embeds_only_what_is_not_cached(tmp_path):
    counting = CountingEmbeddings()
    texts = {sha(text): text for text in ("one", "two")}
    with VectorCache.open(tmp_path, "counting") as cache:
        first, computed = embed_missing(counting, texts, cache)
    assert computed == 2 == counting.texts
    with VectorCache.open(tmp_path, "counting") as cache:  # kept on disk
        second, computed = embed_missing(counting, {**texts, sha("three"): "three"}, cache)
    assert computed == 1 and counting.texts == 3
    assert {digest: second[digest] for digest in first} == first


def test_unusable_cache_only_costs_speed(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    counting = CountingEmbeddings()
    with VectorCache.open(blocked, "counting") as cache:
        vectors, computed = embed_missing(counting, {sha("x"): "x"}, cache)
    assert computed == 1 and len(vectors) == 1
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / CACHE_FILE).write_bytes(b"this is not an SQLite database" * 10)
    with VectorCache.open(tmp_path / "store", "counting") as cache:
        vectors, computed = embed_missing(counting, {sha("x"): "x"}, cache)
    assert computed == 1 and len(vectors) == 1


def test_identical_chunks_are_embedded_once_across_collections(settings, tmp_path):
    """A second collection in the same store folder, and a re-index, get their vectors from the cache."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(paragraphs("alpha", 3), encoding="utf-8")
    counting = CountingEmbeddings()
    first = ingest([folder], settings, counting)
    assert first.embedded == counting.texts == first.chunks_added == 3

    other = settings.with_overrides(collection="other")
    (folder / "b.md").write_text(paragraphs("beta", 2), encoding="utf-8")
    second = ingest([folder], other, counting)
    assert (second.chunks_added, second.embedded, second.reused_vectors) == (5, 2, 3)

    rebuilt = ingest([folder], settings, counting, reindex=True)
    assert (rebuilt.chunks_added, rebuilt.embedded) == (5, 0) and counting.texts == 5
