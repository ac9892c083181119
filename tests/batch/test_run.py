"""The run loop (rag.batch.run): failures isolated, status, progress, the CLI's exit status, Ctrl-C and the re-run.

Integration tier: the CLI as a real process, the real SmolLM2 in-process and in worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.batch import BatchInterrupted, summarize_batch
from rag.cli import EXIT_INTERRUPTED, EXIT_NOTHING_DONE, EXIT_PARTIAL
from rag.settings import Settings
from tests.batch.fakes import TOPICS, fake_local, no_temporaries, read_jsonl


@pytest.fixture(scope="module")
def small_llm():
    """SmolLM2-135M in-process with a small context, so a longer document needs map-reduce."""
    from rag.llm import load_local_llm

    return load_local_llm(Settings(temperature=0.0, max_tokens=48, n_ctx=768, n_threads=1))  # one thread: robust on a busy machine


def test_failures_are_isolated_recorded_and_retried(corpus, tmp_path, batch_settings):
    (corpus / "poison.md").write_text("# Poison\n\nThis POISON document makes the model fail.", encoding="utf-8")
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (corpus / "empty.md").write_text("# Empty answer\n\nEMPTYME is what this says.", encoding="utf-8")
    missing = tmp_path / "missing.md"
    out = tmp_path / "out"

    report = summarize_batch([corpus, missing], out, batch_settings, local_llm=fake_local(fail_on="POISON", empty_on="EMPTYME"))

    assert report.status == "partial" and report.done == 3
    reasons = {Path(failure.source).name: (failure.stage, failure.reason) for failure in report.failures}
    assert reasons["poison.md"][0] == "summarize" and "reported an error" in reasons["poison.md"][1]
    assert reasons["empty.md"] == ("summarize", "the model returned an empty summary")
    assert reasons["binary.txt"][0] == "load" and reasons["missing.md"] == ("load", "no such file or folder")
    assert {Path(record["source"]).name for record in read_jsonl(out / "summaries.jsonl")} == set(TOPICS)
    assert "## Failures" in (out / "report.md").read_text() and "poison.md" in (out / "report.md").read_text()
    assert report.rollup is not None

    (corpus / "poison.md").write_text("# Poison\n\nThis document is fine now.", encoding="utf-8")
    local = fake_local(empty_on="EMPTYME")
    again = summarize_batch([corpus, missing], out, batch_settings, local_llm=local)
    assert again.summarized == 1 and again.reused == 3 and again.status == "partial"
    assert len([prompt for prompt in local.llm.calls if "fine now" in prompt and "Kestrel" not in prompt]) == 1


def test_when_every_document_fails_the_status_says_so(corpus, tmp_path, batch_settings):
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=fake_local(fail_on="im_start"))
    assert report.status == "failed" and report.done == 0 and len(report.failures) == 3 and report.rollup is None
    assert "(no rollup" in (tmp_path / "out" / "report.md").read_text()


def test_progress_bar_shows_documents_done_and_total(corpus, tmp_path, batch_settings, capsys):
    summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=fake_local(), progress=True)
    assert "3/3" in capsys.readouterr().err


def test_cli_json_is_quiet_and_exit_status_tells_partial_from_done(corpus, tmp_path, fake_server, run_cli):
    server = fake_server()
    out = tmp_path / "out"

    result = run_cli("batch-summarize", str(corpus), "--out", str(out), "--server", server.url, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "done" and data["done"] == 3 and data["files"]["report"].endswith("report.md")

    (corpus / "poison.md").write_text("# Poison\n\nThis POISON document breaks the server.", encoding="utf-8")
    result = run_cli("batch-summarize", str(corpus), "--out", str(out), "--server", server.url, "--json")
    assert result.exit_code == EXIT_PARTIAL
    data = json.loads(result.stdout)
    assert data["reused"] == 3 and data["failures"][0]["source"].endswith("poison.md")

    result = run_cli("batch-summarize", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o2"), "--server", server.url)
    assert result.exit_code == EXIT_NOTHING_DONE and "no such file or folder" in result.output


def test_cli_needs_inputs_or_the_store(run_cli, tmp_path):
    result = run_cli("batch-summarize", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--from-store" in result.output


@pytest.mark.integration  # the CLI as a real process


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes_the_rest(tmp_path, fake_server, settings):
    server = fake_server(token_delay=0.06)
    folder = tmp_path / "docs"
    folder.mkdir()
    for n in range(6):
        (folder / f"doc{n}.md").write_text(f"# Report {n}\n\nThe harbour crane {n} lifts {n * 3} tonnes and was serviced in spring.", encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rag", "batch-summarize", str(folder), "--out", str(out), "--server", server.url]
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "records").glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    kept = read_jsonl(out / "summaries.jsonl")
    assert 2 <= len(kept) < 6 and no_temporaries(out)
    assert len(list((out / "records").glob("*.json"))) == len(kept)
    assert "interrupted" in (out / "report.md").read_text() and not (out / "rollup.json").exists()

    server.completions, server.token_delay = 0, 0.0
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    data = json.loads(rerun.stdout)
    assert data["reused"] == len(kept) and data["summarized"] == 6 - len(kept)
    assert server.completions == 6 - len(kept) + 1  # the rest, then the rollup


def test_ctrl_c_before_the_workers_started_still_ends_cleanly(corpus, tmp_path, batch_settings, monkeypatch):
    start = threading.Thread.start

    def interrupted_start(thread) -> None:
        if thread.name.startswith("rag-batch-worker"):
            raise KeyboardInterrupt
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(BatchInterrupted) as caught:
        summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=fake_local())

    assert caught.value.report.status == "interrupted" and caught.value.report.done == 0
    assert "interrupted" in (tmp_path / "out" / "report.md").read_text() and no_temporaries(tmp_path / "out")


@pytest.mark.integration


def test_real_model_summarizes_cites_and_resumes(tmp_path, small_llm):
    from tests.conftest import SAMPLE_DATA

    folder = tmp_path / "docs"
    folder.mkdir()
    for path in sorted(SAMPLE_DATA.glob("*"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    long_text = "\n\n".join((SAMPLE_DATA / "quokkadb.rst").read_text().split("\n\n") * 8)
    (folder / "quokkadb-long.rst").write_text(long_text, encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", temperature=0.0, max_tokens=48, n_ctx=768, isolate_loaders=False)
    out = tmp_path / "out"

    report = summarize_batch([folder], out, settings, local_llm=small_llm)

    assert report.status == "done" and report.done == 3, report.failures
    methods = {Path(r["source"]).name: r["method"] for r in report.records}
    assert methods["quokkadb-long.rst"] == "map_reduce"
    for record in report.records:
        assert record["summary"].strip() and "<|im_" not in record["summary"]
        assert record["tokens"]["completion"] > 0 and record["timing"]["llm_seconds"] > 0
        assert any(point["citations"] for point in record["points"])
    assert report.rollup is not None and report.llm_seconds > 0

    calls_before = report.llm_calls
    again = summarize_batch([folder], out, settings, local_llm=small_llm)
    assert calls_before > 0 and again.llm_calls == 0 and again.reused == 3 and again.llm_seconds == 0


@pytest.mark.integration


def test_real_model_ctrl_c_then_rerun_with_two_worker_processes(tmp_path, settings):
    from tests.conftest import SAMPLE_DATA

    folder = tmp_path / "docs"
    folder.mkdir()
    for copy in range(2):
        for path in sorted(SAMPLE_DATA.glob("*"))[:3]:
            (folder / f"{copy}-{path.name}").write_text(f"Copy {copy}.\n\n" + path.read_text(), encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rag", "batch-summarize", str(folder), "--out", str(out)]
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir), "RAG_MAX_TOKENS": "40", "RAG_N_CTX": "1024", "RAG_TEMPERATURE": "0", "RAG_N_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list((out / "records").glob("*.json")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    kept = read_jsonl(out / "summaries.jsonl")
    assert 1 <= len(kept) < 6 and no_temporaries(out) and "Traceback" not in stderr

    rerun = subprocess.run([*command, "--workers", "2", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    data = json.loads(rerun.stdout)
    assert data["reused"] == len(kept) and data["summarized"] == 6 - len(kept)
    workers = {record["worker"] for record in read_jsonl(out / "summaries.jsonl")[len(kept):]}
    assert workers and all(worker.startswith("pid ") for worker in workers)
