"""Crash recovery of ``rag batch-summarize``: stopped mid-job by SIGKILL, Ctrl-C or SIGTERM, then resumed.

The CLI runs as a real process against the fake llama.cpp server of the batch tests (which
counts its completions), or, for worker processes, with a scripted in-process model
(:mod:`tests.reliability.fake_rag`). After every stop: no partial output file (every file
there parses; temporaries only after SIGKILL, and none once resumed); the resumed run makes
an LLM call for each unfinished document and the rollup only, leaves the finished records
untouched, and ends with the outputs of a clean run; no worker process outlives its job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.signals import EXIT_INTERRUPTED, EXIT_TERMINATED
from tests.batch.conftest import fake_server  # noqa: F401 (the fixture)
from tests.batch.fakes import no_temporaries, read_jsonl
from tests.conftest import REPO_ROOT
from tests.reliability.ingest_processes import FAKE_RAG, command_line, descendants, still_running

pytestmark = pytest.mark.integration  # the CLI as real processes, stopped by signals

DOCUMENTS = 12
EXPECTED_STATUS = {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
RUN_DEPENDENT = {"timing", "worker"}  # what differs between two runs of the same job


def write_documents(folder: Path) -> Path:
    folder.mkdir()
    for n in range(DOCUMENTS):
        (folder / f"report-{n:02d}.md").write_text(
            f"# Harbour report {n}\n\nCrane {n} lifts {n * 3 + 7} tonnes and was serviced in spring {2000 + n}.\n\n"
            f"Berth {n} is dredged to {n + 4} metres every autumn.",
            encoding="utf-8",
        )
    return folder


def batch_command(folder: Path, out: Path, server_url: str) -> list[str]:
    """``rag batch-summarize`` of ``folder`` into ``out`` with two workers on the fake server."""
    return [sys.executable, "-m", "rag", "batch-summarize", str(folder), "--out", str(out), "--server", server_url, "--workers", "2"]


def wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "records").glob("*.json"))) < count:
        assert process.poll() is None, f"the job ended (status {process.returncode}) before {count} records: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"fewer than {count} records after {timeout} s"
        time.sleep(0.05)


def finished_records(out: Path) -> dict[str, tuple[bytes, int]]:
    """Each finished record file (not a temporary): its bytes and modification time; each must parse."""
    found = {}
    for path in sorted((out / "records").glob("*.json")):
        record = json.loads(path.read_bytes())  # a partial file would not parse
        assert record["summary"], path
        found[path.name] = (path.read_bytes(), path.stat().st_mtime_ns)
    return found


def complete_files(out: Path) -> None:
    """Every output file that is not a temporary is whole: the JSON files parse, summaries.jsonl line by line."""
    for path in out.rglob("*"):
        if path.is_dir() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            read_jsonl(path)


def outputs(out: Path) -> dict:
    """What a job produced, without what depends on the run (timings, worker names)."""
    def same_in_every_run(record: dict) -> dict:
        return {key: value for key, value in record.items() if key not in RUN_DEPENDENT}

    records = sorted((same_in_every_run(record) for record in read_jsonl(out / "summaries.jsonl")), key=lambda record: record["source"])
    rollup = same_in_every_run(json.loads((out / "rollup.json").read_text(encoding="utf-8")))
    return {"records": records, "rollup": rollup}


def test_a_job_stopped_by_kill_9_then_ctrl_c_then_sigterm_resumes_to_a_clean_runs_outputs(tmp_path, fake_server, settings):  # noqa: F811
    server = fake_server(token_delay=0.05)
    folder = write_documents(tmp_path / "docs")
    out = tmp_path / "out"
    command = batch_command(folder, out, server.url)
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir)}
    kept: dict[str, tuple[bytes, int]] = {}
    for stop in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_for_records(out, len(kept) + 2, process)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)

        assert process.returncode == EXPECTED_STATUS[stop], stderr
        complete_files(out)
        if stop != signal.SIGKILL:
            assert "Traceback" not in stderr and "interrupted: run the same command again" in stderr
            assert no_temporaries(out) and "interrupted" in (out / "report.md").read_text(encoding="utf-8")
        now = finished_records(out)
        assert all(now[name] == kept[name] for name in kept), "a finished record was written again"
        assert len(kept) + 2 <= len(now) < DOCUMENTS
        kept = now

    server.completions, server.token_delay = 0, 0.0
    resumed = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert (report["reused"], report["summarized"]) == (len(kept), DOCUMENTS - len(kept))
    assert server.completions == DOCUMENTS - len(kept) + 1  # the unfinished documents and the rollup: nothing finished is redone
    assert all(finished_records(out)[name] == kept[name] for name in kept)
    assert no_temporaries(out)

    clean = subprocess.run([*batch_command(folder, tmp_path / "clean", server.url), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert outputs(out) == outputs(tmp_path / "clean")


def test_worker_processes_end_with_their_job_whether_sigterm_kill_9_or_ctrl_c_stops_it(tmp_path, settings):
    folder = write_documents(tmp_path / "docs")
    out = tmp_path / "out"
    command = [*FAKE_RAG, "batch-summarize", str(folder), "--out", str(out), "--workers", "2"]
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir), "FAKE_RAG_LLM_DELAY": "0.4"}
    kept: dict[str, tuple[bytes, int]] = {}
    for stop in ("sigterm", "kill-9", "ctrl-c-to-the-group"):
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            wait_for_records(out, len(kept) + 2, process)
            children = descendants(process.pid)
            workers = [pid for pid in children if "multiprocessing.spawn" in command_line(pid)]
            assert len(workers) == 2, f"expected two worker processes, found {workers} among {children}"
            if stop == "sigterm":
                process.send_signal(signal.SIGTERM)
            elif stop == "kill-9":
                process.send_signal(signal.SIGKILL)
            else:
                os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == {"sigterm": EXIT_TERMINATED, "kill-9": -signal.SIGKILL, "ctrl-c-to-the-group": EXIT_INTERRUPTED}[stop], stderr
        assert not still_running(children), f"after {stop}, a worker process outlived its job"
        if stop != "kill-9":
            assert "Traceback" not in stderr and no_temporaries(out)
        now = finished_records(out)
        assert all(now[name] == kept[name] for name in kept), "a finished record was written again"
        kept = now

    rerun = [*command[:-2], "--workers", "1", "--json"]  # the same job in one process: the children were this test's point
    resumed = subprocess.run(rerun, cwd=REPO_ROOT, capture_output=True, text=True, env={**env, "FAKE_RAG_LLM_DELAY": "0"}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert (report["reused"], report["summarized"], report["done"]) == (len(kept), DOCUMENTS - len(kept), DOCUMENTS), (sorted(kept), resumed.stderr)
    assert no_temporaries(out)
