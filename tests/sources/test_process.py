"""The isolated loader process: its pool of children, and summarize loading through it as ingest does.

Integration tier: these run the real child process (``python -c ... _child_main``) and its limits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.sources import process as loader_process
from rag.answer import load_documents
from rag.errors import RagError
from rag.sources import LoadOptions
from rag.sources.process import IsolatedLoader, LoadRequest, LoaderCrashed, load_isolated
from tests.local_site import LocalSite, Page, delayed, trickle

SLOW_URL_OPTIONS = LoadOptions(allow_private_network=True, fetch_timeout=10, source_timeout=30)
# The child imports its parsers in about 100 MB of address space; parsing the page below needs over 1 GB (and 40 s).
MEMORY_CAP_MB = 200


@pytest.fixture(autouse=True)
def _empty_pool():
    loader_process.shutdown()
    yield
    loader_process.shutdown()


@pytest.fixture
def note(tmp_path: Path) -> Path:
    path = tmp_path / "note.md"
    path.write_text("# Note\n\nA short note.\n", encoding="utf-8")
    return path


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _idle_children() -> list:
    with loader_process._idle_lock:
        return list(loader_process._idle)


# --- the pool never hands out a busy child ---------------------------------------------------------


@pytest.mark.integration
def test_close_while_another_thread_loads_stops_that_child_instead_of_pooling_it(note):
    loader = IsolatedLoader(timeout=30, memory_mb=0)
    outcome: dict = {}
    with LocalSite({"/slow": trickle(seconds=4)}) as site:

        def load_slowly() -> None:
            try:
                outcome["result"] = loader.load(LoadRequest(site.url("/slow"), SLOW_URL_OPTIONS))
            except LoaderCrashed as error:
                outcome["error"] = error

        thread = threading.Thread(target=load_slowly)
        thread.start()
        _wait_for(lambda: site.requests)  # the child is fetching: busy
        loader.close()  # as a batch job does when it stops after a crash elsewhere
        thread.join(timeout=30)

    assert isinstance(outcome.get("error"), LoaderCrashed) and "result" not in outcome
    assert _idle_children() == [], "a child still working on a request went back to the pool"
    fresh = load_isolated(LoadRequest(str(note), LoadOptions()), timeout=30, memory_mb=0)
    assert (fresh.status, fresh.source, fresh.title) == ("loaded", str(note), "Note")


@pytest.mark.integration
def test_ctrl_c_during_a_load_kills_the_child_and_pools_nothing(note):
    main = threading.main_thread().ident
    with LocalSite({"/slow": trickle(seconds=4)}) as site:

        def interrupt_when_fetching() -> None:
            _wait_for(lambda: site.requests)
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt_when_fetching, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            load_isolated(LoadRequest(site.url("/slow"), SLOW_URL_OPTIONS), timeout=30, memory_mb=0)

    assert _idle_children() == []
    fresh = load_isolated(LoadRequest(str(note), LoadOptions()), timeout=30, memory_mb=0)
    assert (fresh.status, fresh.source) == ("loaded", str(note))
    assert [child.busy for child in _idle_children()] == [False]  # and this idle one may be reused


# --- ingest's child yields the CPU to the embedder, and is not timed while it waits for one ----------


def _child_niceness(loader: IsolatedLoader, note: Path) -> int:
    assert loader.load(LoadRequest(str(note), LoadOptions())).status == "loaded"
    return os.getpriority(os.PRIO_PROCESS, loader._process.process.pid)


@pytest.mark.integration
def test_ingests_child_runs_at_the_lowest_priority_and_no_other(note):
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with IsolatedLoader(timeout=30, memory_mb=0, niceness=loader_process.LOADER_NICENESS) as loader:
        assert _child_niceness(loader, note) == min(19, own + loader_process.LOADER_NICENESS)
    with IsolatedLoader(timeout=30, memory_mb=0) as loader:  # summarize's and batch jobs'
        assert _child_niceness(loader, note) == own  # not the lowly idle child above


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the time without a CPU is read from /proc")
def test_time_a_low_priority_child_waits_for_a_cpu_is_not_counted_against_the_source_timeout(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><body>" + "<p>A paragraph of the page, parsed in about a tenth of a second.</p>" * 3000 + "</body></html>")
    request = LoadRequest(str(page), LoadOptions())
    with IsolatedLoader(timeout=30, memory_mb=0, niceness=19) as loader:
        loader.load(request)  # started, imports done
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        try:
            loader.timeout = 1.0  # the child gets about 1.5% of a CPU now: the parse takes seconds
            wall = time.monotonic()
            outcome = loader.load(request)
            wall = time.monotonic() - wall
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    assert outcome.status == "loaded", outcome.reason
    assert wall > loader.timeout  # past the limit: its time without a CPU was excused


@pytest.mark.integration
def test_a_slow_server_still_costs_at_most_the_source_timeout_at_low_priority(note):
    with LocalSite({"/late": delayed(PAGE, seconds=3)}) as site:
        with IsolatedLoader(timeout=30, memory_mb=0, niceness=19) as loader:
            loader.load(LoadRequest(str(note), LoadOptions()))  # started, imports done
            loader.timeout = 1.0
            started = time.monotonic()
            outcome = loader.load(LoadRequest(site.url("/late"), SLOW_URL_OPTIONS))
            elapsed = time.monotonic() - started
    assert outcome.status == "failed" and "source_timeout" in outcome.reason and elapsed < 2.5


PAGE = Page(b"<html><head><title>Late</title></head><body><p>A page that took its time.</p></body></html>")


@pytest.mark.integration
def test_a_prestarted_child_is_the_one_the_next_load_uses(note):
    loader_process.prestart(memory_mb=0)
    loader_process.prestart(memory_mb=0)  # one is idle already: no second
    [started] = _idle_children()
    with IsolatedLoader(timeout=30, memory_mb=0) as loader:
        assert loader.load(LoadRequest(str(note), LoadOptions())).status == "loaded"
        assert loader._process is started
    loader_process.shutdown()
    assert not started.alive() and _idle_children() == []


def test_loader_errors_are_rag_errors():
    assert issubclass(LoaderCrashed, RagError)


# --- summarize loads the way ingest does --------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_summarize_loading_follows_include_exclude_and_hidden(tmp_path, settings):
    settings = settings.with_overrides(isolate_loaders=False)  # the expansion is the same; the tests below run the child
    folder = tmp_path / "docs"
    _tree(folder, {"a.md": "# A\n\nKept.", "drafts/b.md": "# B\n\nExcluded.", ".secret.md": "# S\n\nHidden.", "c.txt": "C\n\nNot included."})

    docs, failures = load_documents([folder], settings.with_overrides(include=["*.md"], exclude=["drafts"]))
    assert [Path(doc.metadata["source"]).name for doc in docs] == ["a.md"] and failures == []
    assert docs[0].page_content == "# A\n\nKept." and docs[0].metadata["title"] == "A"

    docs, _ = load_documents([folder], settings.with_overrides(include_hidden=True, exclude=["drafts", "*.txt"]))
    assert sorted(Path(doc.metadata["source"]).name for doc in docs) == [".secret.md", "a.md"]


def _slow_page(path: Path, paragraphs: int) -> Path:
    path.write_text("<html><body>" + "<p>word</p>" * paragraphs + "</body></html>", encoding="utf-8")
    return path


@pytest.mark.integration
def test_summarize_loading_has_the_per_source_time_limit(tmp_path, settings, note):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(note.read_text(encoding="utf-8"), encoding="utf-8")
    _slow_page(folder / "b.html", 1_000_000)
    limited = settings.with_overrides(source_timeout=2, loader_memory_mb=0)
    load_isolated(LoadRequest(str(note), LoadOptions()), timeout=60, memory_mb=0)  # a warm child: time the parsing only

    started = time.monotonic()
    docs, failures = load_documents([folder], limited)

    assert [Path(doc.metadata["source"]).name for doc in docs] == ["a.md"]
    assert [(Path(f.source).name, f.reason) for f in failures] == [("b.html", "took longer than the 2 s per-source limit (source_timeout)")]
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_summarize_loading_has_the_memory_cap(tmp_path, settings):
    folder = tmp_path / "docs"
    _tree(folder, {"a.md": "# A\n\nSmall."})
    _slow_page(folder / "b.html", 1_000_000)

    docs, failures = load_documents([folder], settings.with_overrides(source_timeout=120, loader_memory_mb=MEMORY_CAP_MB))

    assert [Path(doc.metadata["source"]).name for doc in docs] == ["a.md"]
    assert [Path(f.source).name for f in failures] == ["b.html"] and "loader_memory_mb" in failures[0].reason


@pytest.mark.integration
def test_cli_summarize_reports_a_source_over_the_limit_in_one_line(tmp_path, settings):
    page = _slow_page(tmp_path / "huge.html", 1_000_000)
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir), "RAG_SOURCE_TIMEOUT": "2", "RAG_LOADER_MEMORY_MB": "0"}
    result = subprocess.run([sys.executable, "-m", "rag", "summarize", str(page)], capture_output=True, text=True, env=env, timeout=120)

    lines = result.stderr.splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 2, result.stderr
    assert lines[0] == f"failed: {page}: took longer than the 2 s per-source limit (source_timeout)"
    assert lines[1].startswith("error: nothing to summarize")
