"""A fake llama.cpp server on 127.0.0.1 for protocol errors: the `fake_server` fixture (`fake_server(mode)` returns its URL).

Use it by importing the fixture: `from tests.fake_llama_server import fake_server  # noqa: F401`.
"""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest


class FakeServerHandler(http.server.BaseHTTPRequestHandler):
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
        handler = type("Handler", (FakeServerHandler,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
