"""Choosing and loading the backend: load_llm's BaseLLM, identity without loading, readiness, errors, stops per task.

The backends' own behaviour is tested in ``tests/backends/``; the three real backends here (integration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.llms import LLM

from rag.llm import LocalLLM, backend_checks, identify_llm, load_llm, load_local_llm, server_url
from rag.models import InvalidModelFile, ModelNotFound, default_llm_path
from tests.fake_llama_server import fake_server  # noqa: F401 (a fixture)

CHATML_QUESTION = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France? Answer in one short sentence.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


# --- choosing the backend --------------------------------------------------------------------------


def test_load_llm_gives_the_langchain_llm_with_what_it_is_in_its_metadata(settings, fake_server):
    from langchain_core.language_models.llms import BaseLLM

    llm = load_llm(settings.with_overrides(backend="llamafile", llamafile_url=fake_server("ok"), request_timeout=5))
    assert isinstance(llm, BaseLLM)
    assert llm.metadata["rag"] == {"model": "fake-chatml.gguf", "backend": "llamafile", "family": "chatml", "n_ctx": settings.n_ctx, "max_tokens": 96}
    assert "<|im_end|>" in llm.stop


def test_identify_llm_asks_a_server_without_loading_anything(settings, fake_server):
    identity = identify_llm(settings.with_overrides(backend="llamafile", llamafile_url=fake_server("ok"), prompt="generic"))
    assert (identity.model, identity.backend, identity.family) == ("fake-chatml.gguf", "llamafile", "generic")


def test_identify_llm_of_a_missing_model_file_names_it(settings, tmp_path):
    with pytest.raises(ModelNotFound, match="nope.gguf"):
        identify_llm(settings.with_overrides(llm_model=str(tmp_path / "nope.gguf")))


def test_only_the_server_backend_runs_on_a_server(settings):
    assert server_url(settings) is None and server_url(settings.with_overrides(backend="gpt4all")) is None
    assert server_url(settings.with_overrides(backend="llamafile", llamafile_url="http://127.0.0.1:8099")) == "http://127.0.0.1:8099"


def test_only_the_server_backend_has_a_readiness_check_of_its_own(settings):
    assert backend_checks(settings) == [] and backend_checks(settings.with_overrides(backend="gpt4all")) == []
    [server] = backend_checks(settings.with_overrides(backend="llamafile", llamafile_url="http://127.0.0.1:8099"))
    assert server.name == "llama.cpp server" and server.fix.endswith("--port 8099")


def test_the_llm_classes_take_their_defaults_from_settings():
    from rag.backends.gpt4all import GPT4AllLLM
    from rag.backends.llama_server import LlamafileLLM
    from rag.settings import Settings

    defaults = Settings.model_fields
    server = LlamafileLLM()
    assert (server.base_url, server.request_timeout, server.max_tokens, server.temperature, server.seed) == tuple(
        defaults[name].default for name in ("llamafile_url", "request_timeout", "max_tokens", "temperature", "seed")
    )
    gpt4all = GPT4AllLLM(model_path="m.gguf")
    assert (gpt4all.max_tokens, gpt4all.n_batch, gpt4all.allow_download) == (256, defaults["n_batch"].default, False)


@pytest.mark.integration  # reads the real model file's header
def test_identify_llm_reads_the_family_from_the_model_file(settings):
    identity = identify_llm(settings)
    assert (identity.model, identity.backend, identity.family, identity.n_ctx) == (default_llm_path().name, "llamacpp", "chatml", settings.n_ctx)


# --- errors ----------------------------------------------------------------------------------------


def test_missing_model_names_path_and_fix(settings, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFound) as caught:
        load_local_llm(settings.with_overrides(llm_model=str(missing)))
    assert str(missing) in str(caught.value) and "--model" in str(caught.value)


def test_non_gguf_file_is_rejected_before_loading(settings, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("not a model")
    with pytest.raises(InvalidModelFile, match="not a GGUF"):
        load_local_llm(settings.with_overrides(llm_model=str(bogus)))


@pytest.mark.integration  # reads the real model file
def test_truncated_gguf_is_rejected(settings, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(default_llm_path().read_bytes()[:1_000_000])
    with pytest.raises(InvalidModelFile):
        load_local_llm(settings.with_overrides(llm_model=str(truncated)))


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


def _check_streamed_answer(local, max_tokens: int) -> str:
    chunks = list(local.llm.stream(CHATML_QUESTION))
    text = "".join(chunks)
    assert len(chunks) > 1, "the backend must stream token by token"
    assert "paris" in text.lower()
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    assert local.count_tokens(text) < max_tokens, "stopped at the end of turn, not at max_tokens"
    return text


@pytest.mark.integration
def test_llamacpp_backend_streams_an_answer(local_llm):
    assert (local_llm.backend, local_llm.family) == ("llamacpp", "chatml")
    assert local_llm.n_ctx >= 2048
    _check_streamed_answer(local_llm, 96)


@pytest.mark.integration
def test_gpt4all_backend_streams_an_answer(settings):
    local = load_local_llm(settings.with_overrides(backend="gpt4all"))
    assert local.family == "chatml"
    _check_streamed_answer(local, settings.max_tokens)


@pytest.mark.integration
def test_llamafile_backend_streams_an_answer(settings, llama_server):
    local = load_local_llm(settings.with_overrides(backend="llamafile", llamafile_url=llama_server))
    assert local.family == "chatml"
    assert local.model_name == Path(default_llm_path()).name
    _check_streamed_answer(local, settings.max_tokens)
