"""Crash recovery of ``rag ingest``, seeded: SIGKILL at random moments, re-run, and the store equals a clean run's.

The corpus is 2,600 one-paragraph chunks, past Chroma's HNSW batch (100) and index-sync
(1,000) sizes; a first ingest indexes it and measures how long its writing takes. Each round
then changes the corpus (30% of the documents rewritten, one added, one removed: about 800
chunks added and 800 deleted, with ``--prune``), starts ``rag ingest`` as a real process (real
Chroma on disk, the real lexical index and loader process, a deterministic fake embedder),
kills it with SIGKILL at a random moment of its writing, and runs it again to completion. After
every round the store must be consistent; at the end it must hold exactly a clean run's
chunks: the same ids, texts, metadata and vectors, every vector found first by its own
embedding, the lexical index holding exactly Chroma's ids, every source indexed. The seed is
printed; ``RAG_CRASH_SEED=N`` replays a sequence.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from rag.signals import EXIT_TERMINATED
from tests.reliability.ingest_processes import (
    change_corpus,
    chunk_texts,
    descendants,
    finish,
    ingest_to_completion,
    let_go,
    self_retrieval_misses,
    snapshot,
    start_ingest,
    start_rag,
    still_running,
    wait_for_line,
    write_corpus,
)

pytestmark = pytest.mark.integration  # real ingest processes, killed

SEED = int(os.environ.get("RAG_CRASH_SEED", "1313"))  # read at import: the tests' environment drops RAG_* variables
KILLS = 8  # kill points that must land while the ingest is writing
MAX_ROUNDS = 14  # a kill may come after the run ended; such a round does not count
FILES, PARAGRAPHS = 26, 100  # 2,600 chunks
CHANGED = 0.3  # share of the documents each round rewrites


def test_sigkill_at_seeded_random_points_then_rerun_equals_a_clean_run(tmp_path):
    print(f"RAG_CRASH_SEED={SEED}")
    rng = random.Random(SEED)
    corpus, killed = tmp_path / "corpus", tmp_path / "killed"
    write_corpus(corpus, FILES, PARAGRAPHS)
    process = start_ingest(killed, corpus)
    first = wait_for_line(process, "embedding")
    finish(process)
    writing = (time.monotonic() - first) * (int(FILES * CHANGED) + 1) / FILES  # a round writes this share of the chunks
    started, landed, rounds, orphans, repaired = time.monotonic(), [], 0, set(), 0
    to_kill = rerun = start_ingest(killed, corpus, wait_for_go=True)  # each process starts up while the one before runs
    try:
        while len(landed) < KILLS and rounds < MAX_ROUNDS:
            rounds += 1
            change_corpus(corpus, rng, f"r{rounds}", PARAGRAPHS, share=CHANGED)
            rerun = start_ingest(killed, corpus, wait_for_go=True)
            let_go(to_kill)
            first = wait_for_line(to_kill, "embedding")
            delay = rng.uniform(0.0, writing)
            time.sleep(max(0.0, first + delay - time.monotonic()))
            children = descendants(to_kill.pid)
            to_kill.send_signal(signal.SIGKILL)
            to_kill.communicate(timeout=30)
            if to_kill.returncode == -signal.SIGKILL:
                landed.append(round(delay, 2))
            orphans |= still_running(children)
            let_go(rerun)
            to_kill = start_ingest(killed, corpus, wait_for_go=True)
            report = finish(rerun)
            assert report["failures"] == []
            repaired += report["reindexed"]  # the kill left Chroma's index half saved: the re-run rebuilt it (rag.repair)
            store = snapshot(killed, vectors=False)
            assert not store.problems(), f"round {rounds}: {store.problems()}"
            assert store.texts() == chunk_texts(corpus), f"round {rounds}: the store does not hold the corpus's chunks"
    finally:
        for process in (to_kill, rerun):
            process.kill()
            process.communicate()
    print(
        f"{len(landed)} kills landed in {rounds} rounds (writing time {writing:.1f} s) at {landed} s; "
        f"{repaired} left Chroma's index half saved and were rebuilt; {time.monotonic() - started:.1f} s"
    )
    assert len(landed) >= KILLS
    assert not orphans, f"processes left running after SIGKILL: {orphans}"

    ingest_to_completion(tmp_path / "clean", corpus)
    after_kills, clean = snapshot(killed), snapshot(tmp_path / "clean")
    assert len(clean.chunks) == FILES * PARAGRAPHS and not clean.problems()
    assert set(after_kills.chunks) == set(clean.chunks)
    assert after_kills.chunks == clean.chunks  # texts and metadata
    assert all(after_kills.vectors[id_] == pytest.approx(vector, abs=1e-6) for id_, vector in clean.vectors.items())
    assert after_kills.lexical_ids == set(clean.chunks)
    assert after_kills.sources == clean.sources
    assert self_retrieval_misses(killed, after_kills.vectors) == []


def test_sigterm_stops_an_ingest_cleanly_with_status_143(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 6, 40)
    process = start_rag(tmp_path / "data", "ingest", str(corpus), "--json", embed_delay=0.2)
    wait_for_line(process, "embedding")
    time.sleep(0.3)
    children = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == EXIT_TERMINATED, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted"
    assert not still_running(children), "the loader process outlived the ingest"
    ingest_to_completion(tmp_path / "data", corpus)
    store = snapshot(tmp_path / "data")
    assert not store.problems() and len(store.chunks) == 6 * 40


def test_a_vector_index_left_half_saved_is_rebuilt_by_the_next_ingest(tmp_path):
    """What a kill while Chroma saves its HNSW index leaves: the new header.bin, the old data files (rag.repair)."""
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    write_corpus(corpus, 13, 100)  # 1,300 chunks: Chroma saves its index (sync threshold 1,000)
    ingest_to_completion(data, corpus)
    (index,) = [path for path in (data / "store").iterdir() if (path / "header.bin").exists()]
    saved = {name: (index / name).read_bytes() for name in ("data_level0.bin", "length.bin", "link_lists.bin")}
    change_corpus(corpus, random.Random(7), "r1", 100, share=0.6)
    ingest_to_completion(data, corpus)
    for name, old in saved.items():
        (index / name).write_bytes(old)  # header.bin promises more vectors than these hold

    search = start_rag(data, "search", "paragraph 7", "--json")
    _, stderr = search.communicate(timeout=120)
    assert search.returncode == 1 and stderr.count("\n") == 1, stderr
    assert "vector index of collection 'default' is damaged" in stderr and "run `rag ingest` again" in stderr

    rebuilt = ingest_to_completion(data, corpus)
    assert rebuilt["reindexed"] and rebuilt["failures"] == [] and rebuilt["embedded"] == 0  # every vector came from the cache
    ingest_to_completion(tmp_path / "clean", corpus)
    repaired, clean = snapshot(data), snapshot(tmp_path / "clean")
    assert repaired.chunks == clean.chunks and not repaired.problems()
    assert self_retrieval_misses(data, repaired.vectors) == []

