"""Shared fixtures.

Fast tier: fakes (``FakeListLLM``, ``DeterministicFakeEmbedding``), no model loads.
Integration tier (``@pytest.mark.integration``): the real default models, real Chroma
on disk, a real llama.cpp server on 127.0.0.1. Sockets to anything but loopback are
blocked for every test (pytest-socket, see pyproject), so nothing can be downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.server import LlamaServer
from rag.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "data"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's RAG_* variables or config file."""
    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)


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
    from rag.llm import load_llm

    return load_llm(Settings(temperature=0.0, max_tokens=96))


def start_llama_server(model: Path, **options) -> LlamaServer:
    """A real llama.cpp server on a free loopback port (stop it with ``.stop()``)."""
    return LlamaServer(model, **options).start()


@pytest.fixture(scope="session")
def llama_server():
    """URL of a real llama.cpp server serving the default model on 127.0.0.1."""
    from rag.models import default_llm_path

    with LlamaServer(default_llm_path(), threads=2) as server:
        yield server.url
