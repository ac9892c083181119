"""A Chroma server as the store (rag.chroma_server, and rag.store / rag.indexing with ``chroma_url``).

Fast tier: URLs, the loopback warning, reserved names. Integration tier: a real server
started from the installed chromadb (``chroma run`` on 127.0.0.1), an authenticating proxy
in front of it, the real embedder and LLM for ingest, search, ask, forget and re-ingest,
and concurrent clients on one collection and on two.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.answer import Assistant
from rag.chroma_server import LOCK_COLLECTION, ChromaUnavailable, exposure_warning, is_loopback, parse_chroma_url, server_lock
from rag.cli import cli
from rag.errors import RagError
from rag.indexing import forget, ingest, list_sources, search
from rag.settings import Settings
from rag.store import RECORD_FILE, IncompatibleCollection, StoreBusy, open_client, open_collection
from tests.conftest import REPO_ROOT, SAMPLE_DATA
from tests.test_indexing import CountingEmbeddings, paragraphs

CHROMA = Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "chroma"
TOKEN = "s3cret-test-token"


# --- fast tier ------------------------------------------------------------------------------------


def test_urls_are_parsed_or_refused_with_the_fix():
    assert parse_chroma_url("http://127.0.0.1:8001") == ("127.0.0.1", 8001, False)
    assert parse_chroma_url("https://chroma.internal") == ("chroma.internal", 443, True)
    for bad in ("127.0.0.1:8000", "ftp://host", "http://host:8000/path", "http://host:port"):
        with pytest.raises(RagError, match="RAG_CHROMA_URL"):
            parse_chroma_url(bad)


def test_only_loopback_urls_pass_without_a_warning():
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:8000") and is_loopback("http://[::1]:8000")
    assert not is_loopback("http://10.0.0.5:8000") and not is_loopback("http://chroma.example.org")
    warning = exposure_warning("http://10.0.0.5:8000")
    assert "CVE-2026-45829" in warning and "never expose it to the internet" in warning
    assert exposure_warning("http://127.0.0.1:8000") is None


def test_a_server_off_loopback_is_warned_about_once(tmp_path, monkeypatch, caplog):
    def refused(*args, **kwargs):  # no other host is reachable from the tests: as if it refused
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", refused)
    monkeypatch.setattr("rag.chroma_server._warned", set())
    for _ in range(2):
        result = CliRunner().invoke(cli, ["search", "anything", "--chroma-url", "http://192.0.2.1:8000"])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: cannot reach the Chroma server at http://192.0.2.1:8000 ([Errno 111] Connection refused): start it "
            "(`chroma run --host 127.0.0.1 --port PORT --path DIR`) or set --chroma-url / RAG_CHROMA_URL to the server's http(s)://HOST:PORT"
        ]
    warnings = [record for record in caplog.records if record.levelname == "WARNING" and record.name == "rag.chroma_server"]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("the Chroma server http://192.0.2.1:8000 is not on loopback")


@pytest.mark.integration
def test_the_command_prints_the_warning_on_stderr(tmp_path):
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path), "RAG_CHROMA_URL": "http://0.0.0.0:9"}  # not loopback; refused at once
    done = subprocess.run([sys.executable, "-m", "rag", "sources"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("WARNING rag.chroma_server: the Chroma server http://0.0.0.0:9 is not on loopback") and "CVE-2026-45829" in lines[0]
    assert lines[1].startswith("error: cannot reach the Chroma server at http://0.0.0.0:9") and len(lines) == 2


def test_cli_without_a_server_fails_in_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path))
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["sources", "--chroma-url", url])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: cannot reach the Chroma server at {url} ([Errno 111] Connection refused): start it "
        "(`chroma run --host 127.0.0.1 --port PORT --path DIR`) or set --chroma-url / RAG_CHROMA_URL to the server's http(s)://HOST:PORT"
    ]


# --- a real server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    """A Chroma server from the installed chromadb on 127.0.0.1, telemetry off, for this module."""
    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"chroma run did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=15)
    log.close()


@pytest.fixture
def server_settings(chroma_url, tmp_path, request) -> Settings:
    """A collection of its own on the server; the local data dir must stay untouched."""
    name = "t-" + request.node.name.removeprefix("test_")[:40].strip("_").replace("_", "-")
    return Settings(data_dir=tmp_path / "local", chroma_url=chroma_url, collection=name, isolate_loaders=False, temperature=0.0, max_tokens=48)


def server_chunks(settings: Settings) -> list[str]:
    return open_collection(settings).get()["ids"]


@pytest.mark.integration
def test_ingest_search_ask_forget_and_reingest_on_a_server(server_settings, embeddings, local_llm, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_DATA, corpus, ignore=shutil.ignore_patterns("*.yaml"))
    first = ingest([corpus], server_settings, embeddings)
    assert first.store == server_settings.chroma_url and first.failures == [] and first.chunks_added > 0
    assert not (server_settings.store_path / RECORD_FILE).exists()  # the record is on the server

    hits = search("When was Kestrel Point Lighthouse first lit?", settings=server_settings, embeddings=embeddings)
    assert "lighthouse" in hits[0][0].metadata["source"]
    answer = Assistant(server_settings, local_llm=local_llm, embeddings=embeddings).ask("When was Kestrel Point Lighthouse first lit?")
    assert answer.answer.strip() and any("lighthouse" in source.source for source in answer.sources)

    again = ingest([corpus], server_settings, embeddings)
    assert (again.embedded, again.chunks_added, again.sources_skipped) == (0, 0, first.sources)

    lighthouse = str(corpus / "kestrel-point-lighthouse.md")
    gone = forget([lighthouse], server_settings)
    assert gone.sources_deleted == 1 and gone.chunks_deleted > 0
    assert lighthouse not in {entry.source for entry in list_sources(server_settings)}
    assert len(server_chunks(server_settings)) == first.chunks_added - gone.chunks_deleted

    back = ingest([corpus], server_settings, embeddings)
    assert (back.sources_added, back.chunks_added) == (1, gone.chunks_deleted)
    assert len(server_chunks(server_settings)) == first.chunks_added

    with pytest.raises(IncompatibleCollection):
        ingest([corpus], server_settings, CountingEmbeddings(size=384))


def clean_ids(settings: Settings, folder: Path) -> list[str]:
    clean = settings.with_overrides(collection=settings.collection + "-clean")
    ingest([folder], clean, CountingEmbeddings())
    return sorted(server_chunks(clean))


def corpus_of(tmp_path: Path, files: int = 3) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for number in range(files):
        (folder / f"doc{number}.md").write_text(paragraphs(f"doc {number}", 12), encoding="utf-8")
    return folder


def ingest_until_done(settings: Settings, folder: Path, start: threading.Barrier, busy: list) -> None:
    start.wait()
    while True:
        try:
            ingest([folder], settings, CountingEmbeddings(delay=0.05))
            return
        except StoreBusy as error:
            busy.append(str(error))
            time.sleep(0.2)


def two_clients_ingest(settings: Settings, folder: Path) -> list[str]:
    """Two clients ingest ``folder`` at once (each retrying while refused); the StoreBusy messages they met."""
    start, busy = threading.Barrier(2), []
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(ingest_until_done, settings, folder, start, busy) for _ in range(2)]:
            future.result(timeout=120)
    return busy


@pytest.mark.integration
def test_two_clients_ingesting_one_collection_leave_no_duplicates(server_settings, tmp_path):
    folder = corpus_of(tmp_path)
    busy = two_clients_ingest(server_settings, folder)
    assert busy and "is being written by rag ingest (pid" in busy[0]  # one waited for the other's lease
    ids = server_chunks(server_settings)
    assert len(ids) == len(set(ids)) and sorted(ids) == clean_ids(server_settings, folder)
    assert all(entry.state == "indexed" for entry in list_sources(server_settings))


@pytest.mark.integration
def test_even_without_the_lock_concurrent_writes_leave_no_duplicates(server_settings, tmp_path, monkeypatch):
    import contextlib

    monkeypatch.setattr("rag.indexing.store_lock", lambda *args: contextlib.nullcontext())  # both write at once
    folder = corpus_of(tmp_path)
    busy = two_clients_ingest(server_settings, folder)
    assert busy == []
    ids = server_chunks(server_settings)
    assert len(ids) == len(set(ids)) and sorted(ids) == clean_ids(server_settings, folder)


@pytest.mark.integration
def test_two_collections_are_written_at_once(server_settings, tmp_path):
    folder = corpus_of(tmp_path, files=2)
    other = server_settings.with_overrides(collection=server_settings.collection + "-b")
    with server_lock(open_client(server_settings), server_settings, "rag ingest"):
        assert ingest([folder], other, CountingEmbeddings()).chunks_added == 24  # another collection: not blocked
        with pytest.raises(StoreBusy, match=rf"collection '{server_settings.collection}' on {server_settings.chroma_url} is being written"):
            ingest([folder], server_settings, CountingEmbeddings())
    assert ingest([folder], server_settings, CountingEmbeddings()).chunks_added == 24  # the lease was given back


@pytest.mark.integration
def test_an_expired_lease_is_taken_over_by_exactly_one_client(server_settings):
    client = open_client(server_settings)
    locks = client.get_collection(LOCK_COLLECTION)
    name = server_settings.collection
    for number in range(0, 6, 2):  # a crashed holder's lease, then the one the winner took and released
        dead = {"collection": name, "number": number, "token": "dead", "expires": time.time() - 1, "holder": "{}"}
        locks.add(ids=[f"{name}@{number}"], embeddings=[[0.0]], documents=[name], metadatas=[dead])
        start, holders, refused, release = threading.Barrier(3), [], [], threading.Event()

        def take() -> None:
            start.wait()
            try:
                with server_lock(open_client(server_settings), server_settings, "rag ingest"):
                    holders.append(1)
                    release.wait(5)
            except StoreBusy:
                refused.append(1)

        takers = [threading.Thread(target=take) for _ in range(3)]
        for taker in takers:
            taker.start()
        time.sleep(1.5)
        release.set()
        for taker in takers:
            taker.join()
        assert (len(holders), len(refused)) == (1, 2)
        left = locks.get(where={"collection": name})
        assert left["ids"] == [f"{name}@{number + 1}"] and left["metadatas"][0]["expires"] == 0  # older ones gone; given back


@pytest.mark.integration
def test_a_crash_mid_ingest_leaves_pending_entries_and_a_rerun_equals_a_clean_run(server_settings, tmp_path):
    crashing = CountingEmbeddings()
    embed = crashing.embed_documents

    def embed_then_die(texts):  # the second batch never comes: as if the process were killed there
        if crashing.texts:
            raise RuntimeError("killed")
        return embed(texts)

    crashing.embed_documents = embed_then_die
    folder = corpus_of(tmp_path, files=2)
    (folder / "doc0.md").write_text(paragraphs("doc 0", 100), encoding="utf-8")  # more than one embedding batch
    with pytest.raises(RuntimeError):
        ingest([folder], server_settings, crashing)
    assert [entry.state for entry in list_sources(server_settings)] == ["pending"]
    rerun = ingest([folder], server_settings, CountingEmbeddings())
    assert rerun.failures == [] and {entry.state for entry in list_sources(server_settings)} == {"indexed"}
    assert sorted(server_chunks(server_settings)) == clean_ids(server_settings, folder)


# --- an authenticating proxy in front (the deployment the README recommends) ----------------------


class TokenProxy(ThreadingHTTPServer):
    """Forwards requests carrying ``Authorization: Bearer TOKEN`` to the Chroma server; 401 for the rest."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "authorization")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = _forward


@pytest.mark.integration
def test_the_token_reaches_an_authenticating_proxy(server_settings, tmp_path):
    proxy = TokenProxy(server_settings.chroma_url)
    try:
        behind = server_settings.with_overrides(chroma_url=proxy.url)
        with pytest.raises(ChromaUnavailable, match=r"refused the request \(HTTP 401\): set RAG_CHROMA_TOKEN"):
            ingest([corpus_of(tmp_path, files=1)], behind, CountingEmbeddings())
        report = ingest([tmp_path / "many"], behind.with_overrides(chroma_token=TOKEN), CountingEmbeddings())
        assert report.chunks_added == 12
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.integration
def test_the_server_record_behaves_like_the_local_one(server_settings):
    from rag.chroma_server import ServerSourceRecord
    from rag.store import SourceRecord

    def exercise(record) -> list[dict]:
        record.mark_pending("/a.md")
        record.mark_indexed("/a.md", chunks=3, title="A", kind="text", content_hash="h1", pipeline="p", changed=True)
        record.mark_pending("https://example.org/b")
        record.mark_indexed("https://example.org/b", chunks=2, title=None, kind="html", content_hash="h2", pipeline="p", changed=True,
                            validators=('"e1"', None))  # fmt: skip
        record.mark_checked("https://example.org/b", ('"e2"', "Tue, 01 Dec 2026 10:00:00 GMT"))
        record.mark_pending("/dir/c.md")
        record.delete("/a.md")
        snapshot = [{**entry.to_dict(), "ingested_at": None, "checked_at": None} for entry in record.entries()]
        assert [entry.source for entry in record.entries(under="/dir")] == ["/dir/c.md"]
        record.drop_collection()
        assert record.entries() == []
        return snapshot

    with SourceRecord(server_settings) as local:
        expected = exercise(local)
    assert exercise(ServerSourceRecord(open_client(server_settings), server_settings)) == expected
    assert expected[1]["etag"] == '"e2"' and expected[0]["state"] == "pending"
