"""``rag ingest`` and ``rag search`` as real processes over a generated corpus, and what a store folder then holds.

Shared by the crash and concurrency tests: :func:`write_corpus` and :func:`change_corpus` make
and change a corpus of one-paragraph chunks, :func:`start_rag` starts the CLI (with the fake
embedder of :mod:`tests.reliability.fake_rag`), :func:`snapshot` reads a store (Chroma, the
lexical index and the source record) the way a fresh process opens it, and
:func:`descendants` / :func:`still_running` tell whether a stopped process left children behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rag.settings import Settings
from tests.conftest import REPO_ROOT
from tests.test_indexing import paragraphs

FAKE_RAG = [sys.executable, "-m", "tests.reliability.fake_rag"]
PINNED_SETTINGS = {  # what the corpus and the checks assume, whatever the defaults become
    "RAG_CHUNK_SIZE": "500",  # a paragraph (480 characters) is one chunk
    "RAG_CHUNK_OVERLAP": "0",
    "RAG_MIN_SCORE": "0",  # a reader gets its k hits
    "RAG_MIN_SCORE_RATIO": "0",
    "RAG_RETRIEVAL": "hybrid",
}


# --- the corpus -------------------------------------------------------------------------------------


def write_document(path: Path, tag: str, count: int) -> None:
    """A Markdown file of ``count`` distinct paragraphs, one chunk each, all marked with ``tag``."""
    name = path.stem
    path.write_text(f"# {name} {tag}\n\n" + paragraphs(f"{name} {tag}", count), encoding="utf-8")


def write_corpus(folder: Path, files: int, paragraphs_per_file: int) -> None:
    """``files`` documents of ``paragraphs_per_file`` chunks each: ``files * paragraphs_per_file`` chunks in all."""
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        write_document(folder / f"doc-{number:03d}.md", "v0", paragraphs_per_file)


def chunk_texts(folder: Path) -> set[str]:
    """The chunks an ingest makes of the documents in ``folder``: one per paragraph, the heading joined to the first."""
    texts = set()
    for path in folder.glob("*.md"):
        heading, first, *rest = [part.strip() for part in path.read_text(encoding="utf-8").split("\n\n")]  # the splitter strips chunks
        texts |= {f"{heading}\n\n{first}", *rest}
    return texts


def change_corpus(folder: Path, rng: random.Random, tag: str, paragraphs_per_file: int, share: float = 0.5) -> None:
    """Rewrite ``share`` of the documents, remove one and add one (an ingest with ``--prune`` then adds, updates and deletes)."""
    documents = sorted(folder.glob("*.md"))
    for path in rng.sample(documents, max(1, int(len(documents) * share))):
        write_document(path, tag, paragraphs_per_file)
    rng.choice(documents).unlink()
    write_document(folder / f"added-{tag}.md", tag, paragraphs_per_file)


# --- the CLI as a process ---------------------------------------------------------------------------


def start_rag(data_dir: Path, *args: str, embed_delay: float = 0.0, wait_for_go: bool = False) -> subprocess.Popen:
    """``rag ARGS`` on the store of ``data_dir``, with the fake embedder (``embedding N`` on stdout at each call)."""
    env = {**os.environ, **PINNED_SETTINGS, "RAG_DATA_DIR": str(data_dir), "FAKE_RAG_EMBED_DELAY": str(embed_delay)}
    command = [*FAKE_RAG, *(["--wait-for-go"] if wait_for_go else []), *args]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, text=True,
        stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def let_go(process: subprocess.Popen) -> None:
    """Let a process started with ``wait_for_go`` run (it reads the line once its start-up is done)."""
    process.stdin.write("go\n")
    process.stdin.flush()


def start_ingest(data_dir: Path, corpus: Path, wait_for_go: bool = False) -> subprocess.Popen:
    """``rag ingest CORPUS --prune --json`` on the store of ``data_dir``."""
    return start_rag(data_dir, "ingest", str(corpus), "--prune", "--json", wait_for_go=wait_for_go)


def finish(process: subprocess.Popen, timeout: float = 120) -> dict:
    """Wait for a ``--json`` command to end; its report (a non-zero exit fails the test)."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exited {process.returncode}: {stderr[-2000:]}"
    return json_report(stdout)


def ingest_to_completion(data_dir: Path, corpus: Path, timeout: float = 120) -> dict:
    """Run ``rag ingest CORPUS --prune --json`` to its end; its report (a failure fails the test)."""
    return finish(start_ingest(data_dir, corpus), timeout)


def json_report(stdout: str) -> dict:
    """The JSON a ``--json`` command printed after the fake embedder's ``embedding N`` lines."""
    return json.loads(stdout[stdout.index("{") :])


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 60) -> float:
    """Read ``process``'s stdout up to a line starting with ``prefix``; when it came (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return time.monotonic()
        if not line:
            _, stderr = process.communicate(timeout=30)
            raise AssertionError(f"the process ended (status {process.returncode}) before printing {prefix!r}: {stderr[-2000:]}")
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


# --- processes left behind --------------------------------------------------------------------------


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` now (children, their children, ...), from ``/proc``."""
    parents = {int(entry.name): _parent_of(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def command_line(pid: int) -> str:
    """The command line of process ``pid`` ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def still_running(pids: set[int], grace: float = 10.0) -> set[int]:
    """Those of ``pids`` still running (not gone, not zombies) after up to ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        running = set()
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] != "Z":
                running.add(pid)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.1)


# --- what a store holds -----------------------------------------------------------------------------


@dataclass
class StoreSnapshot:
    """A store folder's collection as a fresh process reads it."""

    chunks: dict[str, tuple[str, dict]]  # Chroma: id -> (text, metadata)
    vectors: dict[str, list[float]]  # Chroma: id -> stored embedding
    lexical_ids: set[str]  # the lexical (FTS5) index
    sources: dict[str, tuple[str, int]]  # the source record: source -> (state, chunks)

    def texts(self) -> set[str]:
        return {text for text, _ in self.chunks.values()}

    def problems(self) -> list[str]:
        """What is inconsistent within the store: the two indexes disagree, a source is left pending, counts differ."""
        found = []
        if self.lexical_ids != set(self.chunks):
            found.append(f"lexical index and Chroma differ: {len(self.lexical_ids - set(self.chunks))} extra, {len(set(self.chunks) - self.lexical_ids)} missing")
        pending = [source for source, (state, _) in self.sources.items() if state != "indexed"]
        if pending:
            found.append(f"sources not indexed: {pending[:3]}")
        per_source: dict[str, int] = {}
        for _, metadata in self.chunks.values():
            per_source[metadata["source"]] = per_source.get(metadata["source"], 0) + 1
        if per_source != {source: count for source, (_, count) in self.sources.items()}:
            found.append("the source record's chunk counts differ from Chroma's")
        return found


def snapshot(data_dir: Path, vectors: bool = True) -> StoreSnapshot:
    """Read the store of ``data_dir``: Chroma, the lexical index and the source record (then let go of Chroma's client).

    Without ``vectors`` the stored vectors are not read (``vectors`` is then empty).
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    from rag.lexical import LexicalIndex
    from rag.store import open_collection, recorded_sources

    settings = Settings(data_dir=data_dir)
    try:
        found = open_collection(settings).get(include=["documents", "metadatas", *(["embeddings"] if vectors else [])])
        chunks = {id_: (text, metadata) for id_, text, metadata in zip(found["ids"], found["documents"], found["metadatas"])}
        stored = {id_: [float(x) for x in vector] for id_, vector in zip(found["ids"], found["embeddings"])} if vectors else {}
        with LexicalIndex(settings.store_path, settings.collection) as index:
            lexical_ids = index.ids()
        sources = {entry.source: (entry.state, entry.chunks) for entry in recorded_sources(settings)}
    finally:
        SharedSystemClient.clear_system_cache()  # the next read sees what other processes wrote since
    return StoreSnapshot(chunks, stored, lexical_ids, sources)


def self_retrieval_misses(data_dir: Path, vectors: dict[str, list[float]], batch: int = 500) -> list[str]:
    """The ids whose own stored vector, used as the query, does not find them first."""
    from chromadb.api.shared_system_client import SharedSystemClient

    from rag.store import open_collection

    ids = sorted(vectors)
    misses = []
    try:
        collection = open_collection(Settings(data_dir=data_dir))
        for start in range(0, len(ids), batch):
            group = ids[start : start + batch]
            found = collection.query(query_embeddings=[vectors[id_] for id_ in group], n_results=1, include=[])
            misses += [id_ for id_, hits in zip(group, found["ids"]) if hits[:1] != [id_]]
    finally:
        SharedSystemClient.clear_system_cache()
    return misses
