"""The store: collection profile, the record of sources, the write lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from rag.embed import embedder_id
from rag.store import (
    EmptyStore,
    IncompatibleCollection,
    SourceRecord,
    StoreBusy,
    check_profile,
    chunk_id,
    open_client,
    open_collection,
    open_store,
    read_profile,
    require_nonempty,
    query_nearest,
    store_lock,
    write_profile,
)

PROFILE = {"embedder": "Fake:384", "splitter": "recursive-v2", "chunk_size": 500, "chunk_overlap": 0}


def test_chunk_ids_are_stable_and_distinct():
    assert chunk_id("/a.md", "h1") == chunk_id("/a.md", "h1", 0)
    assert len({chunk_id("/a.md", "h1"), chunk_id("/a.md", "h1", 1), chunk_id("/b.md", "h1"), chunk_id("/a.md", "h2")}) == 4


def test_profile_is_recorded_and_mismatches_refused(settings):
    collection = open_collection(settings)
    check_profile(collection, PROFILE)  # new and empty: anything goes
    write_profile(collection, PROFILE)
    write_profile(collection, {"dimension": 384})
    reopened = open_collection(settings, open_client(settings))
    assert read_profile(reopened) == {**PROFILE, "dimension": 384}
    assert reopened.configuration_json["hnsw"]["space"] == "cosine"  # rewriting metadata keeps the distance
    check_profile(reopened, PROFILE)
    with pytest.raises(IncompatibleCollection, match=r"chunk_size 500 \(this ingest: 800\).*--reindex"):
        check_profile(reopened, {**PROFILE, "chunk_size": 800})
    with pytest.raises(IncompatibleCollection, match=r"embedder 'Fake:384' \(this search: 'Other:768'\).*--reindex"):
        check_profile(reopened, {"embedder": "Other:768"}, what="search")
    with pytest.raises(IncompatibleCollection, match=r"no embed_tokens \(an older version built it; this ingest: 48\).*--reindex"):
        check_profile(reopened, {**PROFILE, "embed_tokens": 48})


def test_a_collection_from_before_embedder_identities_is_refused(settings):
    collection = open_collection(settings)
    write_profile(collection, {**PROFILE, "embedder": "NFCEmbeddings"})
    collection.add(ids=["x"], embeddings=[[1.0, 0.0]], documents=["old"])
    for what in ("search", "ingest"):
        with pytest.raises(IncompatibleCollection, match="older version that did not record which embedding model.*rag ingest --reindex"):
            check_profile(collection, {"embedder": "NFCEmbeddings"}, what=what)


def test_unprofiled_collection_with_chunks_is_refused(settings):
    collection = open_collection(settings)
    collection.add(ids=["x"], embeddings=[[1.0, 0.0]], documents=["old"])
    with pytest.raises(IncompatibleCollection, match="no record of the embedder.*--reindex"):
        check_profile(collection, PROFILE)


def test_open_store_refuses_another_embedder(settings, fake_embeddings):
    collection = open_collection(settings)
    write_profile(collection, {"embedder": "SomethingElse:768"})
    with pytest.raises(IncompatibleCollection, match="SomethingElse:768"):
        open_store(settings, fake_embeddings)


def add_chunks(collection, texts: list[str], embeddings, hashes: list[str] | None = None) -> None:
    collection.add(
        ids=[f"id{n}" for n in range(len(texts))],
        embeddings=embeddings.embed_documents(texts),
        documents=texts,
        metadatas=[{"source": f"/doc{n}.md", "chunk_hash": digest} for n, digest in enumerate(hashes or texts)],
    )


def test_a_query_vector_of_another_dimension_is_refused_in_one_line(settings, fake_embeddings):
    recorded, unrecorded = open_collection(settings), open_collection(settings.with_overrides(collection="bare"))
    write_profile(recorded, {"dimension": 384})
    for collection in (recorded, unrecorded):
        add_chunks(collection, ["alpha", "beta"], fake_embeddings)
    smaller = DeterministicFakeEmbedding(size=32)
    with pytest.raises(IncompatibleCollection, match=r"holds 384-dimensional vectors but the embedder 'DeterministicFakeEmbedding:32' makes 32-dimensional.*--reindex"):
        query_nearest(recorded, smaller.embed_query("alpha"), 2, embedder_id(smaller))
    with pytest.raises(IncompatibleCollection, match=r"holds vectors of another dimension but .* makes 32-dimensional"):
        query_nearest(unrecorded, smaller.embed_query("alpha"), 2, embedder_id(smaller))


def test_empty_store_says_what_to_do(settings, fake_embeddings):
    with pytest.raises(EmptyStore, match="rag ingest"):
        require_nonempty(open_store(settings, fake_embeddings), settings)


def test_bad_collection_names_are_explained(settings):
    with pytest.raises(Exception, match="bad collection name 'x'"):
        open_collection(settings.with_overrides(collection="x"))


def test_source_record_pending_then_indexed(settings):
    with SourceRecord(settings) as record:
        record.mark_pending("/a.md")
        assert record.get("/a.md").state == "pending" and record.get("/a.md").content_hash is None
        record.mark_indexed("/a.md", chunks=3, title="A", kind="markdown", content_hash="h", pipeline="p", changed=True)
        entry = record.get("/a.md")
        assert (entry.state, entry.chunks, entry.content_hash) == ("indexed", 3, "h")
        record.mark_pending("/a.md")  # a rewrite starts: the old hash stays until it ends
        assert (record.get("/a.md").state, record.get("/a.md").content_hash) == ("pending", "h")
        record.mark_pending("/dir/b.md")
        record.mark_pending("/dir2/c.md")
        assert [entry.source for entry in record.entries(under="/dir")] == ["/dir/b.md"]
    other = settings.with_overrides(collection="other")
    with SourceRecord(other) as record:
        assert record.entries() == []


def test_second_writer_is_refused_with_the_holder_named(settings):
    with store_lock(settings, "rag ingest"):
        with pytest.raises(StoreBusy, match=rf"being written by rag ingest \(pid {os.getpid()} on .*wait for it"):
            with store_lock(settings, "rag forget"):
                pass
    with store_lock(settings, "rag ingest"):  # released
        pass


def test_lock_of_a_killed_holder_is_released(settings):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom rag.settings import Settings\nfrom rag.store import store_lock\n"
         f"with store_lock(Settings(data_dir={str(settings.data_dir)!r}), 'holder'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match=f"holder \\(pid {holder.pid} "):
            with store_lock(settings, "test"):
                pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with store_lock(settings, "test"):
                break
        except StoreBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_record_file_from_before_validators_gets_their_columns(settings):
    """Record files written before ETag/Last-Modified were kept open as before, their entries intact."""
    import sqlite3

    from rag.store import RECORD_FILE

    settings.store_path.mkdir(parents=True)
    old = sqlite3.connect(settings.store_path / RECORD_FILE)
    old.execute(
        "CREATE TABLE sources (collection TEXT NOT NULL, source TEXT NOT NULL, state TEXT NOT NULL, chunks INTEGER NOT NULL DEFAULT 0,"
        " title TEXT, kind TEXT, content_hash TEXT, pipeline TEXT, ingested_at TEXT, checked_at TEXT, PRIMARY KEY (collection, source))"
    )
    old.execute("INSERT INTO sources VALUES ('default', 'http://example.org/a', 'indexed', 3, 'A', 'html', 'abc', 'p', 't', 't')")
    old.commit()
    old.close()
    with SourceRecord(settings) as record:
        entry = record.get("http://example.org/a")
        assert (entry.chunks, entry.content_hash, entry.validators) == (3, "abc", None)
        record.mark_checked("http://example.org/a", ('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT"))
        assert record.get("http://example.org/a").validators == ('"e1"', "Tue, 01 Dec 2026 10:00:00 GMT")
        record.mark_indexed("http://example.org/a", chunks=4, title="A", kind="html", content_hash="def", pipeline="p", changed=True)
        assert record.get("http://example.org/a").validators is None  # a server that stopped sending them


# --- a Chroma server instead of the folder (the server itself: tests/test_chroma_server.py) ---------


def test_the_folder_store_keeps_its_record_and_location(settings):
    from rag.store import open_record, recorded_sources, store_location

    assert store_location(settings) == str(settings.store_path) and recorded_sources(settings) == []
    with open_record(settings) as record:
        assert isinstance(record, SourceRecord)
    remote = settings.with_overrides(chroma_url="http://127.0.0.1:8000")
    assert store_location(remote) == "http://127.0.0.1:8000"


@pytest.mark.parametrize("name", ["rag-sources", "rag-locks"])
def test_the_bookkeeping_collections_of_a_server_are_not_for_chunks(settings, name):
    from rag.errors import RagError

    with pytest.raises(RagError, match="rag's bookkeeping on a Chroma server: choose another --collection"):
        open_collection(settings.with_overrides(chroma_url="http://127.0.0.1:8000", collection=name))
    open_collection(settings.with_overrides(collection=name))  # in a folder it is an ordinary name
