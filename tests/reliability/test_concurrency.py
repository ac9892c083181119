"""Concurrency on one store folder: two ingests at once, and a reader during an ingest, round after round.

Each round changes the corpus and starts three real processes on the same store: an ingest
(slowed by a fake embedder, so it holds the lock for a while), a second ingest and a
``rag search``. The second ingest and the search are started ahead and let go while the
first is writing. The first must finish; the second must fail at once with one line naming
the holder's pid; the search must answer from committed chunks or say the store is busy in
one line, never a traceback. After every round the store must open and be consistent
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
    snapshot,
    start_rag,
    wait_for_line,
    write_corpus,
)

pytestmark = pytest.mark.integration  # real ingest and search processes on one store

ROUNDS = 10
FILES, PARAGRAPHS = 8, 60
EMBED_DELAY = 0.4  # seconds per embedding call of the first ingest: it holds the lock for seconds


def test_two_ingests_and_a_reader_at_once_never_damage_the_store(tmp_path):
    rng = random.Random(13)
    corpus, data = tmp_path / "corpus", tmp_path / "data"
    write_corpus(corpus, FILES, PARAGRAPHS)
    ingest_to_completion(data, corpus)
    committed = {text for text, _ in snapshot(data).chunks.values()}
    assert committed == chunk_texts(corpus)  # the oracle of what a reader may be answered
    refused_after, answers = [], {"answered": 0, "busy": 0}
    for number in range(1, ROUNDS + 1):
        change_corpus(corpus, rng, f"r{number}", PARAGRAPHS, share=0.4)
        query = rng.choice(sorted(committed)).split(". ")[0]  # "doc-003 r2 paragraph 17": found by its words
        second = start_rag(data, "ingest", str(corpus), "--json", wait_for_go=True)
        reader = start_rag(data, "search", query, "-k", "4", "--json", wait_for_go=True)
        first = start_rag(data, "ingest", str(corpus), "--prune", "--json", embed_delay=EMBED_DELAY)
        for waiting in (second, reader):
            wait_for_line(waiting, "ready")
        wait_for_line(first, "embedding")
        go = time.monotonic()
        for waiting in (second, reader):
            waiting.stdin.write("go\n")
            waiting.stdin.flush()
        _, second_err = second.communicate(timeout=60)
        refused_after.append(time.monotonic() - go)
        first_still_writing = first.poll() is None
        reader_out, reader_err = reader.communicate(timeout=60)
        first_out, first_err = first.communicate(timeout=120)

        assert first.returncode == 0, first_err
        assert json_report(first_out)["failures"] == []
        assert second.returncode == 1 and first_still_writing, second_err
        assert second_err.count("\n") == 1 and f"pid {first.pid}" in second_err and "Traceback" not in second_err, second_err
        assert "Traceback" not in reader_err, reader_err
        if reader.returncode == 0:
            hits = json.loads(reader_out)
            assert hits and {hit["text"] for hit in hits} <= committed | chunk_texts(corpus), hits
            answers["answered"] += 1
        else:
            assert reader.returncode == 1 and reader_err.count("\n") == 1 and "busy" in reader_err, reader_err
            answers["busy"] += 1
        store = snapshot(data)
        assert not store.problems(), f"round {number}: {store.problems()}"
        assert len(store.chunks) == len(list(corpus.glob("*.md"))) * PARAGRAPHS
        committed = {text for text, _ in store.chunks.values()}
    print(f"{ROUNDS} rounds: second ingest refused in {min(refused_after):.2f}-{max(refused_after):.2f} s; reader {answers}")

    ingest_to_completion(tmp_path / "clean", corpus)
    assert snapshot(data).chunks == snapshot(tmp_path / "clean").chunks

