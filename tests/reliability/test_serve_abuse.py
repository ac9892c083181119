"""`rag serve` under abuse: hostile requests, concurrent and vanishing clients, wrong keys, memory under load.

The real `rag serve` process (real embedder and store) answers with the llamafile backend from a
fake llama.cpp server that streams one token every 20 ms for as many tokens as asked (``n_predict``)
and counts the generations it runs, so a generation left running for a client that went away shows.
After every test: no generation runs, the model is free, nobody waits, the server logged no traceback.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests

from rag.settings import Settings
from tests.conftest import SAMPLE_DATA
from tests.fake_llama_server import FakeServerHandler
from tests.serve.running import Served, running_serve

pytestmark = pytest.mark.integration

API_KEY = "abuse-key-4567"
QUEUE_SIZE = 2
TOKEN_SECONDS = 0.02
LONG = 1500  # max_tokens of an answer that only a client leaving ends (30 s of tokens)
QUESTION = "When was Kestrel Point Lighthouse first lit?"
ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class LlamaCounters:
    """What the fake llama.cpp server has seen: generations running now, started and cut off by rag."""

    url: str = ""
    active: int = 0
    started: int = 0
    cut_off: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_idle(self, seconds: float) -> float:
        """Seconds until no generation runs (fails after ``seconds``)."""
        began = time.monotonic()
        while self.active:
            assert time.monotonic() - began < seconds, f"a generation still runs {seconds:g} s later: {self.active} active"
            time.sleep(0.01)
        return time.monotonic() - began


class StreamingLlama(FakeServerHandler):
    """``/completion`` streams ``n_predict`` tokens, one per TOKEN_SECONDS; ``/props`` and ``/tokenize`` as the fake server answers them."""

    counters: LlamaCounters

    def do_POST(self):  # noqa: N802
        if self.path != "/completion":
            return super().do_POST()
        tokens = int(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["n_predict"])
        with self.counters.lock:
            self.counters.active += 1
            self.counters.started += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for index in range(tokens):
                self.wfile.write(b'data: {"content": "word%d ", "stop": false}\n\n' % index)
                self.wfile.flush()
                time.sleep(TOKEN_SECONDS)
            self.wfile.write(b'data: {"content": "", "stop": true}\n\n')
        except (BrokenPipeError, ConnectionResetError):
            with self.counters.lock:
                self.counters.cut_off += 1
        finally:
            with self.counters.lock:
                self.counters.active -= 1


@pytest.fixture(scope="module")
def llama():
    counters = LlamaCounters()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (StreamingLlama,), {"counters": counters}))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    counters.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield counters
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, embeddings, llama):
    """`rag serve --server FAKE` over the sample corpus, with an API key and a queue of 2."""
    from rag.indexing import ingest

    data_dir = tmp_path_factory.mktemp("rag-serve-abuse")
    ingest([str(SAMPLE_DATA)], Settings(data_dir=data_dir), embeddings)
    with running_serve(data_dir, {"RAG_API_KEY": API_KEY, "RAG_K": "2"}, ["--queue-size", str(QUEUE_SIZE), "--server", llama.url]) as served:
        yield served


@pytest.fixture(autouse=True)
def nothing_leaks(served, llama):
    """After each test: no generation left running, the model free, the queue empty, no traceback logged."""
    yield
    llama.wait_idle(2.0)
    deadline = time.monotonic() + 2.0
    while (health := served.health())["busy"] or health["waiting"]:
        assert time.monotonic() < deadline, f"the server still holds or queues work: {health}"
        time.sleep(0.02)
    assert served.process.poll() is None, "rag serve died"
    log = served.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def question(text: str = QUESTION, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], **extra}


def assert_openai_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"] and error["type"], error
    return error


# --- raw clients, to leave at any moment --------------------------------------------------------------


def send_request(served: Served, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """A client that has sent its whole request and may read, or leave, as it likes."""
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    sock.sendall(head.encode() + raw)
    return sock


def read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    received = b""
    while not done(received):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection: {received[-300:]!r}"
        received += chunk
    return received


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, f"{what} not within {seconds:g} s"
        time.sleep(0.01)
    return time.monotonic() - began


def sse_events(body: bytes) -> list:
    return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in body.decode().split("\n\n") if line.startswith("data: ")]


# --- hostile requests ----------------------------------------------------------------------------


WRONG_KEYS = {"no-key": {}, "wrong-key": {"Authorization": "Bearer nope"}, "empty-bearer": {"Authorization": "Bearer "},
              "basic-scheme": {"Authorization": f"Basic {API_KEY}"}, "key-plus-one": {"Authorization": f"Bearer {API_KEY}x"},
              "key-prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"}, "latin1-bytes": {"Authorization": b"Bearer \xff\xfe"}}  # fmt: skip

HOSTILE = [
    # (id, path, body, status)
    ("malformed-json", "/v1/chat/completions", b'{"messages": [', 400),
    ("json-nested-200k-deep", "/v1/chat/completions", b"[" * 200_000, 400),
    ("not-utf8", "/v1/chat/completions", b'\xff\xfe{"messages": []}', 400),
    ("empty-body", "/v1/chat/completions", b"", 400),
    ("null", "/v1/chat/completions", b"null", 400),
    ("a-string", "/v1/chat/completions", b'"hello"', 400),
    ("messages-a-string", "/v1/chat/completions", {"messages": "hello"}, 400),
    ("messages-numbers", "/v1/chat/completions", {"messages": [1, 2]}, 400),
    ("messages-empty", "/v1/chat/completions", {"messages": []}, 400),
    ("message-without-role", "/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400),
    ("content-a-number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
    ("content-an-image", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/"}}]}]}, 400),
    ("tool-role", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "hi"}]}, 400),
    ("assistant-last", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400),
    ("blank-question", "/v1/chat/completions", question(" \n\t "), 400),
    ("max-tokens-a-word", "/v1/chat/completions", question(max_tokens="ten"), 400),
    ("max-tokens-zero", "/v1/chat/completions", question(max_tokens=0), 400),
    ("max-tokens-negative", "/v1/chat/completions", question(max_tokens=-5), 400),
    ("max-tokens-10e30", "/v1/chat/completions", question(max_tokens=10**30), 400),
    ("max-tokens-1e300-float", "/v1/chat/completions", question(max_tokens=1e300), 400),
    ("max-completion-tokens-huge", "/v1/chat/completions", question(max_completion_tokens=2**63), 400),
    ("temperature-a-word", "/v1/chat/completions", question(temperature="hot"), 400),
    ("temperature-nan", "/v1/chat/completions", json.dumps(question()).replace("}]", "}], \"temperature\": NaN", 1).encode(), 400),
    ("stream-not-bool", "/v1/chat/completions", question(stream="maybe"), 400),
    ("five-stops", "/v1/chat/completions", question(stop=["a", "b", "c", "d", "e"]), 400),
    ("empty-stop", "/v1/chat/completions", question(stop=[""]), 400),
    ("n-2", "/v1/chat/completions", question(n=2), 400),
    ("model-a-number", "/v1/chat/completions", question(model=42), 400),
    ("model-a-path", "/v1/chat/completions", question(model="../../etc/passwd.gguf"), 404),
    ("embeddings-none", "/v1/embeddings", {"input": []}, 400),
    ("embeddings-257", "/v1/embeddings", {"input": ["x"] * 257}, 400),
    ("embeddings-tokens", "/v1/embeddings", {"input": [[1, 2, 3]]}, 400),
    ("embeddings-a-number", "/v1/embeddings", {"input": 5}, 400),
    ("embeddings-hex", "/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400),
    ("embeddings-other-model", "/v1/embeddings", {"input": "x", "model": "/etc/passwd"}, 404),
    ("search-empty", "/v1/search", {"query": ""}, 400),
    ("search-a-list", "/v1/search", {"query": ["a"]}, 400),
    ("search-k-0", "/v1/search", {"query": "x", "k": 0}, 400),
    ("search-k-101", "/v1/search", {"query": "x", "k": 101}, 400),
    ("search-missing", "/v1/search", {"q": "x"}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_requests_get_openai_errors_never_a_500(served, llama, path, body, status):
    started = llama.started
    assert_openai_error(served.post(path, body), status)
    assert llama.started == started  # refused before any generation


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/search", "/v1/models"])
@pytest.mark.parametrize("headers", WRONG_KEYS.values(), ids=WRONG_KEYS.keys())
def test_wrong_or_missing_api_keys_are_401_on_every_endpoint(served, path, headers):
    call = requests.get if path == "/v1/models" else requests.post
    response = call(f"{served.url}{path}", data=json.dumps(question()), headers={"Content-Type": "application/json", **headers}, timeout=30)
    assert assert_openai_error(response, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v1/chat/completions", 405), ("POST", "/v1/models", 405), ("POST", "/v1/nothing", 404)])
def test_wrong_routes_are_openai_errors(served, method, path, status):
    assert_openai_error(requests.request(method, f"{served.url}{path}", headers=served.headers, timeout=30), status)


def test_oversized_bodies_are_413_declared_or_chunked(served, llama):
    started = llama.started
    body = json.dumps(question("x" * 2_000_000))
    assert assert_openai_error(served.post("/v1/chat/completions", body), 413)["code"] == "request_too_large"

    def pieces():  # no Content-Length: the server counts what it reads
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536].encode()

    chunked = requests.post(f"{served.url}/v1/chat/completions", data=pieces(), headers={**served.headers, "Content-Type": "application/json"}, timeout=60)
    assert assert_openai_error(chunked, 413)["code"] == "request_too_large"
    assert llama.started == started


# --- concurrent and vanishing clients ----------------------------------------------------------------


def test_concurrent_clients_streaming_and_not_get_whole_answers_or_429(served, llama):
    """10 clients at once (half streaming), one model and a queue of 2: each gets a whole answer or a 429 with Retry-After."""
    started = llama.started
    barrier = threading.Barrier(10)
    results: list[tuple[bool, requests.Response]] = []

    def client(stream: bool) -> None:
        barrier.wait()
        results.append((stream, served.post("/v1/chat/completions", question(max_tokens=8, stream=stream))))

    threads = [threading.Thread(target=client, args=(index % 2 == 0,)) for index in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(response.status_code for _, response in results)
    assert len(statuses) == 10 and set(statuses) <= {200, 429} and statuses.count(200) >= 1 + QUEUE_SIZE, statuses
    for stream, response in results:
        if response.status_code == 429:
            assert assert_openai_error(response, 429)["code"] == "model_busy" and int(response.headers["Retry-After"]) >= 1
        elif stream:
            events = sse_events(response.content)
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
            assert "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-2]).split() == [f"word{i}" for i in range(8)]
        else:
            assert response.json()["choices"][0]["message"]["content"].split() == [f"word{i}" for i in range(8)]
    assert llama.started - started == statuses.count(200)  # one generation per answer, none for a refused client


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_a_client_leaving_mid_answer_stops_its_generation_within_a_second(served, llama, stream):
    cut_off = llama.cut_off
    sock = send_request(served, question(max_tokens=LONG, stream=stream))
    if stream:
        read_until(sock, lambda received: received.count(b'"content": "word') >= 3)
    else:
        wait_for(lambda: llama.active == 1, 10, "the generation start")
        time.sleep(0.3)
    sock.close()
    stopped = llama.wait_idle(1.0)
    assert llama.cut_off == cut_off + 1
    print(f"generation stopped {stopped:.3f} s after the client left ({'streamed' if stream else 'not streamed'})")


def test_clients_leaving_the_queue_never_start_a_generation(served, llama):
    running = send_request(served, question(max_tokens=LONG, stream=True))
    read_until(running, lambda received: b'"content": "word' in received)
    queued = [send_request(served, question(max_tokens=LONG, stream=stream)) for stream in (False, True)]
    wait_for(lambda: served.health()["waiting"] == 2, 5, "two queued requests")
    started = llama.started
    for sock in queued:
        sock.close()
    left = wait_for(lambda: served.health()["waiting"] == 0, 1.0, "the queue noticing its clients left")
    running.close()
    llama.wait_idle(1.0)
    time.sleep(0.5)  # time for a wrongly dequeued request to reach the llama server
    assert llama.started == started, "a client that left the queue got a generation"
    assert served.post("/v1/chat/completions", question(max_tokens=4)).status_code == 200  # the model was not leaked
    print(f"the queue noticed its clients had left after {left:.3f} s")


# --- memory -------------------------------------------------------------------------------------


def mixed_load(served: Served, rounds: int) -> dict[int, int]:
    """``rounds`` x 25 requests: 2 answers (one streamed), 1 left mid-stream, 1 embeddings, 1 search, 20 refused; statuses counted."""
    statuses: dict[int, int] = {}
    with requests.Session() as session:
        session.headers.update(served.headers)

        def post(path: str, body: object, method: str = "POST", **kwargs) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body)
            response = session.request(method, f"{served.url}{path}", data=data, timeout=60, **kwargs)
            assert response.status_code < 500, response.text[:300]
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        for index in range(rounds):
            post("/v1/chat/completions", question(f"What is QuokkaDB? ({index})", max_tokens=6))
            post("/v1/chat/completions", question(f"Who founded the bakery? ({index})", max_tokens=6, stream=True))
            sock = send_request(served, question(max_tokens=LONG, stream=True))
            read_until(sock, lambda received: b'"content": "word' in received)
            sock.close()
            post("/v1/embeddings", {"input": [f"lighthouse {index}", "bakery " * 50]})
            post("/v1/search", {"query": f"port of QuokkaDB {index}", "k": 2})
            for _ in range(5):
                post("/v1/chat/completions", b"[" * 100_000)
                post("/v1/chat/completions", {"messages": [{"role": "tool"}]})
                post("/v1/chat/completions", json.dumps(question("x" * 1_100_000)).encode())
                post("/v1/models", {}, "GET", headers={"Authorization": "Bearer wrong"})
    return statuses


def test_memory_stays_flat_under_mixed_load(served, llama):
    rounds = 8
    mixed_load(served, 2)  # warm-up: every path has run
    llama.wait_idle(2.0)
    warm = served.rss_kb()
    statuses = mixed_load(served, rounds)
    llama.wait_idle(2.0)
    after = served.rss_kb()
    print(f"RSS after warm-up {warm / 1024:.1f} MB, after {rounds * 25} more requests {after / 1024:.1f} MB ({(after - warm) / 1024:+.1f} MB); {statuses}")
    assert statuses == {200: rounds * 4, 400: rounds * 10, 401: rounds * 5, 413: rounds * 5}
    assert after - warm < 16 * 1024, f"RSS grew by {(after - warm) / 1024:.1f} MB over {rounds * 25} requests"
