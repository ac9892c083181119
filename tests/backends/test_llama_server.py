"""The llama.cpp server backend: /completion streaming errors, /props, /tokenize, a server that went away."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from rag.backends.llama_server import LlamafileLLM, read_server_model
from rag.errors import LLMBackendError
from rag.llm import load_local_llm
from tests.fake_llama_server import FakeServerHandler, fake_server  # noqa: F401 (a fixture)


def test_llamafile_error_event_mid_stream_raises_not_answers(fake_server):
    llm = LlamafileLLM(base_url=fake_server("error-event"), request_timeout=5)
    with pytest.raises(LLMBackendError, match="context overflow"):
        "".join(llm.stream("hi"))


def test_llamafile_http_error_raises(fake_server):
    llm = LlamafileLLM(base_url=fake_server("http-500"), request_timeout=5)
    with pytest.raises(LLMBackendError, match="HTTP 500"):
        llm.invoke("hi")


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_llamafile_hung_server_times_out_with_message(fake_server):
    url = fake_server("hang")
    llm = LlamafileLLM(base_url=url, request_timeout=1)
    started = time.monotonic()
    with pytest.raises(LLMBackendError, match="did not answer within 1 s"):
        llm.invoke("hi")
    assert time.monotonic() - started < 4


def test_llamafile_token_count_http_error_is_a_one_line_backend_error(fake_server, settings):
    url = fake_server("tokenize-500")
    local = load_local_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=5))
    with pytest.raises(LLMBackendError) as caught:
        local.count_tokens("How many tokens?")
    message = str(caught.value)
    assert message.startswith(f"llama.cpp server at {url} answered HTTP 500 to /tokenize") and "\n" not in message


def test_llamafile_token_count_on_a_server_that_went_away_names_url(settings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (FakeServerHandler,), {"mode": "ok"}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    local = load_local_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=2))
    assert local.count_tokens("three tokens here") == 3
    server.shutdown()
    server.server_close()  # the port now refuses connections
    with pytest.raises(LLMBackendError, match=rf"cannot reach a llama.cpp server at {url} \(counting tokens\): is it running\?"):
        local.count_tokens("hi")


def test_props_tell_the_served_model_its_template_and_context(fake_server):
    url = fake_server("ok")
    served = read_server_model(url)
    assert (served.url, served.model_name, served.chat_template, served.n_ctx) == (url, "fake-chatml.gguf", "<|im_start|>", None)


def test_llamafile_dead_server_names_url(settings):
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(LLMBackendError, match="127.0.0.1:9"):
        load_local_llm(settings.with_overrides(backend="llamafile", llamafile_url=url, request_timeout=2))
