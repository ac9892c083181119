"""Summarizing one document, or the rollup over the documents' summaries, into a cited record.

:func:`run_task` runs a task on a loaded model and returns a :class:`TaskResult`:
the record, or the reason it failed (never raised), or "stopped" when the job is
stopping. A :class:`rag.batch.meter.CallMeter` times every LLM call, keeps its prompts and outputs
for the token counts, and stops a call at its next token once the job stops.

Example::

    task = DocumentTask(0, "/notes/a.md", "A", content_hash, key, [(text, metadata)])
    result = run_task(local, spec, task, stop=None, worker="in-process")
    result.record["points"]  # [{"text": ..., "citations": [{"source", "chunk", "page", ...}]}]
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.documents import Document

from rag.batch.jobs import RECORD_VERSION, JobSpec
from rag.budget import ContextBudget
from rag.citations import cite_points, strip_markers, unique_citations
from rag.errors import RagError
from rag.llm import LocalLLM
from rag.store import utc_timestamp

logger = logging.getLogger(__name__)


class EmptySummary(RagError, ValueError):
    """The model returned no text."""


class JobStopping(RagError, RuntimeError):
    """Raised inside an LLM call (or while waiting for a worker) when the job is stopping."""


@dataclass
class DocumentTask:
    """One document to summarize: its chunks (text, metadata) in order."""

    number: int  # position among the job's sources
    source: str
    title: str
    content_hash: str
    key: str
    chunks: list[tuple[str, dict]]
    load_seconds: float = 0.0


@dataclass
class RollupTask:
    """The corpus rollup over the documents' summaries, numbered from 1 in report order."""

    key: str
    documents: list[dict]  # {"source", "title", "key", "summary"}
    number: int = -1
    source: str = "(rollup)"


@dataclass
class TaskResult:
    """A task's record, or the stage and reason it failed, or ``stopped`` (the job stopped it)."""

    number: int
    source: str
    record: dict | None = None
    stage: str = "summarize"
    reason: str | None = None
    stopped: bool = False
    reused: bool = False


def limit_words(text: str, max_words: int | None) -> tuple[str, bool]:
    """``text`` cut to ``max_words`` words, at the end of a sentence when one ends late enough."""
    if not max_words:
        return text, False
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    if len(ends) <= max_words:
        return text, False
    prefix = text[: ends[max_words - 1]]
    sentence_end = max((match.end() for match in re.finditer(r"[.!?](?:\s*\[[\d,\s–-]+\])?(?=\s|$)|\n", prefix)), default=0)
    if sentence_end >= len(prefix) // 2:
        return prefix[:sentence_end].strip(), True
    return prefix.rstrip(" ,;:") + "…", True


def run_task(local: LocalLLM, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event | None, worker: str) -> TaskResult:
    """Summarize one document (or the rollup); failures come back as a reason, never raised."""
    stage = "rollup" if isinstance(task, RollupTask) else "summarize"
    try:
        if isinstance(task, RollupTask):
            record = _summarize_rollup(local, spec, task, stop, worker)
        else:
            record = _summarize_document(local, spec, task, stop, worker)
        return TaskResult(task.number, task.source, record=record, stage=stage)
    except JobStopping:
        return TaskResult(task.number, task.source, stage=stage, stopped=True)
    except RagError as error:
        reason = str(error)
    except Exception as error:  # a backend or parser bug on odd input fails this document, not the job
        logger.debug("summarizing %s failed", task.source, exc_info=True)
        reason = f"unexpected {type(error).__name__}: {str(error)[:300]}"
    if stop is not None and stop.is_set():
        return TaskResult(task.number, task.source, stage=stage, stopped=True)
    logger.warning("could not summarize %s: %s", task.source, reason)
    return TaskResult(task.number, task.source, stage=stage, reason=reason)


def _summarize(local: LocalLLM, spec: JobSpec, docs: list[Document], stop: threading.Event | None) -> dict:
    from rag.batch.meter import CallMeter  # LangChain's callbacks and chains load only when there is work
    from rag.chains import build_summarize_chain

    chain = build_summarize_chain(spec.prompts(), local.llm, ContextBudget.from_llm(local))
    meter = CallMeter(stop)
    state = chain.invoke(docs, config={"callbacks": [meter]})
    summary = state["summary"].strip()
    if not strip_markers(summary):
        raise EmptySummary("the model returned an empty summary")
    summary, truncated = limit_words(summary, spec.max_words)
    bos = local.count_tokens("")
    return {
        "summary": summary,
        "truncated": truncated,
        "method": state["method"],
        "groups": state["groups"],
        "docs": state["docs"],
        "llm_seconds": meter.seconds,
        "tokens": {
            "prompt": sum(local.count_tokens(prompt) for prompt in meter.prompts),
            "completion": sum(max(0, local.count_tokens(output) - bos) for output in meter.outputs),
            "calls": len(meter.prompts),
        },
    }


def _describe_chunk(number: int, doc: Document) -> dict:
    meta = doc.metadata
    return {
        "source": meta.get("source"),
        "chunk": meta.get("chunk"),
        "page": meta.get("page"),
        "start_index": meta.get("start_index"),
        "part": meta.get("part"),
    }


def _describe_document(number: int, doc: Document) -> dict:
    meta = doc.metadata
    return {"document": meta.get("document"), "source": meta.get("source"), "title": meta.get("title"), "key": meta.get("key")}


def _common(spec: JobSpec, result: dict, worker: str, started: float) -> dict:
    return {
        "model": spec.model,
        "backend": spec.backend,
        "prompt": spec.prompt,
        "prompt_hash": spec.prompt_hash,
        "settings": spec.settings,
        "method": result["method"],
        "summary": result["summary"],
        "truncated": result["truncated"],
        "tokens": result["tokens"],
        "worker": worker,
        "timing": {
            "llm_seconds": round(result["llm_seconds"], 3),
            "seconds": round(time.perf_counter() - started, 3),
            "finished_at": utc_timestamp(),
        },
    }


def _summarize_document(local: LocalLLM, spec: JobSpec, task: DocumentTask, stop: threading.Event | None, worker: str) -> dict:
    started = time.perf_counter()
    docs = [Document(page_content=text, metadata={**meta, "chunk": number}) for number, (text, meta) in enumerate(task.chunks)]
    result = _summarize(local, spec, docs, stop)
    points = cite_points(result["summary"], result["docs"], _describe_chunk)
    record = {
        "version": RECORD_VERSION,
        "kind": "document",
        "key": task.key,
        "source": task.source,
        "title": task.title,
        "content_hash": task.content_hash,
        "chunks": len(task.chunks),
        **_common(spec, result, worker, started),
        "points": [point.to_dict() for point in points],
        "citations": unique_citations(points),
    }
    record["timing"]["load_seconds"] = round(task.load_seconds, 3)
    return record


def _summarize_rollup(local: LocalLLM, spec: JobSpec, task: RollupTask, stop: threading.Event | None, worker: str) -> dict:
    started = time.perf_counter()
    docs = [
        Document(page_content=entry["summary"], metadata={"document": number, "source": entry["source"], "title": entry["title"], "key": entry["key"]})
        for number, entry in enumerate(task.documents, start=1)
    ]
    if len(docs) == 1:  # one document: its summary is the rollup
        result = {"summary": docs[0].page_content, "truncated": False, "method": "single", "groups": 0, "docs": docs, "llm_seconds": 0.0}
        result["tokens"] = {"prompt": 0, "completion": 0, "calls": 0}
    else:
        result = _summarize(local, spec, docs, stop)
    points = cite_points(result["summary"], result["docs"], _describe_document)
    return {
        "version": RECORD_VERSION,
        "kind": "rollup",
        "key": task.key,
        "documents": [{"document": number, "source": entry["source"], "key": entry["key"]} for number, entry in enumerate(task.documents, 1)],
        **_common(spec, result, worker, started),
        "points": [point.to_dict() for point in points],
        "citations": unique_citations(points),
    }
