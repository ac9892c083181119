"""Damage in a store folder, found without risking the process, and set aside for ``rag ingest --reindex``.

A damaged HNSW file can crash the process that loads it (a truncated ``header.bin``
segfaults Chroma) or, worse, go unnoticed (a truncated ``data_level0.bin`` still answers).
So :func:`inspect_store` reads the files itself first: each SQLite file with ``PRAGMA
quick_check``, each collection's HNSW files against their own header (sizes, neighbour ids,
vectors, norms) and ``index_metadata.pickle`` opcode by opcode (never unpickled). Then a
child process opens the store with Chroma and counts and queries every collection not
already found damaged; a crash or hang there is reported too. :func:`set_aside_damage`
moves damaged SQLite files out of the way, so ``--reindex`` can rebuild what Chroma
could not even open (a damaged collection index it drops by itself).

Example::

    from rag.store_check import inspect_store
    health = inspect_store(settings.store_path)
    for damage in health.damage:
        print(damage.describe())
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pickletools
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rag.lexical import LEXICAL_FILE
from rag.store import RECORD_FILE
from rag.vector_cache import CACHE_FILE

logger = logging.getLogger(__name__)

CHROMA_FILE = "chroma.sqlite3"
SQLITE_FILES = {
    CHROMA_FILE: "the Chroma database",
    RECORD_FILE: "the source record",
    LEXICAL_FILE: "the lexical index",
    CACHE_FILE: "the vector cache",
}
HNSW_HEADER = struct.Struct("<iQQQQQQiIQQQdQ")  # chroma-hnswlib's header.bin: 100 bytes, packed
PROBE_SECONDS = 120.0


@dataclass(frozen=True)
class StoreDamage:
    """One damaged file (or index folder) of a store, and what it belongs to."""

    path: Path
    what: str
    problem: str
    collection: str | None = None  # the one collection it belongs to; None: the store as a whole

    def describe(self) -> str:
        """One line: the path, what it is, what is wrong with it."""
        return f"{self.path}: {self.what}: {self.problem}"


@dataclass
class StoreHealth:
    """What :func:`inspect_store` found: each collection's chunk count (when Chroma could read it) and the damage."""

    folder: Path
    counts: dict[str, int] = field(default_factory=dict)
    damage: list[StoreDamage] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        """Whether there is a store here at all (its Chroma database)."""
        return (self.folder / CHROMA_FILE).exists()


# --- SQLite files -------------------------------------------------------------------------------------


def sqlite_problem(path: Path) -> str | None:
    """What ``PRAGMA quick_check`` finds wrong with the SQLite file at ``path`` (``None``: intact)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as error:
        return f"cannot be opened: {error}"
    try:
        rows = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as error:
        return f"not a readable SQLite database: {error}"
    finally:
        db.close()
    return None if rows == ["ok"] else "SQLite finds it damaged: " + " ".join(" ".join(rows).split())[:300]


def vector_segments(folder: Path) -> list[tuple[str, str, str | None, int]]:
    """(collection, index folder name, distance space, persisted vectors) of each collection, from an intact Chroma database."""
    db = sqlite3.connect(f"file:{folder / CHROMA_FILE}?mode=rw", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT c.name, s.id, c.schema_str, COALESCE(m.seq_id, 0) FROM collections c JOIN segments s ON s.collection = c.id"
            " LEFT JOIN max_seq_id m ON m.segment_id = s.id WHERE s.scope = 'VECTOR' ORDER BY c.name"
        ).fetchall()
    finally:
        db.close()
    return [(name, segment, distance_space(schema), int(seq) if isinstance(seq, int) else 1) for name, segment, schema, seq in rows]


def distance_space(schema: str | None) -> str | None:
    """The collection's distance (``cosine``, ``l2``, ``ip``) as its Chroma schema records it."""
    try:
        return json.loads(schema or "{}")["keys"]["#embedding"]["float_list"]["vector_index"]["config"]["space"]
    except (ValueError, KeyError, TypeError):
        return None


# --- HNSW files ---------------------------------------------------------------------------------------


def hnsw_problems(index: Path, space: str | None) -> list[tuple[str, str]]:
    """(file name, problem) for each damaged file of one HNSW index folder, checked against ``header.bin``."""
    header_path = index / "header.bin"
    if not header_path.exists():
        return [("header.bin", "missing")]
    raw = header_path.read_bytes()
    if len(raw) != HNSW_HEADER.size:
        return [("header.bin", f"{'truncated' if len(raw) < HNSW_HEADER.size else 'too long'}: {len(raw)} bytes, not {HNSW_HEADER.size}")]
    header = HnswHeader(*HNSW_HEADER.unpack(raw))
    wrong = header.inconsistency()
    if wrong:
        return [("header.bin", f"garbage: {wrong}")]
    problems = []
    for name, check in (("data_level0.bin", level0_problem), ("length.bin", norms_problem), ("link_lists.bin", links_problem)):
        path = index / name
        problem = "missing" if not path.exists() else check(path, header, space)
        if problem:
            problems.append((name, problem))
    pickled = index / "index_metadata.pickle"
    if header.count and not pickled.exists():
        problems.append((pickled.name, "missing"))
    elif pickled.exists() and (problem := pickle_problem(pickled.read_bytes())):
        problems.append((pickled.name, problem))
    return problems


@dataclass(frozen=True)
class HnswHeader:
    """The fields of ``header.bin``: element count and sizes, the offsets inside an element's level-0 record, M."""

    version: int
    offset_level0: int
    max_elements: int
    count: int
    element_size: int
    label_offset: int
    vector_offset: int
    max_level: int
    entry_point: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int

    def inconsistency(self) -> str | None:
        """What makes this header impossible for an HNSW index (``None``: plausible)."""
        checks = [
            (self.version == 1 and self.offset_level0 == 0, f"version {self.version}, level-0 offset {self.offset_level0}"),
            (0 < self.m <= 4096 and self.max_m == self.m and self.max_m0 == 2 * self.m, f"M {self.m}, maxM {self.max_m}, maxM0 {self.max_m0}"),
            (self.vector_offset == 4 + 4 * self.max_m0, f"vector offset {self.vector_offset}"),
            (self.label_offset == self.element_size - 8 and self.label_offset > self.vector_offset, f"label offset {self.label_offset}"),
            ((self.label_offset - self.vector_offset) % 4 == 0, "a vector size that is not whole floats"),
            (self.count <= self.max_elements <= 2**40, f"{self.count} elements of at most {self.max_elements}"),
            (self.count == 0 or (self.entry_point < self.count and 0 <= self.max_level < 64), f"entry point {self.entry_point}, top level {self.max_level}"),
        ]
        return next((why for ok, why in checks if not ok), None)


def level0_problem(path: Path, header: HnswHeader, space: str | None, batch: int = 16384) -> str | None:
    """Size, neighbour ids, labels and vectors of the level-0 file (one fixed-size record per element), read in batches."""
    import numpy as np

    needed = header.count * header.element_size
    size = path.stat().st_size
    if size < needed:
        return f"truncated: {size} bytes, {header.count} elements need {needed}"
    if not header.count:
        return None
    data = np.memmap(path, dtype=np.uint8, mode="r", shape=(header.count, header.element_size))
    labels = []
    for start in range(0, header.count, batch):
        records = np.array(data[start : start + batch])
        counts = records[:, 0:2].copy().view(np.uint16).ravel()
        if (counts > header.max_m0).any():
            return f"garbage: an element lists more than {header.max_m0} neighbours"
        neighbours = records[:, 4 : header.vector_offset].copy().view(np.uint32)
        if (neighbours[np.arange(header.max_m0)[None, :] < counts[:, None]] >= header.count).any():
            return f"garbage: a neighbour id beyond the {header.count} elements"
        vectors = records[:, header.vector_offset : header.label_offset].copy().view(np.float32)
        if not np.isfinite(vectors).all():
            return "garbage: a vector holds NaN or infinity"
        live = (records[:, 2] & 1) == 0  # hnswlib's delete mark
        if space == "cosine" and live.any() and (np.abs(np.linalg.norm(vectors[live], axis=1) - 1) > 1e-2).any():
            return "garbage: a vector of a cosine index is not of length 1"
        labels.append(records[:, header.label_offset :].copy().view(np.uint64).ravel())
    every = np.concatenate(labels)
    if len(np.unique(every)) != len(every):
        return "garbage: two elements carry the same label"
    return None


def norms_problem(path: Path, header: HnswHeader, space: str | None) -> str | None:
    """``length.bin``: one float32 (the vector's length before normalising) per element."""
    import numpy as np

    raw = path.read_bytes()
    if len(raw) < 4 * header.count:
        return f"truncated: {len(raw)} bytes, {header.count} elements need {4 * header.count}"
    norms = np.frombuffer(raw, dtype=np.float32, count=header.count)
    if not (np.isfinite(norms) & (norms >= 0)).all():
        return "garbage: a vector length that is negative, NaN or infinite"
    return None


def links_problem(path: Path, header: HnswHeader, space: str | None) -> str | None:
    """``link_lists.bin``: per element, a byte count then its upper-level neighbour lists; it must end exactly at the last."""
    raw = path.read_bytes()
    block = 4 + 4 * header.max_m
    position = 0
    for element in range(header.count):
        if position + 4 > len(raw):
            return f"truncated: {len(raw)} bytes, ends inside element {element} of {header.count}"
        (size,) = struct.unpack_from("<I", raw, position)
        position += 4
        if size % block or size // block > max(header.max_level, 0):
            return f"garbage: element {element} claims {size} bytes of upper-level links"
        if position + size > len(raw):
            return f"truncated: {len(raw)} bytes, ends inside element {element} of {header.count}"
        for start in range(position, position + size, block):
            count, *ids = struct.unpack_from(f"<{block // 4}I", raw, start)
            if (count & 0xFFFF) > header.max_m or any(id_ >= header.count for id_ in ids[: count & 0xFFFF]):
                return f"garbage: element {element} links to neighbours that do not exist"
        position += size
    if position != len(raw):
        return f"garbage: {len(raw) - position} bytes after the last element's links"
    return None


def pickle_problem(raw: bytes) -> str | None:
    """Whether ``index_metadata.pickle`` is one whole pickle (walked opcode by opcode, never loaded)."""
    try:
        end = 0
        for opcode, _, position in pickletools.genops(raw):
            end = position
            if opcode.name == "STOP":
                break
        else:
            return "truncated: the pickle has no end"
    except Exception as error:  # pickletools raises ValueError, struct.error, UnicodeDecodeError, ... on bad bytes
        return f"not a whole pickle (truncated or garbage): {type(error).__name__}: {error}"
    return None if end + 1 == len(raw) else f"garbage: {len(raw) - end - 1} bytes after the pickle's end"


# --- the store ----------------------------------------------------------------------------------------


def inspect_store(folder: Path, probe: bool = True) -> StoreHealth:
    """Every damaged file of the store at ``folder``; with ``probe``, also what Chroma meets reading it in a child process."""
    health = StoreHealth(Path(folder))
    if not health.exists:
        return health
    for name, what in SQLITE_FILES.items():
        path = health.folder / name
        if path.exists() and (problem := sqlite_problem(path)):
            health.damage.append(StoreDamage(path, what, problem))
    if any(damage.path.name == CHROMA_FILE for damage in health.damage):
        return health  # without the map of index folders, nothing more can be checked
    readable = []
    for collection, segment, space, persisted in vector_segments(health.folder):
        index = health.folder / segment
        what = f"the vector index of collection {collection!r}"
        if not index.is_dir():
            if persisted:
                health.damage.append(StoreDamage(index, what, "missing", collection))
            continue
        problems = hnsw_problems(index, space)
        health.damage += [StoreDamage(index / name, what, problem, collection) for name, problem in problems]
        if not problems:
            readable.append(collection)
    if probe and readable:
        probe_collections(health, readable)
    return health


def probe_collections(health: StoreHealth, collections: list[str]) -> None:
    """Open the store with Chroma in a child process and count and query each collection; record counts and failures."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); from rag.store_check import _probe_child; _probe_child()"
    request = json.dumps({"folder": str(health.folder), "collections": collections})
    reading = None
    try:
        done = subprocess.run([sys.executable, "-c", code, request], capture_output=True, timeout=PROBE_SECONDS, check=False)
        output, status = done.stdout, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, status = expired.stdout or b"", None
    for line in output.decode(errors="replace").splitlines():
        if not line.startswith("{"):
            continue  # something Chroma printed
        event = json.loads(line)
        if "reading" in event:
            reading = event["reading"]
        elif "count" in event:
            health.counts[event["collection"]] = event["count"]
            reading = None
        elif "error" in event:
            where = event.get("collection")
            what = f"collection {where!r} as Chroma reads it" if where else "the store as Chroma opens it"
            health.damage.append(StoreDamage(health.folder, what, event["error"], where))
            reading = None
    if status == 0:
        return
    how = f"did not finish in {PROBE_SECONDS:g} s" if status is None else f"crashed ({signal_name(status)})"
    if reading:
        health.damage.append(StoreDamage(health.folder, f"collection {reading!r} as Chroma reads it", f"reading it {how}: its vector index is damaged", reading))
    else:
        health.damage.append(StoreDamage(health.folder, "the store as Chroma opens it", f"opening it {how}"))


def signal_name(status: int) -> str:
    """``SIGSEGV`` for a process killed by that signal (a negative status), else the exit status."""
    if status < 0:
        try:
            return signal.Signals(-status).name
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


def _probe_child() -> None:
    """In the child: open the store, then for each collection say which it reads, and its count or error (JSON lines)."""
    request = json.loads(sys.argv[1])

    def say(**event: object) -> None:
        print(json.dumps(event), flush=True)

    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        client = chromadb.PersistentClient(path=request["folder"], settings=ChromaSettings(anonymized_telemetry=False))
    except Exception as error:  # whatever Chroma raises on a store it cannot open is the finding
        say(error=f"Chroma cannot open the store: {error}")
        return
    for name in request["collections"]:
        say(reading=name)
        try:
            collection = client.get_collection(name)
            count = collection.count()
            sample = collection.get(limit=1, include=["embeddings"])
            if sample["ids"]:
                collection.query(query_embeddings=[list(sample["embeddings"][0])], n_results=1, include=["distances"])
        except Exception as error:  # reported per collection: the others are still read
            say(collection=name, error=" ".join(str(error).split())[:500])
            continue
        say(collection=name, count=count)


# --- rebuilding -----------------------------------------------------------------------------------------


def set_aside_damage(folder: Path, collection: str) -> list[str]:
    """Before ``--reindex`` of ``collection``: move the store's damaged SQLite files into ``damaged-TIME/``; one line per move.

    A damaged Chroma database takes every index folder and the source record with it (they
    describe chunks that no longer exist): every collection of the store must be ingested again.
    A damaged index of ``collection`` itself is left to ``--reindex``, which drops it unread.
    """
    damaged = {name for name in SQLITE_FILES if (Path(folder) / name).exists() and sqlite_problem(Path(folder) / name)}
    if not damaged:
        return []
    aside = Path(folder) / f"damaged-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    moves = sorted(damaged)
    lost: list[str] = []
    if CHROMA_FILE in damaged:
        moves += [path.name for path in Path(folder).iterdir() if path.is_dir() and is_segment_name(path.name)]
        if RECORD_FILE not in damaged and (Path(folder) / RECORD_FILE).exists():
            moves.append(RECORD_FILE)
        lost = [name for name in recorded_collections(Path(folder) / RECORD_FILE) if name != collection]
    lines = []
    for name in moves:
        for companion in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal"):
            if (Path(folder) / companion).exists():
                shutil.move(str(Path(folder) / companion), str(aside / companion))
        lines.append(f"set aside {name} ({SQLITE_FILES.get(name, 'a vector index')}) in {aside}")
    if lost:
        lines.append(f"collections {', '.join(lost)} were in the damaged Chroma database: ingest them again with --collection NAME")
    for line in lines:
        logger.warning("%s", line)
    return lines


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is a UUID, as Chroma names a collection's index folder."""
    parts = name.split("-")
    return [len(part) for part in parts] == [8, 4, 4, 4, 12] and all(c in "0123456789abcdef" for c in name.replace("-", ""))


def recorded_collections(record: Path) -> list[str]:
    """The collections the source record names (none if it cannot be read)."""
    if not record.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{record}?mode=rw", uri=True, timeout=30)
        try:
            return [row[0] for row in db.execute("SELECT DISTINCT collection FROM sources ORDER BY collection")]
        finally:
            db.close()
    except sqlite3.Error:
        return []
