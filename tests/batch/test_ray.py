"""The Ray executor (rag.batch.executors): the same job as the local executor, on a local Ray instance.

Integration tier: Ray on 127.0.0.1 (2 CPUs, no dashboard, no usage report), the real
SmolLM2 for the comparison with the local executor, a slow fake model for the killed worker.
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

from rag.batch import summarize_batch
from rag.batch.executors import RAY_EXTRA, import_ray
from rag.batch.jobs import BatchError
from rag.batch.outputs import RECORDS_DIR
from rag.llm import LocalLLM
from rag.settings import Settings
from tests.batch.fakes import ScriptedLLM, count_tokens, read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[2]


class SlowLLM(ScriptedLLM):
    """The scripted model, taking ``delay`` seconds per call: time to kill its worker mid-document."""

    delay: float = 1.5

    def _call(self, prompt: str, stop=None, run_manager=None, **kwargs) -> str:
        time.sleep(self.delay)
        return super()._call(prompt, stop, run_manager, **kwargs)


def slow_factory(settings: Settings) -> LocalLLM:
    """Module-level, so Ray workers can build it (they import this module)."""
    return LocalLLM(SlowLLM(), "llamacpp", "fake-model.gguf", "chatml", settings.n_ctx, settings.max_tokens, count_tokens)


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(BatchError) as raised:
        import_ray()
    assert RAY_EXTRA in str(raised.value) and "\n" not in str(raised.value)


def test_cli_without_ray_fails_in_one_line(monkeypatch, run_cli, corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run_cli("batch-summarize", str(corpus), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: --executor ray needs Ray, which is not installed: pip install 'rag[ray]'"]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance on loopback: 2 CPUs, no dashboard, workers import this repository's tests."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'rag[ray]' (or the test extra)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    yield ray
    ray.shutdown()


def _citations(report) -> dict[str, list]:
    return {
        Path(record["source"]).name: sorted((c["chunk"], c.get("page")) for c in record["citations"]) for record in report.records
    }


@pytest.mark.integration
def test_ray_runs_the_same_job_as_local(ray_local, corpus, tmp_path, batch_settings):
    settings = batch_settings.with_overrides(temperature=0.0, max_tokens=32, n_ctx=1024)
    local = summarize_batch([corpus], tmp_path / "local", settings, workers=2)
    on_ray = summarize_batch([corpus], tmp_path / "ray", settings.with_overrides(executor="ray"), workers=2)

    assert local.status == on_ray.status == "done"
    assert _citations(on_ray) == _citations(local)
    assert [record["key"] for record in on_ray.records] == [record["key"] for record in local.records]
    assert {record["worker"].split(" on ")[0].split()[0] for record in on_ray.records} == {"ray"}
    assert (tmp_path / "ray" / "manifest.json").exists() and on_ray.rollup is not None

    again = summarize_batch([corpus], tmp_path / "ray", settings.with_overrides(executor="ray"), workers=2)
    assert (again.reused, again.summarized) == (3, 0)  # resumed from the same manifest: nothing redone


@pytest.mark.integration
def test_killed_ray_worker_leaves_the_job_resumable(ray_local, corpus, tmp_path, batch_settings):
    settings = batch_settings.with_overrides(executor="ray")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_after_first_record() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            records = sorted((out / RECORDS_DIR).glob("*.json"))  # written as each document finishes
            if records:
                pid = int(json.loads(records[0].read_text())["worker"].split()[2])
                time.sleep(0.3)  # the next document is on that worker now
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_record, daemon=True)
    killer.start()
    first = summarize_batch([corpus], out, settings, workers=1, llm_factory=slow_factory)
    killer.join()

    assert killed, "no record was written to find the worker"
    assert first.status == "partial"
    assert [failure.stage for failure in first.failures] == ["summarize"]
    assert "Ray worker died" in first.failures[0].reason
    done_first = {record["source"] for record in first.records}
    assert len(done_first) == 2  # the next document ran on a restarted worker

    second = summarize_batch([corpus], out, settings, workers=1, llm_factory=slow_factory)
    assert second.status == "done"
    assert (second.reused, second.summarized) == (2, 1)  # nothing finished was redone
    assert {record["source"] for record in second.records} >= done_first


@pytest.mark.integration
def test_cli_starts_its_own_local_ray_and_exits_zero(corpus, tmp_path, settings):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'rag[ray]' (or the test extra)")
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir), "RAG_ISOLATE_LOADERS": "false", "RAG_MAX_TOKENS": "32",
           "RAG_TEMPERATURE": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    command = [sys.executable, "-m", "rag", "batch-summarize", str(corpus), "--out", str(tmp_path / "out"), "--executor", "ray", "--workers", "2", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["status"] == "done" and report["done"] == 3
    assert all(record["worker"].startswith("ray pid ") for record in read_jsonl(tmp_path / "out" / "summaries.jsonl"))


@pytest.mark.integration
def test_ray_workers_as_clients_of_llama_servers(ray_local, fake_server, corpus, tmp_path, batch_settings):
    first, second = fake_server(token_delay=0.01), fake_server(token_delay=0.01)
    report = summarize_batch([corpus], tmp_path / "out", batch_settings.with_overrides(executor="ray"), servers=[first.url, second.url])
    assert report.status == "done" and report.workers == 2
    assert first.completions and second.completions  # each actor talks to its own server
    assert {record["worker"].split()[0] for record in report.records} == {"ray"}
