"""rag.store_check on hand-made files: the HNSW header, pickle and SQLite checks, and what --reindex sets aside (fast tier).

A real store damaged file by file, and the child process that reads it, are in tests/reliability/test_store_damage.py.
"""

from __future__ import annotations

import pickle
import sqlite3
import struct
from pathlib import Path

import pytest

from rag.store_check import CHROMA_FILE, HNSW_HEADER, hnsw_problems, inspect_store, pickle_problem, set_aside_damage, sqlite_problem

SEGMENT = "0f8e2a51-3c1d-4e7b-9a6f-2b4c8d0e1f23"


def header(count: int, dimension: int = 4, m: int = 16, max_elements: int = 100, **changes) -> bytes:
    """A plausible chroma-hnswlib header.bin (``changes`` overrides fields by name)."""
    vector_offset = 4 + 4 * 2 * m
    fields = {
        "version": 1, "offset_level0": 0, "max_elements": max_elements, "count": count,
        "element_size": vector_offset + 4 * dimension + 8, "label_offset": vector_offset + 4 * dimension,
        "vector_offset": vector_offset, "max_level": 0 if count else -1, "entry_point": 0 if count else 0xFFFFFFFF,
        "max_m": m, "max_m0": 2 * m, "m": m, "mult": 0.36, "ef_construction": 100,
    }  # fmt: skip
    fields.update(changes)
    return HNSW_HEADER.pack(*fields.values())


def write_index(folder: Path, count: int, vectors: list[list[float]] | None = None, **changes) -> Path:
    """An HNSW index folder of ``count`` unit vectors of dimension 4, no neighbours, no upper levels."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "header.bin").write_bytes(header(count, **changes))
    vectors = vectors or [[1.0, 0.0, 0.0, 0.0]] * count
    records = b"".join(struct.pack("<I", 0) + bytes(4 * 32) + struct.pack("<4f", *vector) + struct.pack("<Q", label + 1) for label, vector in enumerate(vectors))
    (folder / "data_level0.bin").write_bytes(records)
    (folder / "length.bin").write_bytes(struct.pack(f"<{count}f", *[1.0] * count))
    (folder / "link_lists.bin").write_bytes(bytes(4 * count))
    (folder / "index_metadata.pickle").write_bytes(pickle.dumps({"id_to_label": {f"id{n}": n + 1 for n in range(count)}}))
    return folder


def test_a_consistent_index_has_no_problems(tmp_path):
    assert hnsw_problems(write_index(tmp_path / SEGMENT, 3), "cosine") == []
    assert hnsw_problems(write_index(tmp_path / "empty", 0), "cosine") == []


@pytest.mark.parametrize(
    ("breaks", "file", "problem"),
    [
        (lambda index: (index / "header.bin").write_bytes(header(3)[:60]), "header.bin", "truncated: 60 bytes, not 100"),
        (lambda index: (index / "header.bin").write_bytes(header(3, m=7, max_m=9)), "header.bin", "garbage: M 7, maxM 9"),
        (lambda index: (index / "header.bin").write_bytes(header(3, entry_point=77)), "header.bin", "garbage: entry point 77"),
        (lambda index: (index / "data_level0.bin").write_bytes((index / "data_level0.bin").read_bytes()[:100]), "data_level0.bin", "truncated"),
        (lambda index: (index / "length.bin").write_bytes(struct.pack("<3f", 1.0, -2.0, 1.0)), "length.bin", "negative, NaN or infinite"),
        (lambda index: (index / "link_lists.bin").write_bytes(bytes(10)), "link_lists.bin", "truncated"),
        (lambda index: (index / "link_lists.bin").write_bytes(struct.pack("<3I", 0, 5, 0)), "link_lists.bin", "claims 5 bytes"),
        (lambda index: (index / "index_metadata.pickle").write_bytes(pickle.dumps(list(range(50)))[:-9]), "index_metadata.pickle", "not a whole pickle"),
        (lambda index: (index / "index_metadata.pickle").unlink(), "index_metadata.pickle", "missing"),
    ],
    ids=["header-cut", "header-m", "header-entry", "level0-cut", "norm-negative", "links-cut", "links-size", "pickle-cut", "pickle-gone"],
)
def test_each_damaged_file_is_named_with_its_problem(tmp_path, breaks, file, problem):
    index = write_index(tmp_path / SEGMENT, 3)
    breaks(index)
    problems = hnsw_problems(index, "cosine")
    assert len(problems) == 1 and problems[0][0] == file and problem in problems[0][1], problems


def test_level0_contents_are_checked_against_the_header(tmp_path):
    assert "not of length 1" in hnsw_problems(write_index(tmp_path / "a", 2, [[1.0, 0, 0, 0], [3.0, 0, 0, 0]]), "cosine")[0][1]
    assert hnsw_problems(write_index(tmp_path / "b", 2, [[1.0, 0, 0, 0], [3.0, 0, 0, 0]]), "l2") == []  # only a cosine index is normalised
    assert "NaN or infinity" in hnsw_problems(write_index(tmp_path / "c", 1, [[float("nan"), 0, 0, 0]]), "l2")[0][1]
    index = write_index(tmp_path / "d", 2)
    records = bytearray((index / "data_level0.bin").read_bytes())
    records[0:2] = struct.pack("<H", 1)
    records[4:8] = struct.pack("<I", 9)  # a neighbour beyond the 2 elements
    (index / "data_level0.bin").write_bytes(bytes(records))
    assert "neighbour id beyond" in hnsw_problems(index, "cosine")[0][1]


def test_pickles_are_walked_never_loaded():
    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    assert pickle_problem(pickle.dumps(Boom())) is None  # a whole pickle, whatever it would do if loaded
    assert "bytes after the pickle's end" in pickle_problem(pickle.dumps(1) + b"junk")


def sqlite_file(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(2000)])
    db.commit()
    db.close()
    return path


def test_sqlite_files_intact_damaged_or_not_databases(tmp_path):
    path = sqlite_file(tmp_path / "a.sqlite3")
    assert sqlite_problem(path) is None
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "malformed" in sqlite_problem(path)
    (tmp_path / "b.sqlite3").write_bytes(b"not a database at all" * 300)
    assert "not a readable SQLite database" in sqlite_problem(tmp_path / "b.sqlite3")
    assert not list(tmp_path.glob("*-wal")) and not list(tmp_path.glob("*-shm"))  # checking leaves nothing behind


def test_a_damaged_chroma_database_is_reported_alone(tmp_path):
    (tmp_path / CHROMA_FILE).write_bytes(b"\x00garbage" * 1000)
    health = inspect_store(tmp_path)
    assert [damage.path.name for damage in health.damage] == [CHROMA_FILE] and health.damage[0].collection is None
    assert not inspect_store(tmp_path / "elsewhere").exists


def test_reindex_sets_aside_damaged_files_and_with_the_chroma_database_its_indexes_and_record(tmp_path):
    from rag.store import RECORD_FILE

    (tmp_path / CHROMA_FILE).write_bytes(b"garbage" * 1000)
    write_index(tmp_path / SEGMENT, 1)
    db = sqlite3.connect(tmp_path / RECORD_FILE)
    db.execute("CREATE TABLE sources (collection TEXT, source TEXT)")
    db.executemany("INSERT INTO sources VALUES (?, ?)", [("default", "a.md"), ("notes", "b.md")])
    db.commit()
    db.close()
    (tmp_path / "not-an-index").mkdir()
    lines = set_aside_damage(tmp_path, "default")
    aside = next(tmp_path.glob("damaged-*"))
    assert sorted(path.name for path in aside.iterdir()) == sorted([CHROMA_FILE, RECORD_FILE, SEGMENT])
    assert (tmp_path / "not-an-index").is_dir()
    assert lines[-1] == "collections notes were in the damaged Chroma database: ingest them again with --collection NAME"
    assert set_aside_damage(tmp_path, "default") == []  # nothing damaged is left
