"""Ingestion end to end with a counting fake embedder: idempotence, updates, failures, crashes, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models import FakeListLLM

from rag.answer import Assistant
from rag.cli import EXIT_ERROR, EXIT_NOTHING_DONE, EXIT_OK, EXIT_PARTIAL, cli
from rag.embed import embedder_id
from rag.errors import EmptyQuestion
from rag.indexing import forget, ingest, list_sources, search
from rag.llm import LocalLLM
from rag.sources import SUPPORTED_SUFFIXES
from rag.split import embedding_text
from rag.store import IncompatibleCollection, NotIndexed, StoreBusy, open_collection, store_lock
from tests.conftest import REPO_ROOT, SAMPLE_DATA
from tests.local_site import LocalSite, Page, trickle
from tests.pdf_files import encrypt_pdf, make_pdf, truncate


class CountingEmbeddings(Embeddings):
    """An embedder (DeterministicFakeEmbedding by default) that counts the texts it embeds.

    It can also be slow and say when it starts a batch, so a test can stop it half-way.
    """

    def __init__(self, size: int = 64, delay: float = 0.0, announce: bool = False, inner: Embeddings | None = None) -> None:
        self.inner = inner or DeterministicFakeEmbedding(size=size)
        self.model_name = embedder_id(inner) if inner is not None else f"counting-fake-{size}"
        self.delay = delay
        self.announce = announce
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.announce:
            print(f"embedding {len(texts)}", flush=True)
        time.sleep(self.delay)
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


@pytest.fixture
def counting() -> CountingEmbeddings:
    return CountingEmbeddings()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(SAMPLE_DATA, folder)
    return folder


def paragraphs(prefix: str, count: int, length: int = 480) -> str:
    """``count`` distinct paragraphs that each fill one chunk."""
    return "\n\n".join((f"{prefix} paragraph {n}. " + "Lorem ipsum dolor sit amet. " * 20)[:length] for n in range(count)) + "\n"


def stored(settings) -> dict[str, tuple[str, dict]]:
    collection = open_collection(settings)
    found = collection.get(include=["documents", "metadatas"])
    return {id_: (text, metadata) for id_, text, metadata in zip(found["ids"], found["documents"], found["metadatas"])}


def texts(settings) -> set[str]:
    return {text for text, _ in stored(settings).values()}


# --- idempotence and updates ----------------------------------------------------------------------


def test_first_ingest_indexes_every_chunk_with_its_metadata(settings, corpus, counting):
    report = ingest([corpus], settings, counting)
    assert (report.sources, report.sources_added, report.failures) == (4, 4, [])
    chunks = stored(settings)
    assert report.chunks_added == len(chunks) == counting.texts == report.embedded
    for text, metadata in chunks.values():
        assert metadata["source"].startswith(str(corpus.resolve()))
        assert {"title", "kind", "start_index", "chunk_hash"} <= metadata.keys()
    titles = {metadata["title"] for _, metadata in chunks.values()}
    assert {"Kestrel Point Lighthouse", "Lake Varen Solar Boat Race", "QuokkaDB"} <= titles


@pytest.mark.parametrize("write_batch", [512, 3])
def test_new_chunks_of_several_sources_are_written_together(settings, corpus, counting, monkeypatch, write_batch):
    """One upsert for the sources' new chunks (each costs ~40 ms however small), or one each time ``WRITE_BATCH`` is reached."""
    from chromadb.api.models.Collection import Collection

    upserts: list[int] = []
    upsert = Collection.upsert
    monkeypatch.setattr(Collection, "upsert", lambda self, **chunks: (upserts.append(len(chunks["ids"])), upsert(self, **chunks))[1])
    monkeypatch.setattr("rag.indexing.WRITE_BATCH", write_batch)
    report = ingest([corpus], settings, counting)
    assert report.sources_added == 4 and sum(upserts) == report.chunks_added == len(stored(settings))
    assert len(upserts) == 1 if write_batch > report.chunks_added else len(upserts) > 1
    assert {entry.state for entry in list_sources(settings)} == {"indexed"}


def test_reingest_of_unchanged_sources_embeds_nothing_and_adds_nothing(settings, corpus, counting):
    first = ingest([corpus], settings, counting)
    before = stored(settings)
    counting.texts = 0
    again = ingest([corpus], settings, counting)
    assert counting.texts == 0 and again.embedded == 0
    assert (again.sources_skipped, again.chunks_added, again.chunks_skipped) == (4, 0, first.chunks_added)
    assert stored(settings) == before


def test_changed_source_has_its_old_chunks_replaced(settings, tmp_path, counting):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text(paragraphs("Original", 3), encoding="utf-8")
    ingest([folder], settings, counting)
    (folder / "notes.txt").write_text(paragraphs("Original", 2) + "\nThe harbour closes at dusk.\n", encoding="utf-8")
    counting.texts = 0
    report = ingest([folder], settings, counting)
    # the short new paragraph joins the one before it: that chunk is new, the old one and paragraph 2 go
    assert (report.sources_updated, report.chunks_added, report.chunks_deleted, report.chunks_skipped) == (1, 1, 2, 1)
    assert counting.texts == 1  # only the new text is embedded
    now = texts(settings)
    assert any(text.endswith("The harbour closes at dusk.") for text in now) and not any(text.startswith("Original paragraph 2") for text in now)
    hits = search("The harbour closes at dusk.", 1, settings.with_overrides(retrieval="lexical"), counting)
    assert hits[0][0].page_content.endswith("The harbour closes at dusk.")


def test_moved_text_keeps_its_vector_and_gets_its_new_place(settings, tmp_path, counting):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text(paragraphs("Body", 3), encoding="utf-8")
    ingest([folder], settings, counting)
    first, rest = paragraphs("Body", 3).split("\n\n", 1)  # the first line is a text file's title: it stays
    text = first + "\n\nA new short paragraph.\n\n" + rest
    (folder / "notes.txt").write_text(text, encoding="utf-8")
    counting.texts = 0
    report = ingest([folder], settings, counting)
    # the short new paragraph joins the first body chunk (new); the other two only moved
    assert (report.chunks_added, report.chunks_updated, report.chunks_deleted, counting.texts) == (1, 2, 1, 1)
    for chunk, metadata in stored(settings).values():
        assert text[metadata["start_index"] : metadata["start_index"] + len(chunk)] == chunk


def test_identical_chunks_are_embedded_once(settings, tmp_path, counting):
    disclaimer = "<p>" + "This page is provided as is, without warranty of any kind, by the Harbour Office. " * 4 + "</p>"
    folder = tmp_path / "site"
    folder.mkdir()
    for name in ("a", "b", "c"):
        body = f"<p>{'Unique text for page %s. ' % name * 20}</p>"
        page = f"<html><head><title>Harbour Office</title></head><body><main>{body}{disclaimer}</main></body></html>"
        (folder / f"{name}.html").write_text(page, encoding="utf-8")  # one title: same embedded text for the disclaimer
    report = ingest([folder], settings, counting)
    assert report.chunks_added == 6
    assert counting.texts == report.embedded == 4  # three pages' own text + the shared paragraph once
    assert report.reused_vectors == 2
    hits = search("This page is provided as is", 4, settings, counting)
    assert len({doc.page_content for doc, _ in hits}) == len(hits)  # the shared chunk is listed once


# --- one retrieval for search, ask and eval -------------------------------------------------------


def assistant_over(settings, embeddings: Embeddings) -> Assistant:
    llm = LocalLLM(FakeListLLM(responses=["An answer [1]."]), "fake", "fake.gguf", "chatml", 8192, 64, lambda text: len(text.split()) + 1)
    return Assistant(settings, local_llm=llm, embeddings=embeddings)


def same_chunks(docs) -> list[tuple[str, str, float]]:
    return [(doc.page_content, doc.metadata["source"], doc.metadata["score"]) for doc in docs]


def test_ask_retrieves_exactly_what_search_finds(settings, tmp_path, counting):
    """A paragraph repeated on every page is one hit for search, ask and chat alike (eval uses search)."""
    folder = tmp_path / "site"
    folder.mkdir()
    shared = "<p>" + "Moorings are paid at the Harbour Office before sunset. " * 4 + "</p>"
    for name in ("a", "b", "c", "d"):
        (folder / f"{name}.html").write_text(f"<html><body><main><p>{'Page %s has its own text. ' % name * 20}</p>{shared}</main></body></html>")
    ingest([folder], settings, counting)
    question = Counter(text for text, _ in stored(settings).values()).most_common(1)[0][0]  # the shared paragraph
    found = [doc for doc, _ in search(question, settings=settings.with_overrides(k=3), embeddings=counting)]
    assert len(found) == 3 and len({doc.page_content for doc in found}) == 3
    assistant = assistant_over(settings.with_overrides(k=3), counting)
    assert same_chunks(assistant.retriever().invoke(question)) == same_chunks(found)
    answer = assistant.ask(question)
    assert [(source.chunk, source.source, source.score) for source in answer.sources] == [
        (text, source, round(score, 4)) for text, source, score in same_chunks(found)
    ]
    chat = assistant.chat().ask(question)
    assert [source.chunk for source in chat.sources] == [doc.page_content for doc in found]


def test_search_returns_settings_k_chunks_by_default(settings, corpus, counting):
    ingest([corpus], settings, counting)
    assert len(search("lighthouse", settings=settings.with_overrides(k=2), embeddings=counting)) == 2
    assert len(search("lighthouse", settings=settings.with_overrides(k=5), embeddings=counting)) == 5


def test_an_empty_query_is_refused_before_anything_loads(settings, monkeypatch):
    def no_loading(_settings):
        raise AssertionError("the embedder must not load for an empty query")

    monkeypatch.setattr("rag.embed.load_embeddings", no_loading)
    for query in ("", "   \n\t"):
        with pytest.raises(EmptyQuestion, match="the search query is empty"):
            search(query, settings=settings)
    assert not settings.store_path.exists()


class Unnamed(Embeddings):
    """An embedder with nothing to tell one size from another: only the dimension check can."""

    def __init__(self, size: int) -> None:
        self.inner = DeterministicFakeEmbedding(size=size)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def test_a_query_of_another_dimension_is_refused_on_search_and_ask(settings, corpus):
    ingest([corpus], settings, Unnamed(64))
    with pytest.raises(IncompatibleCollection, match=r"holds 64-dimensional vectors but the embedder 'Unnamed' makes 32-dimensional"):
        search("lighthouse", settings=settings, embeddings=Unnamed(32))
    with pytest.raises(IncompatibleCollection, match="64-dimensional"):
        assistant_over(settings, Unnamed(32)).ask("When was the lighthouse first lit?")


def test_a_source_that_fails_to_load_keeps_its_chunks(settings, corpus, counting):
    ingest([corpus], settings, counting)
    before = stored(settings)
    (corpus / "lake-varen-solar-boat-race.txt").write_bytes(b"\x00\x01\x02\x03binary now" * 100)
    report = ingest([corpus], settings, counting)
    assert [(Path(f.source).name, f.reason.split(" (")[0]) for f in report.failures] == [
        ("lake-varen-solar-boat-race.txt", "binary data, not text")
    ]
    assert report.sources_failed == 1 and report.sources_skipped == 3 and not report.nothing_done
    assert stored(settings) == before


def test_deleted_sources_are_removed_only_when_pruning(settings, corpus, counting):
    ingest([corpus], settings, counting)
    gone = corpus / "quokkadb.rst"
    gone_chunks = sum(1 for _, metadata in stored(settings).values() if metadata["source"] == str(gone.resolve()))
    gone.unlink()
    kept = ingest([corpus], settings, counting)
    assert kept.sources_deleted == 0 and any(meta["source"] == str(gone.resolve()) for _, meta in stored(settings).values())
    pruned = ingest([corpus], settings, counting, prune=True)
    assert (pruned.sources_deleted, pruned.chunks_deleted) == (1, gone_chunks)
    assert not any(meta["source"] == str(gone.resolve()) for _, meta in stored(settings).values())
    assert [entry.source for entry in list_sources(settings)] == sorted(
        str(path.resolve()) for path in corpus.iterdir() if path.suffix in SUPPORTED_SUFFIXES
    )


def test_pruning_a_file_that_is_gone_is_not_a_failure(settings, corpus, counting):
    target = corpus / "quokkadb.rst"
    ingest([target], settings, counting)
    target.unlink()
    report = ingest([target], settings, counting, prune=True)
    assert (report.failures, report.sources_deleted) == ([], 1)
    assert stored(settings) == {}


def test_pruning_leaves_sources_outside_the_folders_given(settings, corpus, tmp_path, counting):
    other = tmp_path / "other.md"
    other.write_text("# Other\n\nElsewhere.\n", encoding="utf-8")
    ingest([corpus, other], settings, counting)
    report = ingest([corpus], settings, counting, prune=True)
    assert report.sources_deleted == 0
    assert str(other.resolve()) in {entry.source for entry in list_sources(settings)}


def test_forget_removes_a_source_or_a_folder(settings, corpus, counting):
    ingest([corpus], settings, counting)
    one = forget([str(corpus / "quokkadb.rst")], settings)
    assert one.sources_deleted == 1 and one.chunks_deleted > 0
    assert len(list_sources(settings)) == 3
    rest = forget([str(corpus)], settings)
    assert rest.sources_deleted == 3 and stored(settings) == {} and list_sources(settings) == []
    with pytest.raises(NotIndexed, match="rag sources"):
        forget([str(corpus / "quokkadb.rst")], settings)


def test_progress_bar_goes_to_stderr(settings, corpus, counting, capsys):
    ingest([corpus], settings, counting, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "ingest: 100%" in captured.err and "4/4" in captured.err


# --- what the collection records ------------------------------------------------------------------


def test_other_splitter_settings_are_refused_before_embedding(settings, corpus, counting):
    ingest([corpus], settings, counting)
    counting.texts = 0
    with pytest.raises(IncompatibleCollection, match=r"chunk_size 500 \(this ingest: 300\)"):
        ingest([corpus], settings.with_overrides(chunk_size=300), counting)
    assert counting.texts == 0


class RecordingEmbeddings(CountingEmbeddings):
    """A counting embedder that keeps the texts it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.given.extend(texts)
        return super().embed_documents(texts)


def test_the_embedder_sees_the_first_embed_tokens_and_the_keyword_index_every_word(settings, corpus):
    recording = RecordingEmbeddings()
    ingest([corpus], settings.with_overrides(embed_tokens=12), recording)
    assert recording.given and max(len(re.findall(r"\w+|[^\w\s]", text)) for text in recording.given) <= 12
    longest = max(texts(settings), key=lambda text: len(text.split()))
    assert len(longest.split()) > 12
    hits = search(" ".join(longest.split()[-3:]), 10, settings.with_overrides(retrieval="lexical"), recording)
    assert longest in [doc.page_content for doc, _ in hits]  # found by words the embedder never saw
    with pytest.raises(IncompatibleCollection, match=r"embed_tokens 12 \(this ingest: 0\)"):
        ingest([corpus], settings.with_overrides(embed_tokens=0), recording)


def test_other_embedder_is_refused_before_embedding(settings, corpus, counting):
    ingest([corpus], settings, counting)
    other = CountingEmbeddings(size=32)
    with pytest.raises(IncompatibleCollection, match="counting-fake-64"):
        ingest([corpus], settings, other)
    assert other.texts == 0
    with pytest.raises(IncompatibleCollection):
        search("lighthouse", 4, settings, other)


def test_reindex_rebuilds_with_the_new_settings(settings, corpus, counting):
    ingest([corpus], settings, counting)
    smaller = settings.with_overrides(chunk_size=200)
    report = ingest([corpus], smaller, CountingEmbeddings(size=32), reindex=True)
    assert report.reindexed and report.sources_added == 4
    collection = open_collection(smaller)
    assert collection.count() == report.chunks_added
    assert collection.metadata["rag:chunk_size"] == 200 and collection.metadata["rag:dimension"] == 32
    assert all(len(text) <= 300 for text in texts(smaller))  # a small piece merged into a neighbour: up to 1.5 chunk sizes


def test_writes_never_exceed_chromas_batch_limit(settings, tmp_path, counting, monkeypatch):
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection

    sizes: list[int] = []
    for name in ("upsert", "update", "delete", "add"):
        original = getattr(Collection, name)

        def spy(self, *args, _original=original, **kwargs):
            sizes.append(len(kwargs.get("ids") or args[0]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Collection, name, spy)
    monkeypatch.setattr(Client, "get_max_batch_size", lambda self: 7)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "long.txt").write_text(paragraphs("Long", 30), encoding="utf-8")
    ingest([folder], settings, counting)
    (folder / "long.txt").write_text("Intro.\n\n" + paragraphs("Long", 20), encoding="utf-8")
    ingest([folder], settings, counting)
    assert sizes and max(sizes) <= 7
    assert open_collection(settings).count() == 20  # "Intro." joins the first paragraph


def test_a_second_writer_fails_fast_naming_the_holder(settings, corpus, counting):
    with store_lock(settings, "rag ingest"):
        started = time.monotonic()
        with pytest.raises(StoreBusy, match=f"pid {os.getpid()}"):
            ingest([corpus], settings, counting)
        assert time.monotonic() - started < 2
    assert ingest([corpus], settings, counting).sources_added == 4  # nothing was damaged


# --- the web --------------------------------------------------------------------------------------


def page(title: str, body: str) -> Page:
    html = f"""<html><head><title>{title}</title></head><body>
    <nav><a href="/">Home</a> <a href="/news">News</a> <a href="/contact">Contact</a></nav>
    <main><h1>{title}</h1><p>{body}</p></main><footer>Copyright Harbour Office</footer></body></html>"""
    return Page(html.encode())


def test_web_pages_are_ingested_with_title_and_url(settings, counting):
    routes = {"/tides": page("Tides", "High water is two hours after Dover."), "/fees": page("Fees", "Mooring costs 12 euros a night.")}
    with LocalSite(routes) as site:
        urls = [site.url("/tides"), site.url("/fees")]
        report = ingest(urls, settings.with_overrides(allow_private_network=True), counting)
        again = ingest(urls, settings.with_overrides(allow_private_network=True), counting)
    assert (report.sources_added, report.chunks_added, again.sources_skipped, again.embedded) == (2, 2, 2, 0)
    by_source = {metadata["source"]: (text, metadata["title"]) for text, metadata in stored(settings).values()}
    assert by_source[urls[0]] == ("# Tides\n\nHigh water is two hours after Dover.", "Tides")


def test_private_network_needs_the_opt_in(settings, counting):
    with LocalSite({"/": page("Home", "Hello.")}) as site:
        report = ingest([site.url("/")], settings, counting)
    assert report.nothing_done and "--allow-private-network" in report.failures[0].reason
    assert site.requests == []


@pytest.mark.integration  # the loader process's time limit
def test_a_hanging_source_costs_at_most_the_time_limit(settings, corpus, counting):
    with LocalSite({"/slow": trickle(seconds=60)}) as site:
        started = time.monotonic()
        report = ingest(
            [corpus, site.url("/slow")], settings.with_overrides(allow_private_network=True, source_timeout=2), counting
        )
        elapsed = time.monotonic() - started
    # The loader's clock or the child's own download limit, whichever ends first.
    assert [failure.reason for failure in report.failures] in (
        ["took longer than the 2 s per-source limit (source_timeout)"],
        [f"{site.url('/slow')} took longer than 2 s to download"],
    )
    assert report.sources_added == 4 and elapsed < 15


# --- bad input ------------------------------------------------------------------------------------

BAD_FOLDER_RUN = """
import json, resource, sys
from rag.indexing import ingest
from rag.settings import Settings
from tests.test_indexing import CountingEmbeddings
from rag.sources.process import shutdown
report = ingest([sys.argv[1]], Settings(data_dir=sys.argv[2]), CountingEmbeddings())
shutdown()  # so the loader process counts among the children measured
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so it would count pytest's own memory.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"report": report.to_dict(), "peak_rss_mb": peak_kb / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def make_bad_folder(folder: Path) -> dict[str, str]:
    """Good files and hostile ones; returns {name: expected reason} for the bad ones."""
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nA perfectly normal note about tides.\n", encoding="utf-8")
    (folder / "good.pdf").write_bytes(make_pdf(["A readable PDF about moorings."]))
    (folder / "windows.txt").write_bytes("Crème brûlée – “served” at 5 € in Köln.\n".encode("cp1252"))
    (folder / "utf16.txt").write_bytes("UTF-16 text: Ærø, ñ, 日本語.\n".encode("utf-16"))
    depth = 20_000
    (folder / "nested.html").write_text("<html><body>" + "<div>" * depth + "<p>deep text</p>" + "</div>" * depth + "</body></html>")
    lol = "".join(f'<!ENTITY lol{n} "{"&lol%d;" % (n - 1) * 10}">' for n in range(1, 10))
    (folder / "bomb.html").write_text(
        f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY lol0 "lol">{lol}]><html><body><p>&lol9;</p><p>Bomb defused.</p></body></html>'
    )
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (folder / "truncated.pdf").write_bytes(truncate(make_pdf(["Cut short."] * 3)))
    (folder / "encrypted.pdf").write_bytes(encrypt_pdf(make_pdf(["Secret."])))
    with (folder / "huge.txt").open("wb") as handle:
        line = b"All work and no play makes Jack a dull boy.\n" * 1000
        for _ in range(50_000_000 // len(line) + 1):
            handle.write(line)
    return {
        "empty.txt": "empty file",
        "binary.txt": "binary data, not text",
        "truncated.pdf": "truncated or damaged PDF",
        "encrypted.pdf": "encrypted PDF",
        "huge.txt": "file is 50.0 MB, over the 20.0 MB limit",
    }


@pytest.mark.integration  # a real ingest process and its loader processes
def test_bad_input_folder_every_good_file_lands_every_bad_one_is_reported(settings, tmp_path):
    folder = tmp_path / "bad"
    expected = make_bad_folder(folder)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", BAD_FOLDER_RUN, str(folder), str(settings.data_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    report = result["report"]
    reasons = {Path(failure["source"]).name: failure["reason"] for failure in report["failures"]}
    assert sorted(reasons) == sorted(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), reasons[name]
    assert report["sources_added"] == 6
    landed = texts(settings)
    for text in ("A perfectly normal note", "A readable PDF about moorings.", "Crème brûlée – “served” at 5 € in Köln.", "UTF-16 text: Ærø, ñ, 日本語.", "deep text", "Bomb defused."):
        assert any(text in chunk for chunk in landed), text
    assert not any("lollol" in chunk for chunk in landed)
    assert time.monotonic() - started < 90
    assert result["peak_rss_mb"] < 600 and result["children_peak_rss_mb"] < 600, result


@pytest.mark.integration  # the loader process's memory cap
def test_a_source_that_needs_too_much_memory_fails_alone(settings, corpus, counting):
    (corpus / "dense.html").write_text("<html><body>" + "<p><b>x</b> <i>y</i></p>" * 200_000 + "</body></html>")
    report = ingest([corpus], settings.with_overrides(loader_memory_mb=250), counting)
    (failure,) = report.failures
    assert Path(failure.source).name == "dense.html"
    assert re.search(r"out of memory.*the 250 MB limit.*loader_memory_mb", failure.reason), failure.reason
    assert report.sources_added == 4


# --- stopped runs ---------------------------------------------------------------------------------

INTERRUPTED_RUN = """
import sys
import rag.indexing
rag.indexing.WRITE_BATCH = 1  # each embedding call's chunks written at once, so that a stop finds some written
from rag.indexing import ingest
from rag.settings import Settings
from tests.test_indexing import CountingEmbeddings
ingest([sys.argv[1]], Settings(data_dir=sys.argv[2]), CountingEmbeddings(delay=0.4, announce=True))
"""


def write_corpus(folder: Path, version: int) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "a-long.txt").write_text(paragraphs(f"Version {version} long", 200), encoding="utf-8")
    for n in range(4):
        (folder / f"note-{n}.md").write_text(f"# Note {n}\n\nVersion {version} of note {n}.\n", encoding="utf-8")
    if version == 2:
        (folder / "note-1.md").write_text("# Note 1\n\nUnchanged.\n", encoding="utf-8")
        (folder / "new.txt").write_text("A file added in version two.\n", encoding="utf-8")


def start_interrupted_ingest(settings, tmp_path) -> tuple[Path, subprocess.Popen]:
    """A corpus indexed once, then grown, and an ingest process of it that reports each embedding call."""
    folder = tmp_path / "corpus"
    write_corpus(folder, 1)
    ingest([folder], settings, CountingEmbeddings())
    write_corpus(folder, 2)
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, str(folder), str(settings.data_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return folder, process


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
@pytest.mark.integration  # a real ingest process, killed
def test_a_run_stopped_half_way_then_rerun_equals_a_clean_run(settings, tmp_path, stop):
    folder, process = start_interrupted_ingest(settings, tmp_path)
    try:
        for _ in range(2):  # mid-way through the long file: some new chunks written, old ones not yet removed
            assert process.stdout.readline().startswith("embedding")
        process.send_signal(stop)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode != 0
    half = stored(settings)
    assert any("Version 2" in text for text, _ in half.values()) and any("Version 1 long" in text for text, _ in half.values())
    assert any(entry.state == "pending" for entry in list_sources(settings))

    counting = CountingEmbeddings()
    rerun = ingest([folder], settings, counting)
    assert rerun.failures == [] and all(entry.state == "indexed" for entry in list_sources(settings))
    clean_settings = settings.with_overrides(data_dir=tmp_path / "clean")
    clean_counting = CountingEmbeddings()
    ingest([folder], clean_settings, clean_counting)
    assert stored(settings) == stored(clean_settings)
    assert counting.texts < clean_counting.texts  # what the stopped run wrote was kept


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def rag_cli(settings, monkeypatch, counting):
    """Run the CLI in-process with the counting fake embedder in place of the real one."""
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr("rag.embed.load_embeddings", lambda _settings: counting)

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_cli_ingest_reports_and_exits_zero(rag_cli, corpus):
    result = rag_cli("ingest", str(corpus))
    assert result.exit_code == EXIT_OK
    assert result.stdout.startswith("sources: 4 added, 0 updated, 0 unchanged, 0 deleted, 0 failed\nchunks:  ")
    again = rag_cli("ingest", str(corpus), "--json")
    data = json.loads(again.stdout)
    assert (again.exit_code, data["sources_skipped"], data["chunks_added"], data["embedded"]) == (EXIT_OK, 4, 0, 0)


def test_cli_exit_status_when_some_sources_fail(rag_cli, corpus):
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    result = rag_cli("ingest", str(corpus), str(corpus / "missing.md"))
    assert result.exit_code == EXIT_PARTIAL
    assert "failed: " + str(corpus / "broken.pdf") + ": truncated or damaged PDF" in result.stderr
    assert "missing.md: no such file or folder" in result.stderr


def test_cli_exit_status_when_nothing_can_be_done(rag_cli, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"")
    result = rag_cli("ingest", str(tmp_path / "bad.txt"), "--json")
    assert result.exit_code == EXIT_NOTHING_DONE
    assert json.loads(result.stdout)["failures"] == [{"source": str((tmp_path / "bad.txt").resolve()), "reason": "empty file"}]


def test_cli_mismatch_is_one_line_without_traceback(rag_cli, corpus):
    rag_cli("ingest", str(corpus))
    result = rag_cli("ingest", str(corpus), "--chunk-size", "300")
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("error: collection 'default' was indexed with chunk_size 500") and "Traceback" not in result.output
    assert rag_cli("ingest", str(corpus), "--chunk-size", "300", "--reindex").exit_code == EXIT_OK


def test_cli_include_exclude_and_prune(rag_cli, corpus):
    assert rag_cli("ingest", str(corpus), "--include", "*.md", "--include", "*.rst").exit_code == EXIT_OK
    listed = json.loads(rag_cli("sources", "--json").stdout)
    assert sorted(Path(entry["source"]).name for entry in listed) == ["kestrel-point-lighthouse.md", "quokkadb.rst"]
    pruned = json.loads(rag_cli("ingest", str(corpus), "--exclude", "quokkadb.rst", "--prune", "--json").stdout)
    assert (pruned["sources_deleted"], pruned["sources_added"]) == (1, 2)


def test_cli_search_sources_and_forget(rag_cli, corpus):
    rag_cli("ingest", str(corpus))
    chunk, metadata = next(iter(stored_from_env(corpus)))
    query = embedding_text(chunk, metadata)  # what was embedded: the fake embedder's only exact match
    hits = json.loads(rag_cli("search", query, "-k", "2", "--json", "--retrieval", "vector").stdout)
    assert hits[0]["text"] == chunk and hits[0]["score"] == pytest.approx(1.0) and {"source", "title"} <= hits[0].keys()
    text = rag_cli("search", query, "--retrieval", "vector").stdout
    assert text.startswith("[1] 1.000 vector  ")
    listing = rag_cli("sources")
    assert listing.exit_code == EXIT_OK and str(corpus.resolve() / "quokkadb.rst") in listing.stdout
    removed = rag_cli("forget", str(corpus / "quokkadb.rst"))
    assert removed.exit_code == EXIT_OK and removed.stdout.startswith("removed 1 sources")
    assert rag_cli("forget", str(corpus / "quokkadb.rst")).exit_code == EXIT_ERROR


def stored_from_env(corpus: Path):
    from rag.settings import Settings

    return stored(Settings()).values()


def test_cli_search_on_an_empty_store_says_what_to_do(rag_cli):
    result = rag_cli("search", "anything")
    assert result.exit_code == EXIT_ERROR and "rag ingest" in result.stderr


def test_cli_empty_search_is_one_line(rag_cli, corpus):
    assert rag_cli("ingest", str(corpus)).exit_code == EXIT_OK
    for query in ("", "  "):
        result = rag_cli("search", query)
        assert result.exit_code in (1, 2) and len(result.stderr.strip().splitlines()) == 1
        assert "query is empty" in result.stderr and result.stdout == ""


def test_cli_search_with_another_dimension_is_one_line(rag_cli, corpus, monkeypatch):
    monkeypatch.setattr("rag.embed.load_embeddings", lambda _settings: Unnamed(64))
    assert rag_cli("ingest", str(corpus)).exit_code == EXIT_OK
    monkeypatch.setattr("rag.embed.load_embeddings", lambda _settings: Unnamed(32))
    result = rag_cli("search", "lighthouse")
    assert result.exit_code == EXIT_ERROR and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "64-dimensional" in result.stderr


# --- with the real embedder -----------------------------------------------------------------------


@pytest.mark.integration
def test_real_embedder_retrieves_the_right_document_and_reingest_embeds_nothing(settings, embeddings, corpus):
    counting = CountingEmbeddings(inner=embeddings)
    first = ingest([corpus], settings, counting)
    assert first.failures == [] and counting.texts == first.embedded > 0
    questions = {
        "When was Kestrel Point Lighthouse first lit?": "kestrel-point-lighthouse.md",
        "Who won the solar boat race on Lake Varen?": "lake-varen-solar-boat-race.txt",
    }
    for question, expected in questions.items():
        top, score = search(question, 4, settings, counting)[0]
        assert top.metadata["source"].endswith(expected) and 0 < score <= 1
    counting.texts = 0
    again = ingest([corpus], settings, counting)
    assert (counting.texts, again.chunks_added, again.sources_skipped) == (0, 0, 4)


@pytest.mark.integration
def test_real_ask_retrieves_exactly_what_search_finds(settings, embeddings, corpus):
    ingest([corpus], settings, embeddings)
    assistant = assistant_over(settings, embeddings)
    for question in ("When was Kestrel Point Lighthouse first lit?", "What license does QuokkaDB use?"):
        found = [doc for doc, _ in search(question, settings=settings, embeddings=embeddings)]
        assert 1 <= len(found) <= settings.k and same_chunks(assistant.retriever().invoke(question)) == same_chunks(found)
        assert [source.chunk for source in assistant.ask(question).sources] == [doc.page_content for doc in found]


@pytest.mark.integration
def test_real_cli_ingests_a_served_site_and_a_folder_then_searches(settings, corpus):
    routes = {
        "/tides.html": page("Tide tables", "High water at Kestrel Point is two hours after Dover; spring tides reach six metres."),
        "/fees.html": page("Mooring fees", "A visitor mooring costs twelve euros a night, paid at the harbour office."),
    }
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir)}
    rag = [str(Path(sys.executable).parent / "rag")]
    with LocalSite(routes) as site:
        urls = [site.url(path) for path in routes]
        ingested = subprocess.run([*rag, "ingest", *urls, str(corpus), "--allow-private-network", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert ingested.returncode == EXIT_OK, ingested.stderr
    report = json.loads(ingested.stdout)
    assert (report["sources_added"], report["failures"]) == (6, [])
    found = subprocess.run([*rag, "search", "How much does a mooring cost?", "-k", "2", "--json"], env=env, capture_output=True, text=True, timeout=300)
    hits = json.loads(found.stdout)
    assert hits[0]["source"] == urls[1] and hits[0]["title"] == "Mooring fees"
    assert "Copyright" not in hits[0]["text"] and "Home" not in hits[0]["text"]


# --- the lexical index, kept in step with Chroma ----------------------------------------------------


def lexical_ids(settings) -> set[str]:
    from rag.lexical import LexicalIndex

    with LexicalIndex(settings.store_path, settings.collection) as index:
        return index.ids()


def test_lexical_index_holds_chromas_ids_through_add_update_prune_forget_reindex(settings, corpus, counting):
    ingest([corpus], settings, counting)
    assert lexical_ids(settings) == set(stored(settings)) != set()
    (corpus / "quokkadb.rst").write_text("QuokkaDB\n========\n\nNow it is written in Zig.\n", encoding="utf-8")
    ingest([corpus], settings, counting)
    assert lexical_ids(settings) == set(stored(settings))
    (corpus / "kestrel-point-lighthouse.md").unlink()
    ingest([corpus], settings, counting, prune=True)
    assert lexical_ids(settings) == set(stored(settings))
    forget([corpus / "quokkadb.rst"], settings)
    assert lexical_ids(settings) == set(stored(settings))
    ingest([corpus], settings, counting, reindex=True)
    assert lexical_ids(settings) == set(stored(settings))
    assert search("Zig", 1, settings.with_overrides(retrieval="lexical"))[0][0].metadata["source"].endswith("quokkadb.rst")


@pytest.mark.parametrize("pause", [0.0, 0.2, 0.39, 0.45], ids=lambda pause: f"{pause}s")
@pytest.mark.integration  # a real ingest process, killed
def test_after_kill_9_at_any_point_both_indexes_hold_the_same_ids(settings, tmp_path, pause):
    from rag.retrieval import retriever

    folder, process = start_interrupted_ingest(settings, tmp_path)
    try:
        for _ in range(2):
            assert process.stdout.readline().startswith("embedding")
        time.sleep(pause)  # before, during or after a batch's writes
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    retriever(settings, CountingEmbeddings(), k=2).invoke("Version 2 long")  # a search recovers the lexical index
    assert lexical_ids(settings) == set(stored(settings))
    ingest([folder], settings, CountingEmbeddings())
    assert lexical_ids(settings) == set(stored(settings))
    clean = settings.with_overrides(data_dir=tmp_path / "clean")
    ingest([folder], clean, CountingEmbeddings())
    assert set(stored(settings)) == set(stored(clean)) == lexical_ids(clean)


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
@pytest.mark.parametrize("step", ["add", "delete", "mark_clean"])
def test_a_crash_inside_the_lexical_writes_is_recovered_by_the_next_search_or_ingest(settings, corpus, counting, monkeypatch, step):
    from rag.lexical import LexicalIndex
    from rag.retrieval import retriever

    ingest([corpus], settings, counting)
    (corpus / "quokkadb.rst").write_text("QuokkaDB\n========\n\nRewritten in Zig, listening on port 9000.\n", encoding="utf-8")
    real = getattr(LexicalIndex, step)

    def crash(self, *args, **kwargs):
        if step == "add":
            list(args[0])[:1]  # consume a little, write nothing
        raise KeyboardInterrupt  # stands in for kill -9 between the two indexes' writes

    monkeypatch.setattr(LexicalIndex, step, crash)
    with pytest.raises(KeyboardInterrupt):
        ingest([corpus], settings, counting)
    monkeypatch.setattr(LexicalIndex, step, real)
    retriever(settings, counting, k=1).invoke("Zig")
    assert lexical_ids(settings) == set(stored(settings))
    ingest([corpus], settings, counting)
    assert lexical_ids(settings) == set(stored(settings))
