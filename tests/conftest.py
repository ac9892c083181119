"""Shared fixtures.

Fast tier (``pytest -m "not integration"``, seconds): fake models (``FakeListLLM``,
``DeterministicFakeEmbedding``, fake HTTP servers on 127.0.0.1), Chroma on disk in a temp
folder; no model file is loaded or converted (:func:`_fast_tier_loads_no_model` fails a
test that does) and no slow child process runs. Integration tier
(``@pytest.mark.integration``): the real default models and model files, the embedder
conversion, a real llama.cpp server, loader and worker processes with their limits, the
CLI as a real process, the wheel build. Sockets to anything but loopback are blocked for
every test (pytest-socket, see pyproject), so nothing can be downloaded.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from rag.server import LlamaServer
from rag.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Deliver Ctrl-C even when the suite was started in the background (``make test &``, ``nohup``).

    A shell without job control starts background commands with SIGINT ignored, and every
    child inherits that: the tests that stop ``rag`` with Ctrl-C would see it exit 0. A
    handler (unlike "ignored") is reset to the default in each child that starts.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's RAG_* variables or config file.

    Unless a test uses the real embedder (the ``embeddings`` fixture), the score cut-off is
    off (``RAG_MIN_SCORE=0``, and ``RAG_UNMENTIONED_MAX_SCORE=0``): fake embeddings have no
    meaningful cosine similarity. A test of the cut-off with fakes sets ``min_score`` itself. So is the cut of embedded text
    (``RAG_EMBED_TOKENS=0``): a fake embedder matches only the exact text it embedded, which
    tests build with :func:`rag.split.embedding_text`.
    """
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)
    if "embeddings" not in request.fixturenames:
        monkeypatch.setenv("RAG_MIN_SCORE", "0")
        monkeypatch.setenv("RAG_UNMENTIONED_MAX_SCORE", "0")
        monkeypatch.setenv("RAG_EMBED_TOKENS", "0")


@pytest.fixture(autouse=True)
def _fast_tier_loads_no_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the integration tier, loading a model (llama.cpp, gpt4all) or converting the embedder fails the test."""
    if request.node.get_closest_marker("integration"):
        return
    import gpt4all._pyllmodel
    import llama_cpp.llama_cpp

    import rag.embed_convert

    def refuse(what: str):
        def load(*args, **kwargs):
            # pytest.fail raises a BaseException: no `except Exception` in the code under test hides it.
            pytest.fail(f"{what} in a fast-tier test: use a fake, or mark the test @pytest.mark.integration", pytrace=False)

        return load

    # The native loaders themselves, where a missing file has already been refused.
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_load_from_file", refuse("llama.cpp loads a model"))
    monkeypatch.setattr(gpt4all._pyllmodel.LLModel, "__init__", refuse("gpt4all loads a model"))
    monkeypatch.setattr(rag.embed_convert, "convert_minilm", refuse("the embedder is converted"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private data dir (stores) and the shared model cache (derived models)."""
    return Settings(data_dir=tmp_path / "rag-data", temperature=0.0, max_tokens=96)


@pytest.fixture
def fake_embeddings():
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=384)


# --- real models (integration tier) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def embeddings():
    """The real default embedder (all-MiniLM-L6-v2 through GPT4All), loaded once."""
    from rag.embed import load_embeddings

    return load_embeddings(Settings())


@pytest.fixture(scope="session")
def local_llm():
    """The real default LLM (SmolLM2-135M via llama.cpp), greedy, loaded once."""
    from rag.llm import load_local_llm

    return load_local_llm(Settings(temperature=0.0, max_tokens=96))


def start_llama_server(model: Path, **options) -> LlamaServer:
    """A real llama.cpp server on a free loopback port (stop it with ``.stop()``)."""
    return LlamaServer(model, **options).start()


@pytest.fixture(scope="session")
def llama_server():
    """URL of a real llama.cpp server serving the default model on 127.0.0.1."""
    from rag.models import default_llm_path

    with LlamaServer(default_llm_path(), threads=2) as server:
        yield server.url
