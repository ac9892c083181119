"""Batch summarization jobs: outputs, citations, resuming, interruption, failures, parallel workers.

Fast tier: a scripted fake LLM (counts its calls, cites the passages it is shown) and a
fake llama.cpp server on 127.0.0.1 (streams tokens, can fail mid-stream, counts requests).
Integration tier: the real SmolLM2 in-process, and two real llama.cpp servers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from langchain_core.documents import Document
from langchain_core.language_models.llms import LLM
from pydantic import Field

from rag.batch import (
    BatchInterrupted,
    JobSpec,
    ModelIdentity,
    limit_words,
    render_report,
    summarize_batch,
    write_atomic,
)
from rag.citations import cite_points, marker_numbers, split_points, strip_markers
from rag.cli import EXIT_INTERRUPTED, EXIT_NOTHING_DONE, EXIT_PARTIAL, cli
from rag.llm import LLMBackendError, LocalLLM
from rag.settings import Settings

# --- fakes ------------------------------------------------------------------------------------------


def fake_summary(prompt: str) -> str:
    """What the fakes answer: the start of the first passages, citing them; or, for a reduce
    prompt (no numbered passages), the cited sentences of the partial summaries it combines."""
    passages = re.findall(r"^\[(\d+)\] [^\n]*\n([^\n]+)", prompt, re.MULTILINE)
    if passages:
        return " ".join(f"{' '.join(text.split()[:8]).rstrip('.')} [{number}]." for number, text in passages[:2])
    partials = re.findall(r"[^.\n\[\]]+\[\d+\]\.", prompt)
    return " ".join(partial.strip() for partial in partials[:3]) or "Nothing to combine."


def count_tokens(text: str) -> int:
    return len(text) // 4 + 1


class ScriptedLLM(LLM):
    """Answers with :func:`fake_summary`; records every prompt; fails or answers empty on request."""

    calls: list = Field(default_factory=list)
    fail_on: str | None = None
    empty_on: str | None = None

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _call(self, prompt: str, stop=None, run_manager=None, **kwargs) -> str:
        self.calls.append(prompt)
        if self.fail_on and self.fail_on in prompt:
            raise LLMBackendError("llama.cpp server at http://127.0.0.1:1 reported an error: boom")
        if self.empty_on and self.empty_on in prompt:
            return "   "
        return fake_summary(prompt)


def fake_local(n_ctx: int = 4096, model: str = "fake-model.gguf", family: str = "chatml", max_tokens: int = 64, **llm) -> LocalLLM:
    return LocalLLM(ScriptedLLM(**llm), "llamacpp", model, family, n_ctx, max_tokens, count_tokens)


def fake_factory(settings: Settings) -> LocalLLM:
    """A module-level factory, so worker processes can build the fake too."""
    return fake_local(settings.n_ctx, max_tokens=settings.max_tokens)


class CrashingLLM(ScriptedLLM):
    """Ends its process on a prompt containing CRASH, leaving ``marker`` behind: the model is then "gone"."""

    marker: str = ""

    def _call(self, prompt: str, stop=None, run_manager=None, **kwargs) -> str:
        if "CRASH" in prompt:
            Path(self.marker).touch()
            os._exit(3)
        return super()._call(prompt, stop, run_manager, **kwargs)


def crashing_factory(settings: Settings) -> LocalLLM:
    """A worker's model that cannot be loaded again once a worker crashed (until the marker goes)."""
    marker = settings.data_dir / "model-gone"
    if marker.exists():
        raise LLMBackendError(f"the model file is gone: {marker}")
    return LocalLLM(CrashingLLM(marker=str(marker)), "llamacpp", "fake-model.gguf", "chatml", settings.n_ctx, settings.max_tokens, count_tokens)


class FakeLlamaServer:
    """A llama.cpp-compatible server on 127.0.0.1: /health, /props, /tokenize, streaming /completion.

    ``token_delay`` slows the stream; a prompt containing ``POISON`` gets some content and then
    an error event (``error_style`` "event": an ``error:`` line; "data": a data event with ``error``).
    """

    def __init__(self, model: str = "fake-model.gguf", n_ctx: int = 4096, token_delay: float = 0.0, error_style: str = "event"):
        self.model, self.n_ctx, self.token_delay, self.error_style = model, n_ctx, token_delay, error_style
        self.completions = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/props":
                    self._json({
                        "model_path": f"/models/{server.model}",
                        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}",
                        "default_generation_settings": {"n_ctx": server.n_ctx},
                    })  # fmt: skip
                else:
                    self._json({"status": "ok"})

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    self._json({"tokens": list(range(count_tokens(payload["content"])))})
                    return
                with server.lock:
                    server.completions += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                prompt = payload["prompt"]
                words = fake_summary(prompt).split(" ")
                try:
                    for index, word in enumerate(words):
                        if "POISON" in prompt and index == 2:
                            self._error()
                            return
                        self._event({"content": word if index == 0 else " " + word, "stop": False})
                        time.sleep(server.token_delay)
                    self._event({"content": "", "stop": True})
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _event(self, data: dict) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _error(self) -> None:
                error = {"code": 500, "message": "SERVER ERROR TEXT: slot crashed", "type": "server_error"}
                line = f"error: {json.dumps(error)}\n\n" if server.error_style == "event" else f"data: {json.dumps({'error': error})}\n\n"
                self.wfile.write(line.encode())
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers: list[FakeLlamaServer] = []

    def start(**options) -> FakeLlamaServer:
        servers.append(FakeLlamaServer(**options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# --- a small corpus -------------------------------------------------------------------------------------

TOPICS = {
    "lighthouse.md": (
        "# Kestrel Point Lighthouse\n\n"
        "The Kestrel Point lighthouse was built in 1871 from granite quarried on the island. "
        "Its lamp was automated in 1987 and the last keeper, Edith Marrow, moved to the mainland.\n\n"
        "Storms in 1903 cracked the lantern room, which was rebuilt with bronze frames and thicker glass panes."
    ),
    "boats.txt": (
        "Lake Varen Solar Boat Race\n\n"
        "Every June, student teams race solar powered boats across Lake Varen over twelve kilometres. "
        "The boats carry panels of at most four square metres and a single battery for the start.\n\n"
        "In 2022 the Delft team won in fifty one minutes, ahead of the Tampere and Lyon crews."
    ),
    "bakery.md": (
        "# Marlow Street Bakery\n\n"
        "The Marlow Street bakery bakes sourdough rye every morning in a wood fired oven from 1932. "
        "Its starter culture is said to be older than the oven itself.\n\n"
        "On Saturdays the bakery sells cardamom buns, and the queue reaches the corner by seven."
    ),
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TOPICS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    return settings.with_overrides(isolate_loaders=False, chunk_size=200)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_temporaries(folder: Path) -> bool:
    return not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


# --- outputs and citations --------------------------------------------------------------------------------


def test_each_document_gets_a_cited_summary_and_the_rollup_cites_documents(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    report = summarize_batch([corpus], out, batch_settings, local_llm=fake_local())

    assert report.status == "done" and report.summarized == 3 and report.done == 3 and not report.failures
    records = read_jsonl(out / "summaries.jsonl")
    assert [Path(record["source"]).name for record in records] == sorted(TOPICS)
    for record in records:
        assert {"source", "content_hash", "model", "prompt", "summary", "points", "citations", "timing", "tokens", "key"} <= record.keys()
        assert record["model"] == "fake-model.gguf" and record["prompt"] == "chatml/summarize"
        assert record["tokens"]["calls"] == 1 and record["tokens"]["prompt"] > 0 and record["tokens"]["completion"] > 0
        assert record["points"] and all(point["citations"] for point in record["points"])
        for point in record["points"]:
            for citation in point["citations"]:
                assert citation["source"] == record["source"]
                assert 0 <= citation["chunk"] < record["chunks"] and citation["start_index"] is not None
        assert "[" not in " ".join(point["text"] for point in record["points"])  # markers became data

    rollup = json.loads((out / "rollup.json").read_text())
    cited = {citation["document"] for point in rollup["points"] for citation in point["citations"]}
    assert cited and cited <= {1, 2, 3}
    assert all(rollup["documents"][c["document"] - 1]["source"] == c["source"] for p in rollup["points"] for c in p["citations"])

    markdown = (out / "report.md").read_text()
    assert markdown.index("## Corpus summary") < markdown.index("## Documents") < markdown.index("Kestrel Point Lighthouse")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["documents"]) == {record["key"] for record in records}
    entry = manifest["documents"][records[0]["key"]]
    assert {"content_hash", "model", "prompt", "settings"} <= entry.keys() and (out / entry["record"]).is_file()
    assert json.loads((out / "report.json").read_text())["status"] == "done"
    assert no_temporaries(out)


def test_rerun_of_a_finished_job_makes_no_llm_call(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    first = fake_local()
    summarize_batch([corpus], out, batch_settings, local_llm=first)
    before = read_jsonl(out / "summaries.jsonl")

    again = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=again)

    assert again.llm.calls == []
    assert report.status == "done" and report.reused == 3 and report.summarized == 0 and report.rollup is not None
    assert read_jsonl(out / "summaries.jsonl") == before


def test_a_changed_document_is_the_only_one_redone(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    (corpus / "boats.txt").write_text(TOPICS["boats.txt"] + "\n\nIn 2023 the race was cancelled because of fog.", encoding="utf-8")

    local = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=local)

    assert report.summarized == 1 and report.reused == 2
    redone = [prompt for prompt in local.llm.calls if "Solar Boat Race" in prompt and "Kestrel" not in prompt]
    assert len(redone) == 1 and len(local.llm.calls) == 2  # that document, then the rollup


def test_a_copy_of_a_document_reuses_its_summary_under_its_own_name(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    (corpus / "bakery-copy.md").write_text(TOPICS["bakery.md"], encoding="utf-8")

    local = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=local)

    copy = next(record for record in report.records if record["source"].endswith("bakery-copy.md"))
    assert report.reused == 4 and len(local.llm.calls) == 1  # only the rollup, which now has four documents
    assert {citation["source"] for citation in copy["citations"]} == {copy["source"]}


@pytest.mark.parametrize(
    "change",
    [
        {"local": {"model": "other-model.gguf"}},
        {"local": {"family": "zephyr"}},
        {"max_words": 40},
        {"settings": {"max_tokens": 32}},
    ],
    ids=["model", "prompt", "max-words", "settings"],
)
def test_a_changed_model_prompt_or_setting_redoes_everything(corpus, tmp_path, batch_settings, change):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    settings = batch_settings.with_overrides(**change.get("settings", {}))
    local = fake_local(**change.get("local", {}), max_tokens=settings.max_tokens if "settings" in change else 64)

    report = summarize_batch([corpus], out, settings, local_llm=local, max_words=change.get("max_words"))

    assert report.summarized == 3 and report.reused == 0 and len(local.llm.calls) == 4
    # The earlier records stay: going back to the first setup redoes nothing.
    back = fake_local()
    assert summarize_batch([corpus], out, batch_settings, local_llm=back).reused == 3 and back.llm.calls == []


def test_max_words_asks_for_the_length_and_cuts_longer_summaries(corpus, tmp_path, batch_settings):
    local = fake_local()
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=local, max_words=6)

    assert all("Write at most 6 words." in prompt for prompt in local.llm.calls)
    assert all(len(record["summary"].split()) <= 7 for record in report.records)
    assert any(record["truncated"] for record in report.records)


def test_limit_words_prefers_a_sentence_end():
    assert limit_words("One two three. Four five six seven.", 5) == ("One two three.", True)
    assert limit_words("One two three four five six seven", 4) == ("One two three four…", True)
    assert limit_words("Short.", 5) == ("Short.", False)
    assert limit_words("Any length at all.", None) == ("Any length at all.", False)


def test_a_document_longer_than_the_context_is_map_reduced_within_it(tmp_path, batch_settings):
    folder = tmp_path / "long"
    folder.mkdir()
    paragraphs = [f"Section {n} covers the harbour crane number {n} and its load limit of {n * 7} tonnes in detail." for n in range(60)]
    (folder / "manual.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (folder / "note.txt").write_text("A short note about the crane manual and its author, Ada Brandt.", encoding="utf-8")
    local = fake_local(n_ctx=600, max_tokens=64)

    report = summarize_batch([folder], tmp_path / "out", batch_settings, local_llm=local)

    assert report.status == "done"
    manual = next(record for record in report.records if record["source"].endswith("manual.txt"))
    assert manual["method"] == "map_reduce" and manual["tokens"]["calls"] > 2
    assert max(count_tokens(prompt) for prompt in local.llm.calls) <= 600 - 64
    chunks = {citation["chunk"] for citation in manual["citations"]}
    assert chunks and all(0 <= chunk < manual["chunks"] for chunk in chunks) and max(chunks) > 0
    note = next(record for record in report.records if record["source"].endswith("note.txt"))
    assert note["method"] == "stuff"


# --- failures ----------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("error_style", ["event", "data"])
def test_a_streamed_server_error_is_an_error_never_a_summary(corpus, tmp_path, batch_settings, fake_server, error_style):
    server = fake_server(error_style=error_style)
    (corpus / "poison.md").write_text("# Poison\n\nThis POISON document breaks the server slot.", encoding="utf-8")
    out = tmp_path / "out"

    report = summarize_batch([corpus], out, batch_settings, servers=[server.url])

    assert report.status == "partial"
    (failure,) = report.failures
    assert failure.source.endswith("poison.md") and "SERVER ERROR TEXT" in failure.reason
    for path in out.rglob("*.json*"):
        text = path.read_text()
        if path.name not in {"report.json"}:
            assert "SERVER ERROR TEXT" not in text, path
    assert not any(record["source"].endswith("poison.md") for record in read_jsonl(out / "summaries.jsonl"))


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "summaries.jsonl"
    write_atomic(target, "old\n")

    def broken_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and no_temporaries(tmp_path)


# --- citations -------------------------------------------------------------------------------------------------


def test_points_are_bullets_or_sentences_with_their_markers():
    assert split_points("- First point [1]\n- Second [2, 3]") == ["First point [1]", "Second [2, 3]"]
    assert split_points("It rained [1]. Then it snowed. [2] Later, sun.") == ["It rained [1].", "Then it snowed. [2]", "Later, sun."]
    assert marker_numbers("a [1, 3] b [2-4] c [3]") == [1, 3, 2, 4]
    assert strip_markers("It rained [1].") == "It rained."


def test_citations_use_valid_markers_else_word_overlap_else_none():
    docs = [
        Document(page_content="The lighthouse keeper Edith Marrow lived on Kestrel Point.", metadata={"chunk": 0}),
        Document(page_content="Solar boats race across Lake Varen every June.", metadata={"chunk": 1}),
    ]
    points = cite_points(
        "Edith Marrow kept the light [1]. Solar boats race on Lake Varen [9]. Quantum gravity remains unsolved.",
        docs,
        lambda number, doc: {"chunk": doc.metadata["chunk"]},
    )
    assert [(c["chunk"], c["how"]) for c in points[0].citations] == [(0, "marker")]
    assert [(c["chunk"], c["how"]) for c in points[1].citations] == [(1, "overlap")]  # [9] does not exist
    assert points[2].citations == [] and points[2].supported is False


def test_report_lists_uncited_points_as_such():
    spec = JobSpec.build(ModelIdentity("m.gguf", "llamacpp", "chatml", 4096, 64), Settings(), None)
    assert spec.document_key("abc") == spec.document_key("abc") != spec.document_key("abd")
    from rag.batch import BatchReport

    record = {"source": "/a.md", "title": "A", "chunks": 1, "method": "stuff", "tokens": {"calls": 1},
              "points": [{"text": "Made up.", "citations": [], "supported": False}]}  # fmt: skip
    text = render_report(BatchReport(out_dir="x", documents=1, records=[record]))
    assert "Made up. *(no source found)*" in text


# --- progress, CLI, interruption -------------------------------------------------------------------------------


def test_progress_bar_shows_documents_done_and_total(corpus, tmp_path, batch_settings, capsys):
    summarize_batch([corpus], tmp_path / "out", batch_settings, local_llm=fake_local(), progress=True)
    assert "3/3" in capsys.readouterr().err


@pytest.fixture
def run_cli(settings, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAG_ISOLATE_LOADERS", "false")

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


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


# --- parallel workers ---------------------------------------------------------------------------------------------


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


def test_servers_serving_different_models_are_refused(corpus, tmp_path, batch_settings, fake_server):
    from rag.batch import BatchError

    first, second = fake_server(), fake_server(model="another.gguf")
    with pytest.raises(BatchError, match="different models"):
        summarize_batch([corpus], tmp_path / "out", batch_settings, servers=[first.url, second.url])


@pytest.mark.integration  # real worker processes
def test_in_process_backends_run_one_worker_process_each(corpus, tmp_path, batch_settings):
    report = summarize_batch([corpus], tmp_path / "out", batch_settings, workers=2, llm_factory=fake_factory)

    assert report.status == "done" and report.done == 3
    workers = {record["worker"] for record in report.records}
    assert all(worker.startswith("pid ") for worker in workers) and str(os.getpid()) not in " ".join(workers)


@pytest.mark.integration
def test_a_worker_process_that_cannot_restart_fails_one_document_not_the_job(batch_settings):
    from rag.batch import DocumentTask, _ProcessEngine

    batch_settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = _ProcessEngine(crashing_factory, batch_settings)
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


# --- from a store -------------------------------------------------------------------------------------------------


def test_summarizes_each_source_of_a_store(corpus, tmp_path, batch_settings, fake_embeddings):
    from rag.indexing import ingest

    ingest([corpus], batch_settings, fake_embeddings)
    local = fake_local()

    report = summarize_batch([], tmp_path / "out", batch_settings, from_store=True, local_llm=local)

    assert report.status == "done" and sorted(Path(r["source"]).name for r in report.records) == sorted(TOPICS)
    assert all(c["chunk"] is not None for r in report.records for c in r["citations"])
    only = summarize_batch([corpus / "bakery.md"], tmp_path / "out", batch_settings, from_store=True, local_llm=fake_local())
    assert [Path(r["source"]).name for r in only.records] == ["bakery.md"] and only.reused == 1


def test_an_empty_store_says_what_to_do(tmp_path, batch_settings):
    from rag.store import EmptyStore

    with pytest.raises(EmptyStore, match="rag ingest"):
        summarize_batch([], tmp_path / "out", batch_settings, from_store=True, local_llm=fake_local())


# --- real models (integration) ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_llm():
    """SmolLM2-135M in-process with a small context, so a longer document needs map-reduce."""
    from rag.llm import load_llm

    return load_llm(Settings(temperature=0.0, max_tokens=48, n_ctx=768, n_threads=1))  # one thread: robust on a busy machine


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
