"""Concurrency on one store folder: two ingests at once, and a reader during an ingest, round after round.

Each round changes the corpus and starts three real processes on the same store: an ingest
(slowed by a fake embedder, so it holds the lock for a while), a second ingest and a
``rag search``. The second ingest and the search are started ahead and let go while the
first is writing. The first must finish; the second must fail at once with one line naming
the holder's pid; the search must answer from committed chunks or say the store is busy in
one line naming the writer, never a traceback. After every round the store must open and be consistent
(Chroma and the lexical index hold the same ids, every source indexed with its chunk count),
and at the end it must equal a clean ingest of the same corpus.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.reliability.ingest_processes import (
    change_corpus,
    chunk_texts,
    ingest_to_completion,
    json_report,
    let_go,
    snapshot,
    start_rag,
    wait_for_line,
    write_corpus,
)

pytestmark = pytest.mark.integration  # real ingest and search processes on one store

ROUNDS = 10
FILES, PARAGRAPHS = 8, 60
EMBED_DELAY = 0.4  # seconds per embedding call of the first ingest: it holds the lock for seconds


def start_round(data, corpus, query: str) -> tuple:
    """The three processes of a round, started ahead: they import what they need, then wait to be let go."""
    first = start_rag(data, "ingest", str(corpus), "--prune", "--json", embed_delay=EMBED_DELAY, wait_for_go=True)
    second = start_rag(data, "ingest", str(corpus), "--json", wait_for_go=True)
    reader = start_rag(data, "search", query, "-k", "4", "--json", wait_for_go=True)
    return first, second, reader


def test_two_ingests_and_a_reader_at_once_never_damage_the_store(tmp_path):
    rng = random.Random(13)
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    write_corpus(corpus, FILES, PARAGRAPHS)
    ingest_to_completion(data, corpus)
    committed = snapshot(data, vectors=False).texts()
    assert committed == chunk_texts(corpus)  # the oracle of what a reader may be answered
    refused_after, answers, started = [], {"answered": 0, "busy": 0}, time.monotonic()
    upcoming = start_round(data, corpus, f"paragraph {rng.randrange(PARAGRAPHS)}")  # each round starts up during the one before
    try:
        for number in range(1, ROUNDS + 1):
            first, second, reader = processes = upcoming
            for process in processes:
                wait_for_line(process, "ready")
            change_corpus(corpus, rng, f"r{number}", PARAGRAPHS, share=0.4)
            let_go(first)
            wait_for_line(first, "embedding")
            go = time.monotonic()
            let_go(second)
            let_go(reader)
            _, second_err = second.communicate(timeout=60)
            refused_after.append(time.monotonic() - go)
            first_still_writing = first.poll() is None
            if number < ROUNDS:
                upcoming = start_round(data, corpus, f"paragraph {rng.randrange(PARAGRAPHS)}")
            reader_out, reader_err = reader.communicate(timeout=60)
            first_out, first_err = first.communicate(timeout=120)

            assert first.returncode == 0, first_err
            assert json_report(first_out)["failures"] == []
            assert second.returncode == 1 and first_still_writing, second_err
            assert second_err.count("\n") == 1 and f"pid {first.pid}" in second_err and "Traceback" not in second_err, second_err
            assert "Traceback" not in reader_err, reader_err
            if reader.returncode == 0:
                hits = json.loads(reader_out[reader_out.index("[") :])
                assert hits and {hit["text"] for hit in hits} <= committed | chunk_texts(corpus), hits
                answers["answered"] += 1
            else:
                assert reader.returncode == 1 and reader_err.count("\n") == 1 and f"being written by rag ingest (pid {first.pid}" in reader_err, reader_err
                answers["busy"] += 1
            store = snapshot(data, vectors=False)
            assert not store.problems(), f"round {number}: {store.problems()}"
            assert len(store.chunks) == len(list(corpus.glob("*.md"))) * PARAGRAPHS and store.texts() == chunk_texts(corpus)
            committed = store.texts()
    finally:
        for process in upcoming:
            process.kill()
            process.communicate()
    print(
        f"{ROUNDS} rounds in {time.monotonic() - started:.1f} s: second ingest refused {min(refused_after):.2f}-{max(refused_after):.2f} s "
        f"after it was let go; reader {answers}"
    )

    ingest_to_completion(tmp_path / "clean", corpus)
    assert snapshot(data).chunks == snapshot(tmp_path / "clean").chunks
