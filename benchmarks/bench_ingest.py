"""Ingest benchmark: rag's pipeline beside raw embedding and LangChain's local-models guide.

Corpus: Git's HTML manual pages (Debian's ``git-doc``, about 13 MB), served from
127.0.0.1. The benchmark never changes the machine: when the pages are missing it
prints the install command (``make corpora`` runs it) and exits 0. Two variants:

- ``plain``: the pages as Debian ships them (asciidoc: little boilerplate);
- ``themed``: the same pages' content inside a documentation-site layout like
  git-scm.com's (a header with links, a sidebar listing every command, a footer),
  which is where boilerplate stripping matters.

Both pipelines run in this process with the embedder loaded and chromadb started (a throwaway
store is written first), so neither is charged the other's start-up; each variant starts
without a loader process, as a fresh ``rag ingest`` does. For each variant it prints:

- first ingest, cold: ``rag ingest --json URL...`` and the naive pipeline as a script
  (``benchmarks/naive_ingest.py``), each a fresh process from start to exit (imports, model
  load, loader process), alternated four times (the naive one alone swings by 20%): our wall time
  divided by the naive one's, each round and their mean (target <= 0.6);
- first ingest in this process: our wall time divided by the naive pipeline's, beside the
  same ingest with every word of each chunk embedded (``embed_tokens: 0``), and the word
  pieces each gave the embedder (counted with the embedder's own vocabulary);
- end-to-end chunks/s of ``rag.indexing.ingest`` divided by the raw embedder's
  chunks/s on the same chunk texts (raw timed twice, averaged), and the same on the excerpts
  ours gave the embedder (``embed_tokens``): what the pipeline around the embedder costs;
- the naive guide pipeline (``WebBaseLoader`` -> ``RecursiveCharacterTextSplitter(500, 0)``
  -> ``Chroma.from_documents`` with the same GPT4All embedder): chunks, ingest and
  re-ingest time, chunks after re-ingest;
- re-ingest of the unchanged corpus: first/second time ratio (target >= 100x), chunks added,
  and the server's full downloads and ``304 Not Modified`` answers (rag sends each page's
  Last-Modified back as ``If-Modified-Since``; the test server honours it);
- retrieval hit@4 on a question set about these pages, ours beside the naive one's;
- peak RSS of this process after our runs (the embedder included) and of the loader process;
- the embedder facts the ingest design rests on, measured on the same chunk texts (skip them
  with ``--no-embedder-facts``): gpt4all's f32 MiniLM one text per call with 2 threads and
  with 1, ``Embed4All.embed(list)``, llama-cpp-python's batched ``embed()``, and a Q8_0 copy
  (quantized by llama.cpp into a temporary folder) with its cosine to the f32 vectors.

Run::

    python benchmarks/bench_ingest.py [--variants plain,themed] [--no-embedder-facts] [--json OUT]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import resource
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_DOC = Path("/usr/share/doc/git-doc")

# Page -> questions whose answer is on that page.
QUESTIONS = {
    "git-mv": ["How do I rename a file so that the index is updated as well?", "Which option skips move or rename actions that would lead to an error?"],
    "git-rm": ["How do I remove a file from the index but keep it in my working tree?", "How do I remove a whole directory recursively from the index?"],
    "git-clean": ["How do I remove untracked files from the working tree?", "Which option makes git clean also remove files ignored by .gitignore?"],
    "git-revert": ["How do I create a new commit that undoes the changes of an earlier commit?", "How do I revert a merge commit, choosing which parent is the mainline?"],
    "git-stash": ["How do I save my local modifications away and go back to a clean working directory?", "How do I apply a stashed change and drop it from the stash list?"],
    "git-bisect": ["How do I find the commit that introduced a bug using a binary search?", "How do I automate bisecting with a script that tells good from bad?"],
    "git-cherry-pick": ["How do I apply the changes introduced by some existing commits onto my branch?", "How do I continue a cherry-pick after resolving conflicts?"],
    "git-reflog": ["Where does git record when the tips of branches and HEAD were updated?", "How do I prune old entries from the reflog?"],
    "git-archive": ["How do I create a tar or zip archive of the files in a tree?", "How do I put every file of an archive under a prefix directory?"],
    "git-describe": ["How do I give a commit a human-readable name based on the most recent tag?", "How do I make describe consider lightweight tags too?"],
    "git-gc": ["How do I clean up unnecessary files and optimize my local repository?", "How do I prune loose objects older than a given date during garbage collection?"],
    "git-worktree": ["How do I check out more than one branch at a time in separate directories?", "How do I remove a linked working tree?"],
}

THEME = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Git - {name} Documentation</title>
<link rel="stylesheet" href="/site.css"><script src="/site.js"></script></head>
<body>
<header class="site-header"><a href="/" class="logo">git --fast-version-control</a>
<form id="search" action="/search"><input type="text" name="q" placeholder="Type / to search entire site…"></form>
<nav class="top-nav"><a href="/about">About</a> <a href="/doc">Documentation</a> <a href="/downloads">Downloads</a>
<a href="/community">Community</a> <a href="/book">Pro Git book</a></nav></header>
<div class="layout">
<aside class="sidebar"><h3>Reference</h3><ul>{sidebar}</ul>
<h3>Guides</h3><ul><li><a href="/gitattributes">gitattributes</a></li><li><a href="/giteveryday">Everyday Git</a></li>
<li><a href="/gitglossary">Glossary</a></li><li><a href="/githooks">Hooks</a></li><li><a href="/gitignore">gitignore</a></li>
<li><a href="/gitmodules">gitmodules</a></li><li><a href="/gitrevisions">Revisions</a></li><li><a href="/gittutorial">Tutorial</a></li></ul></aside>
<main id="main">{content}</main>
</div>
<footer class="site-footer"><p>About this site. Patches, suggestions, and comments are welcome.
Git is a member of Software Freedom Conservancy. This site is open source; help improve it on GitHub.</p>
<p><a href="/privacy">Privacy</a> <a href="/trademark">Trademark</a> <a href="/community">Community</a></p></footer>
</body></html>"""


INSTALL_GIT_DOC = "apt-get install --no-install-recommends git-doc"


def git_doc_missing() -> str | None:
    """Why the corpus cannot be used, with the command that installs it; ``None`` when it is there."""
    if (GIT_DOC / "git-mv.html").exists():
        return None
    return f"{GIT_DOC} not found: install Debian's git-doc package (`make corpora`, or as root: {INSTALL_GIT_DOC})"


def build_site(folder: Path, variant: str) -> list[str]:
    """Copy (and for ``themed``, re-dress) the pages; returns their file names."""
    folder.mkdir(parents=True)
    names = [f"{name}.html" for name in QUESTIONS]
    commands = sorted(path.stem for path in GIT_DOC.glob("git-*.html"))
    sidebar = "".join(f'<li><a href="/docs/{command}">{command.removeprefix("git-")}</a></li>' for command in commands)
    for name in names:
        raw = (GIT_DOC / name).read_text(encoding="utf-8")
        if variant == "themed":
            match = re.search(r'<div id="header">.*?(?=<div id="footnotes">|<div id="footer">)', raw, re.DOTALL)
            raw = THEME.format(name=name.removesuffix(".html"), sidebar=sidebar, content=match.group(0))
        (folder / name).write_text(raw, encoding="utf-8")
    return names


class Site:
    def __init__(self, folder: Path) -> None:
        self.statuses: list[int] = []  # of every response, in order
        handler = partial(QuietHandler, directory=str(folder), statuses=self.statuses)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the pages (answering If-Modified-Since with 304, as the standard library does), recording each status."""

    def __init__(self, *args, statuses: list[int], **kwargs) -> None:
        self.statuses = statuses
        super().__init__(*args, **kwargs)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.statuses.append(code)
        super().send_response(code, message)

    def log_message(self, *args: object) -> None:
        pass


def retrieval(search, urls: dict[str, str]) -> dict:
    """hit@4 (the question's page among the sources of the top 4 chunks) and hit@1."""
    hits4 = hits1 = 0
    misses = []
    for page, questions in QUESTIONS.items():
        for question in questions:
            sources = search(question)  # in rank order
            hits1 += sources[:1] == [urls[page]]
            if urls[page] in sources:
                hits4 += 1
            else:
                misses.append(f"{page}: {question}")
    total = sum(len(questions) for questions in QUESTIONS.values())
    return {"hit_at_4": round(hits4 / total, 3), "hit_at_1": round(hits1 / total, 3), "misses": misses}


def live_children() -> list[dict[str, str]]:
    """/proc status fields of this process's running children (the loader process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(os.getpid()):
            ticks = stat.rsplit(")", 1)[1].split()
            fields["cpu_s"] = str((int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK"))
            found.append(fields)
    return found


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children, finished or running."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = sum(float(child["cpu_s"]) for child in live_children())
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + running


def child_peak_rss_mb() -> int:
    """Peak RSS (VmHWM) of this process's running children, e.g. the loader process."""
    return max((int(child["VmHWM"].split()[0]) // 1024 for child in live_children() if "VmHWM" in child), default=0)


def run_variant(variant: str, embeddings, workdir: Path) -> dict:
    from langchain_chroma import Chroma
    from langchain_community.document_loaders import WebBaseLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from rag.indexing import ingest, search
    from rag.sources.process import shutdown
    from rag.settings import Settings
    from rag.store import open_collection

    names = build_site(workdir / f"site-{variant}", variant)
    site = Site(workdir / f"site-{variant}")
    urls = {name.removesuffix(".html"): site.url(name) for name in names}
    figures: dict = {"variant": variant, "pages": len(names)}
    try:
        # --- ours
        settings = Settings(data_dir=workdir / f"ours-{variant}", allow_private_network=True)
        started, cpu = time.perf_counter(), cpu_seconds()
        first = ingest(list(urls.values()), settings, embeddings)
        ours_first = time.perf_counter() - started
        ours_cpu = cpu_seconds() - cpu
        figures["loader_peak_rss_mb"] = child_peak_rss_mb()
        assert not first.failures, first.failures
        served = len(site.statuses)
        started = time.perf_counter()
        second = ingest(list(urls.values()), settings, embeddings)
        ours_second = time.perf_counter() - started
        statuses = site.statuses[served:]
        texts = open_collection(settings).get(include=["documents"])["documents"]
        figures["ours"] = {
            "chunks": first.chunks_added,
            "embedded": first.embedded,
            "ingest_s": round(ours_first, 2),
            "ingest_cpu_s": round(ours_cpu, 2),
            "reingest_s": round(ours_second, 3),
            "reingest_chunks_added": second.chunks_added,
            "reingest_embedded": second.embedded,
            "reingest_full_downloads": statuses.count(200),
            "reingest_not_modified": statuses.count(304),
        }
        figures["ours"]["tokens_embedded"] = count_tokens(embedded_texts(settings))
        figures["ours"].update(retrieval(lambda q: [doc.metadata["source"] for doc, _ in search(q, 4, settings, embeddings)], urls))
        figures["peak_rss_mb_after_ours"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

        # --- raw embedder on the same chunk texts, and on the excerpts ours embedded, twice (the machine is shared)
        excerpts = embedded_texts(settings)
        raw_times, raw_cpu, excerpt_times = [], [], []
        for _ in range(2):
            started, cpu = time.perf_counter(), cpu_seconds()
            embeddings.embed_documents(texts)
            raw_times.append(time.perf_counter() - started)
            raw_cpu.append(cpu_seconds() - cpu)
            started = time.perf_counter()
            embeddings.embed_documents(excerpts)
            excerpt_times.append(time.perf_counter() - started)
        raw_s = sum(raw_times) / len(raw_times)
        figures["raw"] = {"chunks": len(texts), "embed_s": [round(value, 2) for value in raw_times], "embed_cpu_s": [round(value, 2) for value in raw_cpu]}
        ours_rate = first.chunks_added / ours_first
        raw_rate = len(texts) / raw_s
        excerpt_rate = len(excerpts) / (sum(excerpt_times) / len(excerpt_times))
        figures["ours"]["chunks_per_s"] = round(ours_rate, 2)
        figures["raw"]["chunks_per_s"] = round(raw_rate, 2)
        figures["raw"]["excerpts"] = len(excerpts)
        figures["raw"]["excerpts_per_s"] = round(excerpt_rate, 2)
        figures["end_to_end_over_raw"] = round(ours_rate / raw_rate, 3)
        figures["end_to_end_over_raw_excerpts"] = round((first.embedded / ours_first) / excerpt_rate, 3)
        # CPU time is steadier than wall time on a shared machine: raw embedding CPU / our whole pipeline's CPU.
        figures["end_to_end_over_raw_cpu"] = round((sum(raw_cpu) / len(raw_cpu)) / ours_cpu, 3)
        figures["reingest_speedup"] = round(ours_first / ours_second, 1)
        # What the pipeline adds, measured alone: the same ingest with an embedder that costs nothing.
        from langchain_core.embeddings import DeterministicFakeEmbedding

        free = Settings(data_dir=workdir / f"free-{variant}", allow_private_network=True)
        started = time.perf_counter()
        ingest(list(urls.values()), free, DeterministicFakeEmbedding(size=384))
        overhead = time.perf_counter() - started
        figures["pipeline_overhead_s"] = round(overhead, 2)
        figures["expected_ratio_at_raw_rate"] = round(raw_s / (raw_s + overhead), 3)

        # --- ours again with every word of each chunk embedded (embed_tokens 0, as before the cut)
        every_word = Settings(data_dir=workdir / f"all-words-{variant}", allow_private_network=True, embed_tokens=0)
        started = time.perf_counter()
        ingest(list(urls.values()), every_word, embeddings)
        figures["ours_every_word"] = {
            "ingest_s": round(time.perf_counter() - started, 2),
            "tokens_embedded": count_tokens(embedded_texts(every_word)),
            **retrieval(lambda q: [doc.metadata["source"] for doc, _ in search(q, 4, every_word, embeddings)], urls),
        }

        # --- the naive pipeline of LangChain's local-models guide
        splitter = RecursiveCharacterTextSplitter(chunk_size=500, chunk_overlap=0)
        naive_dir = str(workdir / f"naive-{variant}")
        naive_times, naive_cpu, naive_retrieval = [], [], []
        for _ in range(2):
            started, cpu = time.perf_counter(), cpu_seconds()
            data = WebBaseLoader(list(urls.values())).load()
            splits = splitter.split_documents(data)
            store = Chroma.from_documents(documents=splits, embedding=embeddings, persist_directory=naive_dir)
            naive_times.append(time.perf_counter() - started)
            naive_cpu.append(cpu_seconds() - cpu)
            naive_retrieval.append(retrieval(lambda q: [doc.metadata["source"] for doc in store.similarity_search(q, k=4)], urls))
        figures["naive"] = {
            "chunks": len(splits),
            "ingest_s": round(naive_times[0], 2),
            "ingest_cpu_s": round(naive_cpu[0], 2),
            "reingest_s": round(naive_times[1], 2),
            "chunks_after_reingest": store._collection.count(),
            **naive_retrieval[0],
            "hit_at_4_after_reingest": naive_retrieval[1]["hit_at_4"],
            "tokens_embedded": count_tokens([split.page_content for split in splits]),
        }
        figures["ours_over_naive"] = round(ours_first / naive_times[0], 3)
        figures["cold"] = cold_commands(list(urls.values()), workdir / f"cold-{variant}")
        figures["ours_every_word_over_naive"] = round(figures["ours_every_word"]["ingest_s"] / naive_times[0], 3)
    finally:
        site.close()
        shutdown()  # the next variant starts without a loader process, as this one did
    return figures


def cold_commands(urls: list[str], folder: Path, rounds: int = 4) -> dict:
    """Wall time of ``rag ingest`` and of the naive guide script, each a fresh process from start to exit, alternated."""
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(here.parent), "RAG_ALLOW_PRIVATE_NETWORK": "1"}
    ours_s, naive_s = [], []
    for number in range(rounds):
        commands = {
            "ours": [sys.executable, "-m", "rag", "ingest", "--store", str(folder / f"ours-{number}"), "--json", *urls],
            "naive": [sys.executable, str(here / "naive_ingest.py"), str(folder / f"naive-{number}"), *urls],
        }
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            (ours_s if name == "ours" else naive_s).append(time.perf_counter() - started)
    ratios = [ours / naive for ours, naive in zip(ours_s, naive_s)]
    return {
        "ours_s": [round(value, 2) for value in ours_s],
        "naive_s": [round(value, 2) for value in naive_s],
        "ours_over_naive": [round(value, 3) for value in ratios],
        "ours_over_naive_mean": round(sum(ratios) / len(ratios), 3),
    }


def warm_chroma(embeddings) -> None:
    """Open and write a throwaway Chroma store, so neither pipeline's time counts chromadb's first start in the process."""
    from langchain_chroma import Chroma
    from langchain_core.documents import Document

    with tempfile.TemporaryDirectory(prefix="bench-ingest-warm-") as folder:
        Chroma.from_documents([Document("warm-up")], embeddings, persist_directory=folder)


def embedded_texts(settings) -> list[str]:
    """What an ingest gave the embedder: each distinct chunk's embedded text, cut to ``embed_tokens``."""
    from rag.split import embedding_text, first_tokens
    from rag.store import open_collection

    found = open_collection(settings).get(include=["documents", "metadatas"])
    texts = {meta["chunk_hash"]: first_tokens(embedding_text(text, meta), settings.embed_tokens) for text, meta in zip(found["documents"], found["metadatas"])}
    return list(texts.values())


def count_tokens(texts: list[str]) -> int:
    """Word pieces of ``texts`` by the embedder's own vocabulary (llama.cpp reads it from the GGUF)."""
    vocabulary = embedder_vocabulary()
    return sum(len(vocabulary.tokenize(text.encode("utf-8"), add_bos=False)) for text in texts)


@functools.lru_cache(maxsize=1)
def embedder_vocabulary():
    """The default embedder's GGUF loaded for its vocabulary only."""
    import llama_cpp

    from rag.embed import embedding_model_file
    from rag.settings import Settings

    name, folder, _ = embedding_model_file(Settings())
    return llama_cpp.Llama(model_path=str(folder / name), vocab_only=True, verbose=False)


def print_figures(figures: dict) -> None:
    ours, naive, raw = figures["ours"], figures["naive"], figures["raw"]
    print(f"\n== {figures['variant']}: {figures['pages']} git-doc pages over 127.0.0.1 ==")
    print(f"{'':28}{'ours':>12}{'naive guide':>14}")
    print(f"{'chunks':28}{ours['chunks']:>12}{naive['chunks']:>14}")
    print(f"{'ingest s':28}{ours['ingest_s']:>12}{naive['ingest_s']:>14}")
    print(f"{'re-ingest s':28}{ours['reingest_s']:>12}{naive['reingest_s']:>14}")
    print(f"{'chunks added on re-ingest':28}{ours['reingest_chunks_added']:>12}{naive['chunks_after_reingest'] - naive['chunks']:>14}")
    print(f"{'ingest CPU s':28}{ours['ingest_cpu_s']:>12}{naive['ingest_cpu_s']:>14}")
    print(f"{'hit@4':28}{ours['hit_at_4']:>12.2f}{naive['hit_at_4']:>14.2f}")
    print(f"{'hit@1':28}{ours['hit_at_1']:>12.2f}{naive['hit_at_1']:>14.2f}")
    print(f"{'hit@4 after re-ingest':28}{ours['hit_at_4']:>12.2f}{naive['hit_at_4_after_reingest']:>14.2f}")
    every = figures["ours_every_word"]
    print(
        f"first ingest, ours / naive wall time = {figures['ours_over_naive']} (target <= 0.6); "
        f"with every word embedded (embed_tokens 0) {figures['ours_every_word_over_naive']}, hit@4 {every['hit_at_4']:.2f}"
    )
    cold = figures["cold"]
    print(
        f"cold, each a fresh process to exit: `rag ingest` {cold['ours_s']} s, naive guide script {cold['naive_s']} s; "
        f"ours / naive = {cold['ours_over_naive']}, mean {cold['ours_over_naive_mean']} (target <= 0.6)"
    )
    print(f"tokens embedded: ours {ours['tokens_embedded']} (every word: {every['tokens_embedded']}), naive {naive['tokens_embedded']}")
    print(f"end-to-end {ours['chunks_per_s']} chunks/s / raw embedder {raw['chunks_per_s']} chunks/s = {figures['end_to_end_over_raw']} (target >= 0.9)")
    print(
        f"the same on what ours embedded: {ours['embedded']} excerpts ({ours['embedded'] / ours['ingest_s']:.2f}/s end to end) / "
        f"raw embedder {raw['excerpts_per_s']}/s = {figures['end_to_end_over_raw_excerpts']} (the pipeline's own efficiency)"
    )
    print(f"same in CPU time: raw embedding CPU s / our pipeline's CPU s = {figures['end_to_end_over_raw_cpu']}")
    print(
        f"pipeline alone (zero-cost embedder): {figures['pipeline_overhead_s']} s for {ours['chunks']} chunks; "
        f"raw embedding time / (raw + that) = {figures['expected_ratio_at_raw_rate']}"
    )
    print(
        f"re-ingest speed-up first/second = {figures['reingest_speedup']}x (target >= 100x); embedded on re-ingest: {ours['reingest_embedded']}; "
        f"pages downloaded again: {ours['reingest_full_downloads']}, answered 304 Not Modified: {ours['reingest_not_modified']}"
    )
    print(f"peak RSS: {figures['peak_rss_mb_after_ours']} MB this process after ours (embedder included), loader process {figures['loader_peak_rss_mb']} MB")
    for name in ("ours", "naive"):
        for miss in figures[name]["misses"]:
            print(f"  {name} missed: {miss}")


def fact_texts(count: int) -> list[str]:
    """``count`` chunk-sized texts (about 120 tokens) cut from the corpus pages."""
    from rag.sources.html import html_to_text

    words: list[str] = []
    for name in QUESTIONS:
        words += html_to_text((GIT_DOC / f"{name}.html").read_bytes(), "utf-8", True)[1].split()
    return [" ".join(words[start : start + 80]) for start in range(0, 80 * count, 80)]


def embedder_facts(settings, workdir: Path, count: int = 48) -> dict:
    """Chunks/s of the default embedder's alternatives on the same ``count`` texts; see the module docstring."""
    import gpt4all
    import llama_cpp

    from rag.embed import embedding_model_file
    from rag.native import quiet_native_stderr

    name, folder, _ = embedding_model_file(settings)
    texts = fact_texts(count)

    def rate(call, items) -> float:
        started = time.perf_counter()
        call(items)
        return round(len(items) / (time.perf_counter() - started), 1)

    def gpt4all_model(file_name: str, model_folder: Path, threads: int):
        with quiet_native_stderr():
            return gpt4all.Embed4All(file_name, n_threads=threads, model_path=str(model_folder), allow_download=False)

    facts: dict = {"texts": count}
    f32 = {threads: gpt4all_model(name, folder, threads) for threads in (2, 1)}
    f32[2].embed(texts[:2])  # warm-up
    reference = [f32[2].embed(text) for text in texts]
    facts["gpt4all_f32_one_per_call_2_threads"] = rate(lambda items: [f32[2].embed(text) for text in items], texts)
    facts["gpt4all_f32_one_per_call_1_thread"] = rate(lambda items: [f32[1].embed(text) for text in items], texts)
    facts["gpt4all_f32_list_call_2_threads"] = rate(f32[2].embed, texts)

    quantized = workdir / "minilm.q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = 2
    with quiet_native_stderr():
        failed = llama_cpp.llama_model_quantize(str(folder / name).encode(), str(quantized).encode(), params)
    if not failed:
        q8 = gpt4all_model(quantized.name, workdir, 2)
        q8.embed(texts[:2])
        facts["gpt4all_q8_0_one_per_call_2_threads"] = rate(lambda items: [q8.embed(text) for text in items], texts)
        cosines = [sum(a * b for a, b in zip(x, y)) / (sum(a * a for a in x) * sum(b * b for b in y)) ** 0.5
                   for x, y in zip(reference, (q8.embed(text) for text in texts))]  # fmt: skip
        facts["q8_0_min_cosine_to_f32"] = round(min(cosines), 5)

    with quiet_native_stderr():
        llama = llama_cpp.Llama(str(folder / name), embedding=True, n_threads=2, n_threads_batch=2, n_ctx=512, n_batch=512, verbose=False)
    llama.embed(texts[:2])
    facts["llama_cpp_python_batched_embed_2_threads"] = rate(llama.embed, texts[: count // 2])
    return facts


def print_embedder_facts(facts: dict) -> None:
    one = facts["gpt4all_f32_one_per_call_2_threads"]
    print(f"\n== the embedder's alternatives, {facts['texts']} chunk-sized texts from the same pages (chunks/s, and / the default) ==")
    for key, label in (
        ("gpt4all_f32_one_per_call_2_threads", "gpt4all f32, one text per call, 2 threads (rag's way)"),
        ("gpt4all_f32_one_per_call_1_thread", "gpt4all f32, one text per call, 1 thread"),
        ("gpt4all_q8_0_one_per_call_2_threads", "gpt4all Q8_0 copy, one text per call, 2 threads"),
        ("gpt4all_f32_list_call_2_threads", "gpt4all f32, Embed4All.embed(list), 2 threads"),
        ("llama_cpp_python_batched_embed_2_threads", "llama-cpp-python batched embed(), 2 threads"),
    ):
        if key in facts:
            print(f"{label:<58}{facts[key]:>8.1f}{facts[key] / one:>8.2f}")
    if "q8_0_min_cosine_to_f32" in facts:
        print(f"Q8_0 copy: lowest cosine to the f32 vectors {facts['q8_0_min_cosine_to_f32']}")
    print("(earlier on this machine: 25-30 with 2 threads, 16 with 1, Q8_0 22, a list call about 5x slower, llama-cpp-python 2-12)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="plain,themed")
    parser.add_argument("--no-embedder-facts", action="store_true", help="skip measuring the embedder's alternatives")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("USER_AGENT", "rag-benchmark")  # WebBaseLoader warns without one
    missing = git_doc_missing()
    if missing:
        print(f"skipped: {missing}")
        return

    from rag.embed import load_embeddings
    from rag.settings import Settings

    embeddings = load_embeddings(Settings())
    embeddings.embed_documents(["warm-up"] * 4)
    warm_chroma(embeddings)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for variant in args.variants.split(","):
            figures = run_variant(variant, embeddings, Path(tmp))
            print_figures(figures)
            results.append(figures)
        if not args.no_embedder_facts:
            facts = embedder_facts(Settings(), Path(tmp))
            print_embedder_facts(facts)
            results.append({"embedder_facts": facts})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
