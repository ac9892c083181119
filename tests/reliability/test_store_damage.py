"""A store with a truncated or garbage file: `rag doctor` names it without crashing, `rag ingest --reindex` rebuilds it.

The store is real (Chroma on disk, the source record, the lexical index, the vector cache) and
built with a fake embedder; its collection lowers Chroma's index sync threshold to 20 so that some
50 chunks put an HNSW index on disk (a default store gets there past 1,000 chunks). Each case
damages one file of a copy: cut to half the bytes a reader uses, or 4 KB (at most a third) of seeded
random bytes written a third of the way into them (into a page in use, in an SQLite file). Nothing
here opens a damaged store with Chroma in the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rag.doctor import check_store, store_fix
from rag.lexical import LEXICAL_FILE, LexicalIndex
from rag.settings import Settings
from rag.store import RECORD_FILE
from rag.store_check import CHROMA_FILE, HNSW_HEADER, HnswHeader, inspect_store, probe_collections, vector_segments
from rag.vector_cache import CACHE_FILE
from tests.conftest import REPO_ROOT
from tests.reliability.fake_rag import AnnouncingEmbeddings
from tests.test_indexing import paragraphs

pytestmark = pytest.mark.integration

INDEX_FILES = ["header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"]
STORE_FILES = [CHROMA_FILE, RECORD_FILE, LEXICAL_FILE, CACHE_FILE]


def build_store(store: Path, corpus: Path, collection: str = "default") -> int:
    """Ingest ``corpus`` into ``collection`` of ``store`` with the fake embedder, the collection's index synced to disk every 20 chunks."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from rag.indexing import ingest

    client = chromadb.PersistentClient(path=str(store), settings=ChromaSettings(anonymized_telemetry=False))
    client.create_collection(collection, metadata={"hnsw:space": "cosine", "hnsw:sync_threshold": 20, "hnsw:batch_size": 10})
    settings = Settings(store_dir=store, data_dir=store.parent, collection=collection, isolate_loaders=False)
    report = ingest([str(corpus)], settings, AnnouncingEmbeddings())
    assert report.chunks == report.added > 40  # well past the sync threshold: the index is on disk
    return report.chunks


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, Path, int]:
    """(store, corpus, chunks): collection ``default``, its index on disk."""
    root = tmp_path_factory.mktemp("store-damage")
    corpus = root / "corpus"
    corpus.mkdir()
    for number in range(8):
        (corpus / f"note-{number}.txt").write_text(paragraphs(f"Note {number} on harbour lights", 30))
    chunks = build_store(root / "store", corpus)
    assert not inspect_store(root / "store", probe=False).damage
    return root / "store", corpus, chunks


def copy_of(pristine: tuple[Path, Path, int], tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(pristine[0], store)
    return store


def index_folder(store: Path, collection: str = "default") -> Path:
    return store / next(segment for name, segment, _, _ in vector_segments(store) if name == collection)


def damage(path: Path, how: str) -> None:
    """Cut ``path`` to half the bytes a reader uses, or write seeded random bytes (at most 4 KB) a third of the way into them."""
    size = used_bytes(path)
    if how == "truncated":
        with path.open("r+b") as file:
            file.truncate(size // 2)
        return
    noise = random.Random(f"{path.name}-{how}").randbytes(max(16, min(4096, size // 3)))
    with path.open("r+b") as file:
        file.seek(a_third_in(path, size))
        file.write(noise)


def a_third_in(path: Path, size: int) -> int:
    """A third of the way into ``size`` bytes; in an SQLite file, the start of the page a third of the way through its
    table and index pages (a third of the bytes can be a free page, which holds nothing to damage)."""
    if path.suffix != ".sqlite3":
        return size // 3
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = sorted(number for (number,) in db.execute("SELECT pageno FROM dbstat WHERE pagetype IN ('internal', 'leaf')"))
    return (pages[len(pages) // 3] - 1) * page_size


def used_bytes(path: Path) -> int:
    """The bytes of ``path`` a reader uses: past them an HNSW file holds room for elements not yet added."""
    if path.name not in ("data_level0.bin", "length.bin"):
        return path.stat().st_size
    header = HnswHeader(*HNSW_HEADER.unpack((path.parent / "header.bin").read_bytes()))
    return header.count * (header.element_size if path.name == "data_level0.bin" else 4)


def damaged_file(store: Path, name: str) -> Path:
    return (index_folder(store) / name) if name in INDEX_FILES else store / name


def run(*command: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout, check=False)


# --- rag doctor -------------------------------------------------------------------------------------


# SQLite's own checks of truncated and garbage files are covered in tests/test_store_check.py: rag's files once each here.
DOCTOR_CASES = [(name, how) for name in [*INDEX_FILES, CHROMA_FILE] for how in ("truncated", "garbage")]
DOCTOR_CASES += [(name, "garbage") for name in (RECORD_FILE, LEXICAL_FILE, CACHE_FILE)]


@pytest.mark.parametrize(("name", "how"), DOCTOR_CASES, ids=[f"{name}-{how}" for name, how in DOCTOR_CASES])
def test_doctor_names_the_damaged_file_and_the_rebuild(pristine, tmp_path, name, how):
    store = copy_of(pristine, tmp_path)
    target = damaged_file(store, name)
    damage(target, how)
    checks = check_store(Settings(store_dir=store))
    failed = [check for check in checks if not check.ok]
    assert len(failed) == 1, [check.detail for check in checks]
    assert failed[0].name == "store" and failed[0].detail.startswith(f"{target}: ") and failed[0].required
    assert f"rag ingest SOURCES --store {store}" in failed[0].fix and "--reindex" in failed[0].fix


def wild_neighbours(index: Path) -> None:
    """Point every element's level-0 neighbours far outside the index: Chroma reading it segfaults."""
    header = HnswHeader(*HNSW_HEADER.unpack((index / "header.bin").read_bytes()))
    data = bytearray((index / "data_level0.bin").read_bytes())
    for element in range(header.count):
        start = element * header.element_size
        data[start : start + header.vector_offset] = struct.pack(f"<I{header.max_m0}I", header.max_m0, *[0x7FFFFFFF] * header.max_m0)
    (index / "data_level0.bin").write_bytes(bytes(data))


def test_a_reader_that_crashes_on_a_damaged_index_is_reported_not_fatal(pristine, tmp_path):
    """Neighbour ids beyond the index segfault Chroma: the child process reading it dies, the doctor says which collection."""
    store = copy_of(pristine, tmp_path)
    wild_neighbours(index_folder(store))
    health = inspect_store(store, probe=False)
    assert [problem.path.name for problem in health.damage] == ["data_level0.bin"]
    assert health.damage[0].problem.startswith("garbage: a neighbour id beyond the"), health.damage
    health.damage.clear()
    probe_collections(health, ["default"])  # what reading it would do without the file checks first
    [crash] = health.damage
    assert crash.collection == "default" and crash.problem == "reading it crashed (SIGSEGV): its vector index is damaged", crash
    print(crash.describe())


def test_rag_doctor_prints_one_line_per_problem_and_no_traceback(pristine, tmp_path):
    store = copy_of(pristine, tmp_path)
    damage(index_folder(store) / "header.bin", "truncated")
    damage(store / LEXICAL_FILE, "garbage")
    done = run("-m", "rag", "doctor", "--store", str(store))
    assert done.returncode == 1, done.stdout + done.stderr
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL store: ")]
    assert len(failures) == 2, done.stdout
    assert any(str(index_folder(store) / "header.bin") in line and "truncated" in line for line in failures)
    assert any(str(store / LEXICAL_FILE) in line for line in failures)
    assert done.stdout.count(f"fix: rebuild from your sources: rag ingest SOURCES --store {store}") == 2
    assert "Traceback" not in done.stdout + done.stderr


def test_a_damaged_second_collection_is_named_in_its_fix_and_the_first_still_reads(pristine, tmp_path):
    store = copy_of(pristine, tmp_path)
    build_store(store, pristine[1], collection="notes")
    damage(index_folder(store, "notes") / "data_level0.bin", "garbage")
    health = inspect_store(store)
    assert [(problem.collection, problem.path.name) for problem in health.damage] == [("notes", "data_level0.bin")]
    assert store_fix(health.damage[0], store) == f"rebuild from your sources: rag ingest SOURCES --store {store} --collection notes --reindex"
    assert health.counts == {"default": pristine[2]}


# --- rag ingest --reindex ------------------------------------------------------------------------------


REBUILDS = {
    "index-and-rag-files": [("data_level0.bin", "garbage"), (RECORD_FILE, "garbage"), (LEXICAL_FILE, "truncated"), (CACHE_FILE, "garbage")],
    "chroma-database": [(CHROMA_FILE, "garbage")],
}


@pytest.mark.parametrize("damages", REBUILDS.values(), ids=REBUILDS.keys())
def test_reindex_rebuilds_the_store_from_its_sources(pristine, tmp_path, damages):
    store = copy_of(pristine, tmp_path)
    for name, how in damages:
        damage(damaged_file(store, name), how)
    assert inspect_store(store, probe=False).damage
    done = run("-m", "tests.reliability.fake_rag", "ingest", str(pristine[1]), "--store", str(store), "--reindex", "--json", env={"RAG_ISOLATE_LOADERS": "false"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["reindexed"] and report["chunks"] == pristine[2] and "Traceback" not in done.stderr
    set_aside = [line for line in done.stderr.splitlines() if "set aside" in line]
    assert len(set_aside) == len([name for name, _ in damages if name in STORE_FILES]) + (CHROMA_FILE in dict(damages)) * 2, done.stderr
    health = inspect_store(store)  # Chroma counts and queries it in the child process
    assert health.counts == {"default": pristine[2]} and not health.damage, health
    with LexicalIndex(store, "default") as lexical:  # SQLite only: safe to read here
        assert lexical.count() == pristine[2] and lexical.search("Note 3 paragraph 7", 1)
