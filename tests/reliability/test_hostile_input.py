"""A generated corpus of hostile files, ingested by the real CLI: no crash, no hang, no good file lost, every bad one reported.

The corpus (tests/reliability/hostile_corpus.py) mixes 27 good files in odd encodings,
names and structures with 47 bad ones (damaged, encrypted, cyclic and bomb PDFs, binary
data under text names, a 10 GB sparse file, symlink loops, pipes, devices, names that are
not UTF-8, ...). The integration test ingests it with ``rag ingest --json`` under a
memory-measuring parent and searches every good phrase; the fast tests keep the defects
it found fixed (each names the fix it guards).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from rag.cli import EXIT_ERROR, EXIT_PARTIAL
from rag.sources import LoadError, expand_inputs, load_source
from tests.conftest import REPO_ROOT
from tests.reliability.hostile_corpus import (
    MAX_SOURCE_MB,
    NOT_UTF8,
    PDF_LIMIT,
    SOURCE_TIMEOUT,
    aes_encrypted_pdf,
    build_hostile_corpus,
    declared_huge_length_pdf,
    flate_bomb_pdf,
    many_kids_pdf,
    self_length_pdf,
)

PEAK_MEMORY_CEILING_MB = 1024  # every process of the run: the CLI (embedder, Chroma) and its loader children; about 300 measured
RUN_SECONDS_CEILING = 180  # 25-60 s measured on 2 shared cores; a source that hung would never end
SLOW_TO_PARSE = {"token-bomb.pdf"}  # about 12 s to parse: may meet the per-source limit

# Runs a command and prints, as JSON, its exit status, output, wall time and the peak RSS of
# it and every process it waited for. A parent of its own, so that pytest's memory (which Linux
# carries into ru_maxrss across fork and exec) is not counted.
MEASURED = """
import json, resource, subprocess, sys, time
started = time.monotonic()
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr, "seconds": time.monotonic() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def relative_name(source: str, folder: Path) -> str:
    """``source`` (a reported or loaded path) relative to ``folder``, as the corpus names it."""
    return source[len(str(folder.resolve())) + 1 :]


def run_measured(*command: str, data_dir: Path, timeout: float = 300) -> dict:
    """Run ``command`` with the store in ``data_dir`` under :data:`MEASURED`; its exit status, output, seconds, peak RSS."""
    wrapper = subprocess.run(
        [sys.executable, "-c", MEASURED, *command],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, "RAG_DATA_DIR": str(data_dir)},
    )  # fmt: skip
    return json.loads(wrapper.stdout)


@pytest.fixture(scope="module")
def hostile_ingest(tmp_path_factory):
    """The corpus, ingested once by ``rag ingest FOLDER --json`` with a 1 MB cap and an 8 s per-source limit."""
    root = tmp_path_factory.mktemp("hostile")
    folder, data_dir = root / "corpus", root / "rag-data"
    good, bad = build_hostile_corpus(folder)
    run = run_measured(
        sys.executable, "-m", "rag", "ingest", str(folder), "--json",
        "--max-source-mb", str(MAX_SOURCE_MB), "--source-timeout", str(SOURCE_TIMEOUT),
        data_dir=data_dir,
    )  # fmt: skip
    return folder, data_dir, good, bad, run


@pytest.mark.integration  # the real CLI, its loader processes and the real embedder
def test_hostile_corpus_every_good_file_lands_every_bad_one_is_reported(hostile_ingest, embeddings):
    from rag.retrieval import retriever
    from rag.settings import Settings
    from rag.store import open_collection

    folder, data_dir, good, bad, run = hostile_ingest
    print(f"\nhostile corpus: {len(good)} good, {len(bad)} bad; ingest {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB")
    assert run["returncode"] == EXIT_PARTIAL, run["stderr"]  # some failed, the rest landed: not a crash
    assert "Traceback" not in run["stderr"]
    report = json.loads(run["stdout"])
    reasons = {relative_name(failure["source"], folder): failure["reason"] for failure in report["failures"]}
    assert sorted(reasons) == sorted(bad), "reported failures differ from the bad files"
    wrong = {name: reasons[name] for name, pattern in bad.items() if not re.search(pattern, reasons[name])}
    assert not wrong, wrong
    assert report["sources_added"] == len(good)

    # No hang: the pipe, /dev/zero and the bombs end; only the slowest parse may meet the per-source limit.
    timed_out = [name for name, reason in reasons.items() if "per-source limit" in reason]
    assert set(timed_out) <= SLOW_TO_PARSE
    assert run["seconds"] < RUN_SECONDS_CEILING, run["seconds"]
    assert run["peak_rss_mb"] < PEAK_MEMORY_CEILING_MB, run["peak_rss_mb"]

    settings = Settings(data_dir=data_dir, min_score=0.0)  # landed and found; the similarity cut-off is not under test
    search = retriever(settings, embeddings, k=4)  # what rag search, ask and chat use
    lost = {}
    for name, phrase in good.items():
        hits = search.invoke(phrase)
        source = str((folder / name).resolve())
        if not any(doc.metadata["source"] == source and phrase in " ".join(doc.page_content.split()) for doc in hits):
            lost[name] = [(doc.metadata["source"], doc.page_content[:60]) for doc in hits]
    assert not lost, lost
    stored = " ".join(open_collection(settings).get(include=["documents"])["documents"])
    assert "lollol" not in stored and "root:x:0:0" not in stored  # no entity was expanded, no external one read


@pytest.mark.integration  # the real CLI
def test_search_and_summarize_through_the_cli_on_hostile_files(hostile_ingest):
    folder, data_dir, good, _bad, _run = hostile_ingest
    name = "line\nbreak.md"
    found = run_measured(sys.executable, "-m", "rag", "search", good[name], "-k", "4", "--json", data_dir=data_dir)
    assert found["returncode"] == 0, found["stderr"]
    sources = [hit["source"] for hit in json.loads(found["stdout"])]
    assert str((folder / name).resolve()) in sources, sources  # raw in JSON, newline and all

    inputs = [folder / "fifo.txt", folder / "flate-bomb.pdf", folder / "encrypted.pdf", folder / "all-bytes.txt"]
    started = time.monotonic()
    summary = run_measured(sys.executable, "-m", "rag", "summarize", *map(str, inputs), data_dir=data_dir, timeout=120)
    assert time.monotonic() - started < 60  # the pipe is not read, nothing waits on it
    assert summary["returncode"] == EXIT_ERROR and summary["stdout"] == ""
    lines = summary["stderr"].splitlines()
    assert len(lines) == len(inputs) + 1 and "Traceback" not in summary["stderr"], lines  # one line per input, one error line
    assert all(line.startswith("failed: ") for line in lines[:-1]) and lines[-1].startswith("error: nothing to summarize")
    assert re.search("not a regular file", lines[0]) and re.search(PDF_LIMIT, lines[1]) and "encrypted PDF" in lines[2]


# --- the defects the corpus found (fast) --------------------------------------------------------------


@pytest.mark.parametrize("make", [flate_bomb_pdf, self_length_pdf, declared_huge_length_pdf, many_kids_pdf])
def test_pdf_reader_safety_limits_are_reported_as_such(tmp_path, make):
    """Fixed: pypdf's LimitReachedError escaped parse_pdf and was reported as 'unexpected LimitReachedError'."""
    path = tmp_path / "bomb.pdf"
    path.write_bytes(make())
    with pytest.raises(LoadError, match=PDF_LIMIT):
        load_source(str(path))


def test_aes_encrypted_pdf_is_refused_with_the_fix():
    """Fixed: without the cryptography package, pypdf's DependencyError came out as 'unexpected DependencyError'."""
    from rag.sources.pdf import parse_pdf

    with pytest.raises(LoadError, match=r"encrypted PDF(?: \(AES\): opening it needs the cryptography package|: it needs a password)"):
        parse_pdf(aes_encrypted_pdf())


def test_pipes_devices_broken_links_and_unreadable_names_in_a_folder_are_reported(tmp_path):
    """Fixed: these were skipped without a word (a pipe, /dev/zero, a broken link) or crashed the ingest (a Latin-1 name)."""
    (tmp_path / "note.md").write_text("# Note\n\nFine.\n", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    os.symlink("/dev/zero", tmp_path / "zero.txt")
    os.symlink("gone.md", tmp_path / "broken.md")
    os.symlink("gone", tmp_path / "broken-no-suffix")  # not a supported name: not wanted, not reported
    os.mkfifo(tmp_path / "pipe.csv")  # likewise
    Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.md")).write_text("# Latin-1 name\n", encoding="utf-8")
    found = expand_inputs([tmp_path])
    assert [Path(source).name for source in found.sources] == ["note.md"]
    assert sorted((relative_name(failure.source, tmp_path), failure.reason.split(":")[0].split(" (")[0]) for failure in found.failures) == [
        ("broken.md", "broken symbolic link"),
        ("caf\\xe9.md", "the name is not valid UTF-8, so it cannot be recorded; rename it"),
        ("pipe.txt", "not a regular file"),
        ("zero.txt", "not a regular file"),
    ]


def test_a_file_name_that_is_not_utf8_fails_alone_instead_of_stopping_the_ingest(settings, tmp_path):
    """Fixed: the surrogate-escaped name reached SQLite ('surrogates not allowed') and the whole ingest died with a traceback."""
    from rag.indexing import ingest

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.md").write_text("# OK\n\nThe good note lands.\n", encoding="utf-8")
    Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.md")).write_text("# Latin-1 name\n\nNever read.\n", encoding="utf-8")
    report = ingest([folder], settings.with_overrides(isolate_loaders=False), DeterministicFakeEmbedding(size=16))
    assert report.sources_added == 1
    assert [(failure.source, re.search(NOT_UTF8, failure.reason) is not None) for failure in report.failures] == [(str(folder.resolve()) + "/caf\\xe9.md", True)]
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")  # printable as the CLI's --json prints it
