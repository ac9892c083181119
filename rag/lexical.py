"""The lexical index beside Chroma: SQLite FTS5 (BM25) in the store folder, kept in step by indexing.

One file, ``rag-lexical.sqlite3``, holds per collection a table of chunk ids and an FTS5
table of their terms in two columns: the chunk's heading (page title and section path) and
its text. BM25 weighs a heading term ``HEADING_WEIGHT`` times a text term (measured on the
retrieval benchmark: hit@4 +0.04 on both question sets). :func:`terms` tokenizes for both indexing and queries: words
(any script; CJK characters one by one) and, besides them, code tokens kept whole
(``re.sub``, ``--force``, ``*?``, ``gc.pruneExpire``), which are hex-encoded so FTS5 sees
one opaque token. Queries are built from those terms, each quoted, so FTS5 syntax in
what a user types (``"``, ``*``, ``NEAR(``, ``AND``) is only text and never an error.

Writers mark the collection *dirty* before touching Chroma and clean after both indexes
are written; :meth:`LexicalIndex.reconcile` (run on the next ingest, forget or search
after a crash) makes the lexical ids exactly Chroma's.

Example::

    from rag.lexical import LexicalIndex
    with LexicalIndex(settings.store_path, "default") as index:
        index.add([("chunk-id", "path/to/source", "chunk text", "Title > Section")])
        index.search("git mv -k", 10)     # [("chunk-id", 3.2)]: id and BM25 score, best first
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from rag.settings import Settings
from rag.split import chunk_heading

logger = logging.getLogger(__name__)

LEXICAL_FILE = "rag-lexical.sqlite3"
HEADING_WEIGHT = 4.0  # BM25 weight of a heading term against a chunk text term
MAX_QUERY_TERMS = 64
MAX_MENTION_ROWS = 5000  # chunks whose stems match a name, read to find the name's exact words
_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}<>`“”‘’«»"
_CODE_NAME = re.compile(r"[A-Za-z]\w+(?:[._][A-Za-z]\w*)+")  # two letters, then . or _ and a letter: not e.g, 1.0
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]+s?")
_MIXED_CASE = re.compile(r"[A-Za-z]*[a-z][A-Z][A-Za-z0-9]*")
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in into is it its me my of on or so that the their then "
    "there these this to was what when where which who why will with without you your".split()
)


def terms(text: str) -> list[str]:
    """Index terms of ``text``: lowercase words, CJK characters, and code tokens (hex-encoded) kept whole."""
    found: list[str] = []
    for raw in unicodedata.normalize("NFKC", text).casefold().split():
        for word in _WORD.findall(raw):
            if _CJK.search(word):
                found.extend(piece for piece in re.split(r"(" + _CJK.pattern + ")", word) if piece)
            else:
                found.append(word)
        core = raw.strip(_EDGE_PUNCTUATION) if _WORD.search(raw) else raw
        if core and len(core) <= 60 and not _WORD.fullmatch(core) and (_WORD.search(core) or len(core) <= 8):
            found.append("x" + core.encode("utf-8").hex())
    return found


def query_terms(query: str) -> list[str]:
    """The distinct terms of a query, stop words left out (unless nothing else is left), at most 64."""
    seen: dict[str, None] = {}
    for term in terms(query):
        seen.setdefault(term, None)
    wanted = [term for term in seen if term not in _STOPWORDS] or list(seen)
    return wanted[:MAX_QUERY_TERMS]


def named_terms(text: str) -> list[str]:
    """What a question names exactly: code identifiers (``pool_mode``, ``re.sub``), acronyms (``LFS``)
    and mixed-case names (``QuokkaDB``), at most 64; plain words, capitalized or not, and versions (``1.0``) are not names."""
    found: list[str] = []
    for raw in unicodedata.normalize("NFKC", text).split():
        core = raw.strip(_EDGE_PUNCTUATION)
        if core not in found and (_CODE_NAME.fullmatch(core) or _ACRONYM.fullmatch(core) or _MIXED_CASE.fullmatch(core)):
            found.append(core)
            if len(found) == MAX_QUERY_TERMS:
                break
    return found


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def match_expression(query: str) -> str | None:
    """An FTS5 query matching any term of ``query`` (each quoted), or ``None`` if it has no terms."""
    wanted = query_terms(query)
    return " OR ".join(map(_quoted, wanted)) if wanted else None


class LexicalIndex:
    """The FTS5 tables of one collection in a store folder (created on first use)."""

    def __init__(self, folder: str | Path, collection: str) -> None:
        self.path = Path(folder) / LEXICAL_FILE
        self.collection = collection
        self._ids = f'"{collection}:ids"'  # collection names are checked: letters, digits, . _ -
        self._fts = f'"{collection}:fts"'
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.db:
            self.db.execute("CREATE TABLE IF NOT EXISTS state (collection TEXT PRIMARY KEY, dirty INTEGER NOT NULL)")
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {self._ids} (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, source TEXT NOT NULL)")
            self.db.execute(f"CREATE INDEX IF NOT EXISTS \"{collection}:by_source\" ON {self._ids} (source)")
            columns = [row[1] for row in self.db.execute(f"PRAGMA table_info({self._fts})")]
            if columns and columns != ["heading", "body"]:  # one column, as before headings were weighed: rebuilt by reconcile
                self.db.execute(f"DROP TABLE {self._fts}")
                self.db.execute(f"DELETE FROM {self._ids}")
            self.db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {self._fts} USING fts5(heading, body, tokenize='porter unicode61 remove_diacritics 2')"
            )

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / LEXICAL_FILE).exists()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> LexicalIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ---

    def add(self, chunks: Iterable[tuple[str, ...]]) -> None:
        """Index ``(chunk id, source, text[, heading])`` tuples, replacing any chunk with the same id."""
        with self._lock, self.db:
            for chunk_id, source, text, *heading in chunks:
                self._delete([chunk_id])
                cursor = self.db.execute(f"INSERT INTO {self._ids} (id, source) VALUES (?, ?)", (chunk_id, source))
                self.db.execute(
                    f"INSERT INTO {self._fts} (rowid, heading, body) VALUES (?, ?, ?)",
                    (cursor.lastrowid, " ".join(terms(heading[0] if heading else "")), " ".join(terms(text))),
                )

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock, self.db:
            self._delete(ids)

    def _delete(self, ids: Sequence[str]) -> None:
        for chunk_id in ids:
            row = self.db.execute(f"SELECT rowid FROM {self._ids} WHERE id = ?", (chunk_id,)).fetchone()
            if row is not None:
                self.db.execute(f"DELETE FROM {self._fts} WHERE rowid = ?", row)
                self.db.execute(f"DELETE FROM {self._ids} WHERE rowid = ?", row)

    def drop(self) -> None:
        """Remove every chunk of the collection."""
        with self._lock, self.db:
            self.db.execute(f"DELETE FROM {self._ids}")
            self.db.execute(f"DELETE FROM {self._fts}")
            self.db.execute("DELETE FROM state WHERE collection = ?", (self.collection,))

    def mark_dirty(self) -> None:
        """Record that writes to Chroma and this index are under way (committed before they start)."""
        with self._lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, 1)", (self.collection,))

    def mark_clean(self) -> None:
        with self._lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, 0)", (self.collection,))

    # --- reading ---

    @property
    def dirty(self) -> bool:
        row = self.db.execute("SELECT dirty FROM state WHERE collection = ?", (self.collection,)).fetchone()
        return bool(row and row[0])

    def count(self) -> int:
        return self.db.execute(f"SELECT count(*) FROM {self._ids}").fetchone()[0]

    def ids(self, source: str | None = None) -> set[str]:
        if source is None:
            return {row[0] for row in self.db.execute(f"SELECT id FROM {self._ids}")}
        return {row[0] for row in self.db.execute(f"SELECT id FROM {self._ids} WHERE source = ?", (source,))}

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` best chunks for ``query`` by BM25: ``(chunk id, score)``, higher is better."""
        expression = match_expression(query)
        if expression is None or n < 1:
            return []
        with self._lock:
            rows = self.db.execute(
                f"SELECT i.id, -bm25({self._fts}, {HEADING_WEIGHT}, 1.0) AS score FROM {self._fts} f JOIN {self._ids} i ON i.rowid = f.rowid "
                f"WHERE {self._fts} MATCH ? ORDER BY bm25({self._fts}, {HEADING_WEIGHT}, 1.0) LIMIT ?",
                (expression, n),
            ).fetchall()
        return [(chunk_id, float(score)) for chunk_id, score in rows]

    def unmentioned(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` (see :func:`named_terms`) that no chunk contains: no chunk holds the name's words in a row.

        Words, not the whole code token: ``re.sub`` is mentioned by a text saying ``re.sub(pattern)``.
        The words are compared unstemmed (a plural ``s`` aside): the stemmer makes ``LFS`` ``lf``,
        which git's manual mentions as a line ending.
        """
        missing = []
        with self._lock:
            for name in names:
                words = terms(" ".join(_WORD.findall(name)))
                if not words:
                    continue
                wanted = f" {' '.join(map(_singular, words))} "
                rows = self.db.execute(
                    f"SELECT heading, body FROM {self._fts} WHERE {self._fts} MATCH ? LIMIT {MAX_MENTION_ROWS}", (_quoted(" ".join(words)),)
                )
                if not any(wanted in f" {' '.join(map(_singular, f'{heading} {body}'.split()))} " for heading, body in rows):
                    missing.append(name)
        return missing

    # --- recovery ---

    def reconcile(self, collection, batch: int = 500) -> tuple[int, int]:
        """Make this index hold exactly the chunk ids of the Chroma ``collection``, then mark it clean.

        Each chunk is indexed with its heading (:func:`rag.split.chunk_heading`). Returns ``(added, removed)``.
        """
        wanted = set(collection.get(include=[])["ids"]) if collection is not None else set()
        held = self.ids()
        missing, extra = sorted(wanted - held), sorted(held - wanted)
        if extra:
            self.delete(extra)
        for start in range(0, len(missing), batch):
            found = collection.get(ids=missing[start : start + batch], include=["documents", "metadatas"])
            self.add(
                (chunk_id, str((metadata or {}).get("source", "")), text or "", chunk_heading(metadata or {}))
                for chunk_id, text, metadata in zip(found["ids"], found["documents"], found["metadatas"])
            )
        self.mark_clean()
        if missing or extra:
            logger.info("lexical index of %r: %d chunks added, %d removed to match the vector index", self.collection, len(missing), len(extra))
        return len(missing), len(extra)


def open_lexical_for_writing(settings: Settings, collection, reindex: bool) -> LexicalIndex | None:
    """The lexical index beside the collection, made to hold exactly its chunk ids (after a crash, or new)."""
    if settings.chroma_url:
        return None  # a Chroma server has no store folder to keep it in: vector search only
    index = LexicalIndex(settings.store_path, settings.collection)
    if reindex:
        index.drop()
    if index.dirty or index.count() != collection.count():
        index.reconcile(collection)
    return index


def sync_source(index: LexicalIndex, source: str, ids: list[str], texts: list[str], metadatas: list[dict]) -> None:
    """Make the lexical index hold exactly ``ids`` for ``source`` (the chunks now in Chroma), then mark it clean."""
    held = index.ids(source)
    wanted = set(ids)
    index.delete(sorted(held - wanted))
    index.add((id_, source, text, chunk_heading(metadata)) for id_, text, metadata in zip(ids, texts, metadatas) if id_ not in held)
    index.mark_clean()
