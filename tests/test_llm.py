"""LLM backends: stop handling, server protocol, errors (fast) and the three real backends (integration)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.llms import LLM

from rag.llm import (
    LlamafileLLM,
    LLMBackendError,
    LocalLLM,
    StopSequenceFilter,
    gpt4all_compatible_copy,
    load_llm,
)
from rag.models import InvalidModelFile, ModelNotFound, default_llm_path, read_gguf_metadata

CHATML_QUESTION = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France? Answer in one short sentence.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def run_filter(stops: list[str], pieces: list[str]) -> str:
    stop_filter = StopSequenceFilter(stops)
    out = [text for piece in pieces for text in stop_filter.feed(piece)]
    return "".join(out + stop_filter.flush())


def test_stop_filter_cuts_at_stop_split_across_tokens():
    assert run_filter(["<|im_end|>"], ["Paris is", " the capital.<|im", "_end|>", " junk"]) == "Paris is the capital."


def test_stop_filter_releases_held_prefix_that_was_not_a_stop():
    assert run_filter(["<|im_end|>"], ["a <|i", "dea"]) == "a <|idea"


def test_stop_filter_without_stops_passes_everything():
    assert run_filter([], ["a", "b"]) == "ab"


# --- a fake llama.cpp server for protocol errors ------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "error-event"

    def do_GET(self):  # noqa: N802
        body = json.dumps({"model_path": "/models/fake-chatml.gguf", "chat_template": "<|im_start|>"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/tokenize":
            if self.mode == "tokenize-500":
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b'{"error":\n "tokenizer crashed"}')
            else:
                body = b'{"tokens": [1, 2, 3]}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            return
        if self.mode == "http-500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "model crashed"}')
            return
        if self.mode == "hang":
            time.sleep(5)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"content": "Partial", "stop": false}\n\n')
        self.wfile.write(b'data: {"error": {"code": 500, "message": "context overflow"}}\n\n')

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    def start(mode: str) -> str:
        handler = type("Handler", (_Handler,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_llamafile_error_event_mid_stream_raises_not_answers(fake_server):
    llm = LlamafileLLM(base_url=fake_server("error-event"), request_timeout=5)
    with pytest.raises(LLMBackendError, match="context overflow"):
        "".join(llm.stream("hi"))


def test_llamafile_http_error_raises(fake_server):
    llm = LlamafileLLM(base_url=fake_server("http-500"), request_timeout=5)
    with pytest.raises(LLMBackendError, match="HTTP 500"):
        llm.invoke("hi")


def test_llamafile_hung_server_times_out_with_message(fake_server):
    url = fake_server("hang")
    llm = LlamafileLLM(base_url=url, request_timeout=1)
    started = time.monotonic()
    with pytest.raises(LLMBackendError, match="did not answer within 1 s"):
        llm.invoke("hi")
    assert time.monotonic() - started < 4


def test_llamafile_token_count_http_error_is_a_one_line_backend_error(fake_server, settings):
    url = fake_server("tokenize-500")
    local = load_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=5))
    with pytest.raises(LLMBackendError) as caught:
        local.count_tokens("How many tokens?")
    message = str(caught.value)
    assert message.startswith(f"llama.cpp server at {url} answered HTTP 500 to /tokenize") and "\n" not in message


def test_llamafile_token_count_on_a_server_that_went_away_names_url(settings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"mode": "ok"}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    local = load_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=2))
    assert local.count_tokens("three tokens here") == 3
    server.shutdown()
    server.server_close()  # the port now refuses connections
    with pytest.raises(LLMBackendError, match=rf"cannot reach a llama.cpp server at {url} \(counting tokens\): is it running\?"):
        local.count_tokens("hi")


def test_llamafile_dead_server_names_url(settings):
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(LLMBackendError, match="127.0.0.1:9"):
        load_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=2))


def test_missing_model_names_path_and_fix(settings, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFound) as caught:
        load_llm(settings.with_overrides(llm_model=str(missing)))
    assert str(missing) in str(caught.value) and "--model" in str(caught.value)


def test_non_gguf_file_is_rejected_before_loading(settings, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("not a model")
    with pytest.raises(InvalidModelFile, match="not a GGUF"):
        load_llm(settings.with_overrides(llm_model=str(bogus)))


@pytest.mark.integration  # reads the real model file
def test_truncated_gguf_is_rejected(settings, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(default_llm_path().read_bytes()[:1_000_000])
    with pytest.raises(InvalidModelFile):
        load_llm(settings.with_overrides(llm_model=str(truncated)))


def test_gpt4all_copy_only_when_pre_tokenizer_unknown(tmp_path):
    path = tmp_path / "model.gguf"
    assert gpt4all_compatible_copy(path, "llama-bpe", tmp_path) == path
    assert gpt4all_compatible_copy(path, None, tmp_path) == path


def write_tiny_gguf(path: Path, pre_tokenizer: str = "smollm") -> Path:
    """A small real GGUF file: a pre-tokenizer name and one tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def pre_tokenizer_of(path: Path) -> str:
    import gguf

    return gguf.GGUFReader(path, "r").get_field("tokenizer.ggml.pre").contents()


def copies_in(cache: Path) -> list[str]:
    return sorted(entry.name for entry in (cache / "models" / "gpt4all").iterdir() if not entry.name.endswith(".lock"))


DIE_MID_WRITE = """
import os, sys
from pathlib import Path
import gguf
from rag.llm import gpt4all_compatible_copy
gguf.GGUFWriter.write_tensor_data = lambda *args, **kwargs: os._exit(3)  # the process dies mid-write
gpt4all_compatible_copy(Path(sys.argv[1]), "smollm", Path(sys.argv[2]))
"""


@pytest.mark.integration  # a real process, killed mid-write
def test_gpt4all_copy_of_a_process_that_died_mid_write_is_never_used_and_is_cleaned(tmp_path):
    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"
    died = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(source), str(cache)], capture_output=True, text=True, timeout=60)
    assert died.returncode == 3, died.stderr
    [partial] = copies_in(cache)
    assert partial.startswith(".") and partial.endswith(".tmp"), "a partial copy is never under the copy's name"

    copy = gpt4all_compatible_copy(source, "smollm", cache)
    assert pre_tokenizer_of(copy) == "starcoder" and copy.stat().st_size >= source.stat().st_size
    assert copies_in(cache) == [copy.name], "the dead run's partial file was removed"
    assert gpt4all_compatible_copy(source, "smollm", cache) == copy


def test_gpt4all_copy_removes_partial_copies_left_by_earlier_runs(tmp_path):
    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"
    folder = cache / "models" / "gpt4all"
    folder.mkdir(parents=True)
    stat = source.stat()
    name = f"model.{stat.st_size}-{stat.st_mtime_ns}.gguf"
    left = [folder / f".{name}.4242.1.tmp", folder / f"model.{stat.st_size}-{stat.st_mtime_ns}.tmp4242"]  # this version's, an earlier one's
    for partial in left:
        partial.write_bytes(b"GGUF")
    copy = gpt4all_compatible_copy(source, "smollm", cache)
    assert copies_in(cache) == [copy.name] == [name] and pre_tokenizer_of(copy) == "starcoder"


def test_gpt4all_copy_interrupted_in_process_leaves_nothing_behind(tmp_path, monkeypatch):
    import gguf

    source, cache = write_tiny_gguf(tmp_path / "model.gguf"), tmp_path / "cache"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gpt4all_compatible_copy(source, "smollm", cache)
    assert copies_in(cache) == []
    monkeypatch.undo()
    assert pre_tokenizer_of(gpt4all_compatible_copy(source, "smollm", cache)) == "starcoder"


# --- stops per task --------------------------------------------------------------------------------


class StopRecordingLLM(LLM):
    """Records the stop sequences each call gets."""

    calls: list = []

    @property
    def _llm_type(self) -> str:
        return "stop-recording"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.calls.append(list(stop or []))
        return "ok"


def test_task_stops_are_added_for_answers_and_never_for_summaries():
    llm = StopRecordingLLM(calls=[])
    local = LocalLLM(llm, "fake", "m.gguf", "generic", 2048, 64, len)
    for kind in ("rag", "condense", "summarize", "map", "reduce"):
        local.for_task(kind).invoke("text")
    answer, condense, *summaries = llm.calls
    assert "\n\n" in answer and "\n\n" in condense and "\nQuestion:" in answer
    assert summaries == [[], [], []]


# --- the real backends (integration) -------------------------------------------------------------


@pytest.mark.integration
def test_gpt4all_compatible_copy_changes_only_the_pre_tokenizer(settings):
    source = default_llm_path()
    copy = gpt4all_compatible_copy(source, "smollm", settings.cache_dir)
    assert copy != source and copy.is_file()
    original, patched = read_gguf_metadata(source), read_gguf_metadata(copy)
    assert (original.pre_tokenizer, patched.pre_tokenizer) == ("smollm", "starcoder")
    assert patched.chat_template == original.chat_template
    assert gpt4all_compatible_copy(source, "smollm", settings.cache_dir) == copy  # cached


def _check_streamed_answer(local, max_tokens: int) -> str:
    chunks = list(local.llm.stream(CHATML_QUESTION))
    text = "".join(chunks)
    assert len(chunks) > 1, "the backend must stream token by token"
    assert "paris" in text.lower()
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    assert local.count_tokens(text) < max_tokens, "stopped at the end of turn, not at max_tokens"
    return text


@pytest.mark.integration
def test_llamacpp_takes_a_calls_stops_in_addition_to_its_own(local_llm):
    assert local_llm.llm.stop == ["<|im_end|>", "<|im_start|>"]
    text = local_llm.llm.bind(stop=["Paris"]).invoke(CHATML_QUESTION)
    assert text.strip() and "Paris" not in text
    assert local_llm.count_tokens(text) < local_llm.max_tokens


@pytest.mark.integration
def test_llamacpp_backend_streams_an_answer(local_llm):
    assert (local_llm.backend, local_llm.family) == ("llamacpp", "chatml")
    assert local_llm.n_ctx >= 2048
    _check_streamed_answer(local_llm, 96)


@pytest.mark.integration
def test_gpt4all_backend_streams_an_answer(settings):
    local = load_llm(settings.with_overrides(backend="gpt4all"))
    assert local.family == "chatml"
    _check_streamed_answer(local, settings.max_tokens)


@pytest.mark.integration
def test_llamafile_backend_streams_an_answer(settings, llama_server):
    local = load_llm(settings.with_overrides(backend="llamafile", llamafile_url=llama_server))
    assert local.family == "chatml"
    assert local.model_name == Path(default_llm_path()).name
    _check_streamed_answer(local, settings.max_tokens)
