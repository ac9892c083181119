"""A real `rag serve` process for the tests: :func:`running_serve` starts it on a free loopback port and stops it.

Example::

    with running_serve(data_dir, {"RAG_API_KEY": "k"}, ["--queue-size", "1"]) as served:
        served.post("/v1/chat/completions", {"messages": [...]})
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from rag.server import free_port
from tests.conftest import REPO_ROOT


class Served:
    """A running `rag serve`: its URL, process and the models it lists."""

    def __init__(self, url: str, process: subprocess.Popen, api_key: str | None, log_path: Path):
        self.url = url
        self.log_path = log_path
        self.port = int(url.rsplit(":", 1)[1])
        self.process = process
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        models = requests.get(f"{url}/v1/models", headers=self.headers, timeout=10).json()["data"]
        self.llm = next(model["id"] for model in models if model["role"] == "llm")
        self.embedder = next(model["id"] for model in models if model["role"] == "embedding")

    def post(self, path: str, body: object = None, *, headers: dict | None = None, **kwargs) -> requests.Response:
        """POST ``body`` (JSON-encoded unless bytes or str) with the API key and a JSON content type."""
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        return requests.post(f"{self.url}{path}", data=data, headers={**self.headers, "Content-Type": "application/json", **(headers or {})}, timeout=120, **kwargs)

    def log(self) -> str:
        """What the server has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", timeout=10).json()

    def rss_kb(self) -> int:
        """The server process's resident memory."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


@contextlib.contextmanager
def running_serve(data_dir: Path, env: dict[str, str], args: list[str], ready_seconds: float = 120) -> Iterator[Served]:
    """`rag serve ARGS` over ``data_dir`` with the RAG_* variables of ``env`` only; its log is ``data_dir/serve.log``."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAG_")}
    environment.update(RAG_DATA_DIR=str(data_dir), **env)
    log_path = data_dir / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "rag", "serve", "--port", str(port), *args], cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_seconds
            while True:
                assert process.poll() is None, f"rag serve exited: {log_path.read_text()}"
                try:
                    if requests.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"rag serve did not become ready in {ready_seconds:g} s"
                time.sleep(0.2)
            yield Served(url, process, env.get("RAG_API_KEY"), log_path)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
