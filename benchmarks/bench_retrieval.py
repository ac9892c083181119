"""Retrieval benchmark: which chunks reach the model, method beside method, on real documentation.

Corpora: Git's manual pages (``git-doc``) and the PostgreSQL 15 manual
(``postgresql-doc-15``), a few dozen pages each, served from 127.0.0.1 and ingested by
URL as users ingest sites. Questions: ``benchmarks/questions/git.yaml`` and
``postgres.yaml`` (written before the retrieval changes, never tuned to them): each
names the page that answers it and a phrase of the answering passage. A *hit* is a
retrieved chunk from that page containing the phrase (case and whitespace ignored).

Rows, all with the default embedder and 500-character chunks, in one run:

- ``naive guide``: LangChain's local-models guide (``WebBaseLoader`` ->
  ``RecursiveCharacterTextSplitter(500, 0)`` -> ``Chroma.from_documents``, ``similarity_search``);
- ``vector, old splitter``: rag's loaders and the splitter before issue 15 (no sections),
  vector search (what ``rag search`` did before);
- ``vector, sections``: ``rag.ingest`` (structure-aware chunks), vector search;
- ``lexical``: the same store, BM25 alone;
- ``hybrid``: the same store, vector and BM25 fused by reciprocal rank;
- ``hybrid + neighbours``: each hit with one chunk before and after it from its section.

With ``--answers``, the default model answers every question (unanswerable ones included)
from the top 4 of the context before issue 15 (old splitter, vector, no cut-off, best
chunk first) and of today's default retriever, best chunk first and last: fact recall
(the question's phrase in the answer, whole and word by word) and the don't-know rate.

Columns: hit@1, hit@4, MRR (first hit within the top 10), chunks stored, ingest seconds
(model already loaded), query latency p50/p95 (what ``retriever.invoke`` costs) and the
same without the query embedding. Last, hybrid query latency at 20,000 chunks (the git
chunks copied with new ids), the query embedding excluded and reported beside it.

When the pages are missing it prints the install command and exits 0. Run::

    python benchmarks/bench_retrieval.py [--corpora git,postgres] [--scale 20000] [--answers] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

HERE = Path(__file__).parent
QUESTION_FILES = {"git": HERE / "questions" / "git.yaml", "postgres": HERE / "questions" / "postgres.yaml"}
TOP = 10  # chunks retrieved per question (MRR over them; hit@1 and hit@4 from their head)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class Site:
    """A folder served on 127.0.0.1 for the web loader."""

    def __init__(self, root: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=root))
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{page}"

    def close(self) -> None:
        self.server.shutdown()


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def score(questions: list[dict], search) -> dict:
    """hit@1, hit@4, MRR@10 and latencies of ``search(question) -> ([(source, text)], seconds, embed seconds)``."""
    ranks, total, bare, misses = [], [], [], []
    for question in questions:
        hits, seconds, embed_seconds = search(question["question"])
        total.append(seconds)
        bare.append(seconds - embed_seconds)
        phrase = normalize(question["phrase"])
        rank = next(
            (n for n, (source, text) in enumerate(hits[:TOP], start=1) if source.endswith("/" + question["page"]) and phrase in normalize(text)),
            None,
        )
        ranks.append(rank)
        if rank is None or rank > 4:
            misses.append(question["id"])
    count = len(questions)
    return {
        "hit_at_1": round(sum(1 for rank in ranks if rank == 1) / count, 3),
        "hit_at_4": round(sum(1 for rank in ranks if rank and rank <= 4) / count, 3),
        "mrr": round(sum(1 / rank for rank in ranks if rank) / count, 3),
        "p50_ms": round(1000 * statistics.median(total), 1),
        "p95_ms": round(1000 * sorted(total)[int(0.95 * (count - 1))], 1),
        "p50_no_embed_ms": round(1000 * statistics.median(bare), 1),
        "p95_no_embed_ms": round(1000 * sorted(bare)[int(0.95 * (count - 1))], 1),
        "misses_at_4": misses,
    }


def timed_retriever(base):
    """``base`` (a RagRetriever) as a search function that also times its query embedding."""
    from rag.retrieval import RagRetriever

    spent = [0.0]

    class Timed(RagRetriever):
        def _embed(self, query: str) -> list[float]:
            started = time.perf_counter()
            try:
                return super()._embed(query)
            finally:
                spent[0] += time.perf_counter() - started

    retriever = Timed(**{name: getattr(base, name) for name in RagRetriever.model_fields if name not in ("tags", "metadata")})

    def search(query: str):
        spent[0] = 0.0
        started = time.perf_counter()
        docs = retriever.invoke(query)
        return [(doc.metadata.get("source", ""), doc.page_content) for doc in docs], time.perf_counter() - started, spent[0]

    return search


def naive_guide(urls: list[str], questions: list[dict], embeddings, folder: Path) -> dict:
    """The naive pipeline of LangChain's local-models guide, scored."""
    from langchain_chroma import Chroma
    from langchain_community.document_loaders import WebBaseLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    started = time.perf_counter()
    splits = RecursiveCharacterTextSplitter(chunk_size=500, chunk_overlap=0).split_documents(WebBaseLoader(urls).load())
    naive = Chroma.from_documents(documents=splits, embedding=embeddings, persist_directory=str(folder))
    seconds = time.perf_counter() - started

    def search(query: str):
        started = time.perf_counter()
        docs = naive.similarity_search(query, k=TOP)
        return [(doc.metadata.get("source", ""), doc.page_content) for doc in docs], time.perf_counter() - started, 0.0

    row = {**score(questions, search), "chunks": len(splits), "ingest_s": round(seconds, 1)}
    row["p50_no_embed_ms"] = row["p95_no_embed_ms"] = None  # not separable
    return row


def run_corpus(name: str, data: dict, embeddings, workdir: Path, naive_row: bool = True, answers: bool = False) -> dict:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from rag import Settings, ingest
    from rag.retrieval import RagRetriever, retriever
    from rag.sources import LoadOptions, load_source
    from rag.split import split_documents
    from rag.store import chunk_id, clean_metadata

    questions = [question for question in data["questions"] if question.get("answerable", True)]
    site = Site(data["root"])
    urls = [site.url(page) for page in data["pages"]]
    rows: dict[str, dict] = {}
    try:
        if naive_row:
            print(f"{name}: naive guide ...", flush=True)
            rows["naive guide"] = naive_guide(urls, questions, embeddings, workdir / f"naive-{name}")

        # --- rag's loaders with the splitter before issue 15, vector search
        print(f"{name}: old splitter ...", flush=True)
        started = time.perf_counter()
        client = chromadb.PersistentClient(path=str(workdir / f"old-{name}"), settings=ChromaSettings(anonymized_telemetry=False))
        collection = client.get_or_create_collection("old", metadata={"hnsw:space": "cosine"})
        options = LoadOptions.from_settings(Settings(allow_private_network=True))
        for url in urls:
            chunks = split_documents(load_source(url, options).documents, 500, 0, sections=False)
            seen: dict[str, int] = {}
            ids = []
            for chunk in chunks:
                digest = chunk.metadata["chunk_hash"]
                ids.append(chunk_id(url, digest, seen.get(digest, 0)))
                seen[digest] = seen.get(digest, 0) + 1
            texts = [chunk.page_content for chunk in chunks]
            vectors = embeddings.embed_documents(texts)
            collection.upsert(ids=ids, embeddings=vectors, documents=texts, metadatas=[clean_metadata({**c.metadata, "source": url}) for c in chunks])
        old_seconds = time.perf_counter() - started
        old = RagRetriever(collection=collection, embeddings=embeddings, k=TOP, method="vector")
        rows["vector, old splitter"] = {**score(questions, timed_retriever(old)), "chunks": collection.count(), "ingest_s": round(old_seconds, 1)}

        # --- rag.ingest: structure-aware chunks, then each retrieval method on the same store
        settings = Settings(data_dir=workdir / f"rag-{name}", allow_private_network=True)
        print(f"{name}: rag.ingest ...", flush=True)
        started = time.perf_counter()
        report = ingest(urls, settings, embeddings)
        new_seconds = time.perf_counter() - started
        if report.failures:
            raise SystemExit(f"ingest failed: {report.failures[:3]}")
        stored = {"chunks": report.chunks, "ingest_s": round(new_seconds, 1)}
        for label, overrides in [
            ("vector, sections", {"retrieval": "vector"}),
            ("lexical, sections", {"retrieval": "lexical"}),
            ("hybrid, sections", {"retrieval": "hybrid"}),
            ("hybrid + neighbours", {"retrieval": "hybrid", "neighbours": 1}),
        ]:
            chosen = settings.model_copy(update=overrides)
            rows[label] = {**score(questions, timed_retriever(retriever(chosen, embeddings, k=TOP))), **stored}
        if answers:
            print(f"{name}: answers with the default model ...", flush=True)
            before = RagRetriever(collection=collection, embeddings=embeddings, k=4, method="vector")
            default = retriever(settings, embeddings)
            contexts = {
                "context before issue 15": (before, "best_first"),
                "default context (best first)": (default, "best_first"),
                "default context, best last": (default, "best_last"),
            }
            answer_rows = answer_quality(data["questions"], contexts, settings)
    finally:
        site.close()
    result = {"corpus": name, "package": data["package"], "pages": len(data["pages"]), "questions": len(questions), "rows": rows}
    if answers:
        result["answers"] = answer_rows
    return result


def answer_quality(all_questions: list[dict], retrievers: dict, settings) -> dict:
    """Answers of the default model from each ``(retriever, context_order)``'s top 4: fact recall and the don't-know rate.

    A question's fact is its phrase: *phrase found* counts answers holding it whole, *phrase
    words* the share of its words (3 letters or more) the answer holds, averaged. *don't know*
    is the share of unanswerable questions the answer declines (``rag eval``'s test), *false
    don't know* the share of answerable ones.
    """
    from rag import Assistant
    from rag.eval.metrics import contains_phrase, says_dont_know

    rows = {}
    local_llm = None
    for label, (chosen, order) in retrievers.items():
        assistant = Assistant(settings.model_copy(update={"max_tokens": 96, "context_order": order}), local_llm=local_llm)
        local_llm = assistant.local_llm
        found, shares, declined, unanswerable, false_declined = 0, [], 0, 0, 0
        for question in all_questions:
            answer = assistant.answer_from(question["question"], chosen.invoke(question["question"])).answer
            if not question.get("answerable", True):
                unanswerable += 1
                declined += says_dont_know(answer)
                continue
            false_declined += says_dont_know(answer)
            found += contains_phrase(answer, question["phrase"])
            words = [word for word in re.findall(r"\w+", question["phrase"].casefold()) if len(word) >= 3] or [question["phrase"].casefold()]
            shares.append(sum(word in answer.casefold() for word in words) / len(words))
        rows[label] = {
            "phrase_found": round(found / len(shares), 3),
            "phrase_words": round(statistics.mean(shares), 3),
            "dont_know": round(declined / unanswerable, 3) if unanswerable else None,
            "false_dont_know": round(false_declined / len(shares), 3),
        }
    return rows


def scale_latency(embeddings, workdir: Path, target: int, questions: list[dict]) -> dict:
    """Hybrid query latency with ``target`` chunks: the git store's chunks copied under new ids."""
    from rag import Settings
    from rag.lexical import LexicalIndex
    from rag.retrieval import retriever
    from rag.split import chunk_heading
    from rag.store import open_collection

    source = Settings(data_dir=workdir / "rag-git", allow_private_network=True)
    base = open_collection(source, create=False).get(include=["documents", "metadatas", "embeddings"])
    settings = Settings(data_dir=workdir / "scaled", allow_private_network=True, retrieval="hybrid")
    collection = open_collection(settings)
    collection.modify(metadata=open_collection(source, create=False).metadata)
    lexical = LexicalIndex(settings.store_path, settings.collection)
    copies = -(-target // len(base["ids"]))
    started = time.perf_counter()
    for copy in range(copies):
        take = min(len(base["ids"]), target - copy * len(base["ids"]))
        ids = [f"{copy}-{chunk_id}" for chunk_id in base["ids"][:take]]
        metadatas = [{**metadata, "source": f"{metadata['source']}#{copy}"} for metadata in base["metadatas"][:take]]
        collection.upsert(ids=ids, embeddings=[list(v) for v in base["embeddings"][:take]], documents=base["documents"][:take], metadatas=metadatas)
        lexical.add((i, m["source"], t, chunk_heading(m)) for i, m, t in zip(ids, metadatas, base["documents"][:take]))
    lexical.mark_clean()
    lexical.close()
    build = time.perf_counter() - started
    search = timed_retriever(retriever(settings, embeddings, k=4))
    for question in questions[:3]:
        search(question["question"])  # warm caches
    total, bare, embed = [], [], []
    for question in questions:
        _, seconds, embed_seconds = search(question["question"])
        total.append(seconds)
        bare.append(seconds - embed_seconds)
        embed.append(embed_seconds)
    return {
        "chunks": collection.count(),
        "build_s": round(build, 1),
        "hybrid_p50_no_embed_ms": round(1000 * statistics.median(bare), 1),
        "hybrid_p95_no_embed_ms": round(1000 * sorted(bare)[int(0.95 * (len(bare) - 1))], 1),
        "query_embedding_p50_ms": round(1000 * statistics.median(embed), 1),
        "hybrid_p50_ms": round(1000 * statistics.median(total), 1),
    }


def print_corpus(result: dict) -> None:
    print(f"\n== {result['corpus']}: {result['pages']} {result['package']} pages over 127.0.0.1, {result['questions']} questions ==")
    head = f"{'':22}{'hit@1':>7}{'hit@4':>7}{'MRR':>7}{'chunks':>8}{'ingest s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p50 -emb':>9}{'p95 -emb':>9}"
    print(head)
    for label, row in result["rows"].items():
        shown = lambda value: "-" if value is None else value  # noqa: E731
        print(
            f"{label:22}{row['hit_at_1']:>7}{row['hit_at_4']:>7}{row['mrr']:>7}{row['chunks']:>8}{row['ingest_s']:>9}"
            f"{row['p50_ms']:>8}{row['p95_ms']:>8}{shown(row['p50_no_embed_ms']):>9}{shown(row['p95_no_embed_ms']):>9}"
        )
    if "answers" in result:
        print(f"{'answers (default model, top 4)':36}{'phrase found':>14}{'phrase words':>14}{'dont know':>11}{'false dont know':>17}")
        for label, row in result["answers"].items():
            print(f"{label:36}{row['phrase_found']:>14}{row['phrase_words']:>14}{str(row['dont_know']):>11}{row['false_dont_know']:>17}")
    for label, row in result["rows"].items():
        if row["misses_at_4"]:
            print(f"  missed at 4 by {label}: {', '.join(row['misses_at_4'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", default="git,postgres")
    parser.add_argument("--scale", type=int, default=20000, help="chunks for the latency-at-scale row (0: skip)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive guide row (the slowest to build)")
    parser.add_argument("--answers", action="store_true", help="also answer every question with the default model from the context before issue 15 and today's (minutes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sets = {name: yaml.safe_load(QUESTION_FILES[name].read_text()) for name in args.corpora.split(",")}
    missing = [data["package"] for data in sets.values() if not Path(data["root"]).is_dir()]
    if missing:
        print(f"pages missing; install them with: apt-get update && apt-get install -y {' '.join(missing)}")
        return
    from rag import Settings, load_embeddings

    started = time.perf_counter()
    embeddings = load_embeddings(Settings())
    print(f"embedder loaded in {time.perf_counter() - started:.1f} s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as folder:
        workdir = Path(folder)
        for name, data in sets.items():
            results[name] = run_corpus(name, data, embeddings, workdir, naive_row=not args.skip_naive, answers=args.answers)
            print_corpus(results[name])
        if args.scale and "git" in sets:
            questions = [q for q in sets["git"]["questions"] if q.get("answerable", True)]
            results["scale"] = scale_latency(embeddings, workdir, args.scale, questions)
            s = results["scale"]
            print(
                f"\n== hybrid at {s['chunks']} chunks (built in {s['build_s']} s) ==\n"
                f"query latency without the query embedding: p50 {s['hybrid_p50_no_embed_ms']} ms, p95 {s['hybrid_p95_no_embed_ms']} ms; "
                f"query embedding p50 {s['query_embedding_p50_ms']} ms; whole query p50 {s['hybrid_p50_ms']} ms"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
