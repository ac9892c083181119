"""Where workers' models live (rag.batch.engines): servers and their parallel slots, worker processes.

Fast tier: fake llama.cpp servers on 127.0.0.1. Integration tier: real worker processes, two real llama.cpp servers.
"""

from __future__ import annotations

import os
import threading

import pytest

from rag.batch import JobSpec, summarize_batch
from rag.batch.engines import ProcessEngine
from rag.batch.tasks import DocumentTask
from rag.settings import Settings
from tests.batch.fakes import crashing_factory, fake_factory


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_two_servers_share_the_work_and_give_the_same_summaries(corpus, tmp_path, batch_settings, fake_server):
    for name in ("more1.md", "more2.md", "more3.md"):
        (corpus / name).write_text(f"# {name}\n\nThe ferry timetable {name} changes in winter when the lake freezes.", encoding="utf-8")
    first, second = fake_server(token_delay=0.01), fake_server(token_delay=0.01)

    two = summarize_batch([corpus], tmp_path / "two", batch_settings, servers=[first.url, second.url])
    one = summarize_batch([corpus], tmp_path / "one", batch_settings, servers=[first.url])

    assert two.workers == 2 and two.status == "done"
    assert {record["worker"] for record in two.records} == {first.url, second.url}
    assert [r["summary"] for r in two.records] == [r["summary"] for r in one.records]
    assert [r["key"] for r in two.records] == [r["key"] for r in one.records]


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_several_workers_use_one_servers_parallel_slots(corpus, tmp_path, batch_settings, fake_server):
    server = fake_server(token_delay=0.02)
    active, peak = [0], [0]
    original = server.httpd.RequestHandlerClass.do_POST

    def counting(handler) -> None:
        completion = handler.path == "/completion"
        if completion:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            original(handler)
        finally:
            active[0] -= completion

    server.httpd.RequestHandlerClass.do_POST = counting
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, servers=[server.url], workers=3)

    assert report.status == "done" and report.workers == 3 and {record["worker"] for record in report.records} == {server.url}
    assert peak[0] >= 2


@pytest.mark.integration  # real worker processes


def test_in_process_backends_run_one_worker_process_each(corpus, tmp_path, batch_settings):
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, workers=2, llm_factory=fake_factory)

    assert report.status == "done" and report.done == 3
    workers = {record["worker"] for record in report.records}
    assert all(worker.startswith("pid ") for worker in workers) and str(os.getpid()) not in " ".join(workers)


@pytest.mark.integration


def test_a_worker_process_that_cannot_restart_fails_one_document_not_the_job(batch_settings):
    batch_settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = ProcessEngine(crashing_factory, batch_settings)
    stop = threading.Event()
    engine.start()
    spec = JobSpec.build(engine.wait_ready(stop), batch_settings, None)

    def task(number: int, text: str) -> DocumentTask:
        source = f"/docs/{number}.md"
        return DocumentTask(number, source, f"Doc {number}", f"hash-{number}", f"key-{number}", [(text, {"source": source})])

    try:
        crashed = engine.run(spec, task(0, "CRASH in the middle of this one."), stop)
        assert crashed.record is None and "exited with status 3" in crashed.reason
        failed = engine.run(spec, task(1, "An ordinary document about boats."), stop)
        assert failed.record is None and failed.stage == "summarize"
        assert "could not restart" in failed.reason and "the model file is gone" in failed.reason
        (batch_settings.data_dir / "model-gone").unlink()
        done = engine.run(spec, task(2, "Another ordinary document about bread."), stop)
        assert done.reason is None and done.record["source"] == "/docs/2.md"
    finally:
        engine.close()


@pytest.mark.integration


def test_two_real_llama_servers_share_a_job(tmp_path):
    from rag.models import default_llm_path
    from tests.conftest import SAMPLE_DATA, start_llama_server

    servers = [start_llama_server(default_llm_path(), n_ctx=1024, threads=1) for _ in range(2)]
    try:
        urls = [server.url for server in servers]
        settings = Settings(data_dir=tmp_path / "data", temperature=0.0, max_tokens=40, isolate_loaders=False)
        report = summarize_batch([SAMPLE_DATA], tmp_path / "out", settings, servers=urls)
    finally:
        for server in servers:
            server.stop()

    assert report.status == "done" and report.done == 4, report.failures
    assert report.workers == 2 and {record["worker"] for record in report.records} == set(urls)
    for record in report.records:
        assert record["summary"].strip() and record["model"] == default_llm_path().name
        assert record["settings"]["n_ctx"] == 1024 and any(point["citations"] for point in record["points"])
