"""A real HTTP server on 127.0.0.1 for the web-loading tests.

Routes map a path to a response, or to a function that writes one itself
(redirects, slow or oversized bodies)::

    with LocalSite({"/a.html": Page(b"<html>...</html>")}) as site:
        site.url("/a.html")
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Page:
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, handler: BaseHTTPRequestHandler) -> None:
        """Write this response; a client that went away is not an error."""
        try:
            handler.send_response(self.status)
            handler.send_header("Content-Type", self.content_type)
            handler.send_header("Content-Length", str(len(self.body)))
            for name, value in self.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(self.body)
        except OSError:
            pass


def redirect(location: str, status: int = 302) -> Page:
    return Page(b"", status=status, headers={"Location": location})


def delayed(page: Page, seconds: float) -> Callable:
    """``page``, sent after ``seconds`` of silence (a slow server, or a slow hop of a redirect chain)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
        page.send(handler)

    return respond


def trickle(seconds: float, content_type: str = "text/html") -> Callable:
    """A response that sends one byte every 0.2 s for ``seconds`` (a slow or hostile server)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.end_headers()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                handler.wfile.write(b"a")
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    return respond


def endless(chunk: bytes = b"x" * 65536, content_type: str = "text/plain") -> Callable:
    """A response without Content-Length that never ends (until the client hangs up)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.end_headers()
        try:
            for _ in range(100_000):
                handler.wfile.write(chunk)
        except OSError:
            pass

    return respond


def gzip_bomb(size: int) -> Page:
    """A small gzip body that expands to ``size`` bytes."""
    return Page(gzip.compress(b"a" * size), content_type="text/plain", headers={"Content-Encoding": "gzip"})


class ConditionalPage:
    """A page with an ETag and a Last-Modified date that answers a matching conditional GET with 304.

    With ``honour=False`` it ignores ``If-None-Match`` / ``If-Modified-Since`` like many servers
    do. ``full`` and ``not_modified`` count the full downloads and the 304 answers.
    """

    def __init__(self, body: bytes, etag: str | None = '"v1"', last_modified: str | None = "Tue, 01 Dec 2026 10:00:00 GMT", honour: bool = True):
        self.body, self.etag, self.last_modified, self.honour = body, etag, last_modified, honour
        self.full = self.not_modified = 0

    def change(self, body: bytes, etag: str | None = '"v2"', last_modified: str | None = "Wed, 02 Dec 2026 10:00:00 GMT") -> None:
        self.body, self.etag, self.last_modified = body, etag, last_modified

    def _unchanged(self, handler: BaseHTTPRequestHandler) -> bool:
        if not self.honour:
            return False
        if_none_match = handler.headers.get("If-None-Match")
        if if_none_match is not None:  # RFC 9110: If-Modified-Since is ignored when If-None-Match is sent
            return self.etag is not None and self.etag in [tag.strip() for tag in if_none_match.split(",")]
        return self.last_modified is not None and handler.headers.get("If-Modified-Since") == self.last_modified

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        validators = {"ETag": self.etag, "Last-Modified": self.last_modified}
        unchanged = self._unchanged(handler)
        handler.send_response(304 if unchanged else 200)
        for name, value in validators.items():
            if value is not None:
                handler.send_header(name, value)
        if unchanged:
            self.not_modified += 1
            handler.end_headers()
            return
        self.full += 1
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        try:
            handler.wfile.write(self.body)
        except OSError:
            pass


class LocalSite:
    def __init__(self, routes: dict[str, Page | Callable] | None = None) -> None:
        self.routes: dict[str, Page | Callable] = dict(routes or {})
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                site.requests.append(self.path)
                route = site.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    route = Page(b"not found", content_type="text/plain", status=404)
                if callable(route):
                    route(self)
                    return
                route.send(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> LocalSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
