"""Fakes the batch tests share: a scripted LLM (counts its calls, cites the passages it is shown),
a fake llama.cpp server on 127.0.0.1 (streams tokens, can fail mid-stream, counts requests),
a small corpus, and readers of the output folder.

The factories are module-level functions, so worker processes can build the fakes too.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from langchain_core.language_models.llms import LLM
from pydantic import Field

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


# --- a small corpus and the output folder -----------------------------------------------------------

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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_temporaries(folder: Path) -> bool:
    return not [path for path in folder.rglob("*") if path.name.endswith(".tmp")]
