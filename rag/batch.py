"""Batch summarization jobs: a cited summary per document and a corpus rollup; resumable and parallel.

:func:`summarize_batch` finds the documents under its inputs (files, folders, URLs,
or the sources of a store), summarizes each one (in one prompt when it fits the
context, map-reduce over its chunks otherwise), then combines the summaries into a
rollup that cites the documents. Everything lands in the output folder:

- ``summaries.jsonl``: one record per document: source, content hash, model, prompt,
  summary, its points with their citations (source, chunk, page), timing and tokens;
- ``rollup.json``, ``report.md`` (the rollup first, then each document) and ``report.json``;
- ``records/`` and ``manifest.json``: each finished summary under a key of (content hash,
  model, prompt, settings). A re-run reuses every record whose key still matches: an
  unchanged job makes no LLM call, and a changed document, model or prompt redoes
  only what it changes.

Every file is written atomically (a temporary file, then a rename). Ctrl-C stops the
job, keeps what is finished and raises :class:`BatchInterrupted`; running it again
finishes the rest. A document that cannot be loaded or summarized is recorded with
its reason and the job goes on. A server's error is an error, never a summary.

Work runs on ``workers`` threads: each drives its own llama.cpp server connection
(``servers``, or one server's parallel slots) or, for the in-process backends with
several workers, its own child process with its own copy of the model.

Example::

    from rag.batch import summarize_batch
    report = summarize_batch(["notes/", "https://example.org/"], "out/", workers=2)
    report.status      # "done", "partial" or "failed"
    report.failures    # [BatchFailure(source, stage, reason), ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.prompts import BasePromptTemplate, PromptTemplate

from rag.atomic import write_atomic
from rag.budget import ContextBudget
from rag.chains import SummarizePrompts, build_summarize_chain
from rag.citations import cite_points, strip_markers, unique_citations
from rag.errors import RagError
from rag.llm import LocalLLM, load_llm
from rag.paths import ensure_directory
from rag.settings import Settings

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
"""Part of every key: bump when what a record holds changes meaning, so old records are redone."""

MANIFEST_FILE = "manifest.json"
RECORDS_DIR = "records"
SUMMARIES_FILE = "summaries.jsonl"
ROLLUP_FILE = "rollup.json"
REPORT_MD_FILE = "report.md"
REPORT_JSON_FILE = "report.json"
FLUSH_SECONDS = 2.0  # summaries.jsonl and the manifest are rewritten at most this often while a job runs

LLMFactory = Callable[[Settings], LocalLLM]


class BatchError(RagError):
    """The job cannot run as asked (bad options, servers serving different models, ...)."""


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the job; ``report`` tells what was finished (and kept) before it."""

    def __init__(self, report: BatchReport):
        super().__init__("batch summarization interrupted")
        self.report = report


class EmptySummary(RagError, ValueError):
    """The model returned no text."""


class _Stopping(RagError, RuntimeError):
    """Raised inside an LLM call when the job is stopping."""


class _WorkerDied(RagError, RuntimeError):
    """A worker process ended while summarizing."""


# --- results --------------------------------------------------------------------------------------


@dataclass
class BatchFailure:
    """A document (or the rollup) that could not be done, and why."""

    source: str
    stage: str  # "load", "summarize" or "rollup"
    reason: str

    @property
    def display(self) -> str:
        """``source (stage): reason`` on one line, for plain-text output (see :func:`rag.load.display_form`)."""
        from rag.load import display_form

        return f"{display_form(self.source)} ({self.stage}): {display_form(self.reason)}"


@dataclass
class BatchReport:
    """What a batch job did. ``records`` are the documents' records, in the order of their sources."""

    out_dir: str
    status: str = "done"  # "done", "partial" (some failed), "failed" (none done) or "interrupted"
    documents: int = 0  # sources found under the inputs, plus inputs that were not found
    summarized: int = 0  # summarized by this run
    reused: int = 0  # unchanged since an earlier run: reused without an LLM call
    failures: list[BatchFailure] = field(default_factory=list)
    rollup: dict | None = None
    records: list[dict] = field(default_factory=list, repr=False)
    model: str = ""
    prompt: str = ""
    workers: int = 1
    seconds: float = 0.0  # wall time of the whole job
    llm_seconds: float = 0.0  # time spent inside LLM calls by this run (all workers together)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Documents with a summary (made by this run or reused)."""
        return len(self.records)

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def to_dict(self, records: bool = False) -> dict:
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if records or item.name != "records"}
        data["failures"] = [asdict(failure) for failure in self.failures]
        data["done"] = self.done
        return data


@dataclass(frozen=True)
class ModelIdentity:
    """The model a job runs: what its records' keys record about it."""

    model: str
    backend: str
    family: str
    n_ctx: int
    max_tokens: int

    @classmethod
    def of(cls, local: LocalLLM) -> ModelIdentity:
        return cls(local.model_name, local.backend, local.family, local.n_ctx, local.max_tokens)


@dataclass(frozen=True)
class JobSpec:
    """What every summary of a job shares; with a document's content it makes the record's key."""

    model: str
    backend: str
    family: str
    prompt_hash: str
    settings: dict = field(hash=False)
    max_words: int | None = None

    @classmethod
    def build(cls, identity: ModelIdentity, settings: Settings, max_words: int | None) -> JobSpec:
        from rag.load import LoadOptions

        prompts = summarize_prompts(identity.family, max_words)
        knobs = {
            "n_ctx": identity.n_ctx,
            "max_tokens": identity.max_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "stop": list(settings.stop),
            "chunk_size": settings.chunk_size,
            "chunk_overlap": settings.chunk_overlap,
            "loader": LoadOptions.from_settings(settings).signature,
            "max_words": max_words,
        }
        prompt_hash = _digest([prompt.template for prompt in (prompts.stuff, prompts.map, prompts.reduce)])[:16]
        return cls(identity.model, identity.backend, identity.family, prompt_hash, knobs, max_words)

    @property
    def prompt(self) -> str:
        return f"{self.family}/summarize"

    def key_parts(self, content: str) -> dict:
        return {
            "version": RECORD_VERSION,
            "content_hash": content,
            "model": self.model,
            "prompt": self.prompt,
            "prompt_hash": self.prompt_hash,
            "settings": self.settings,
        }

    def document_key(self, content: str) -> str:
        return _digest(self.key_parts(content))[:32]

    def rollup_key(self, document_keys: Sequence[str]) -> str:
        return "rollup-" + _digest(self.key_parts(_digest(list(document_keys))))[:32]

    def prompts(self) -> SummarizePrompts:
        return summarize_prompts(self.family, self.max_words)


def summarize_prompts(family: str, max_words: int | None = None) -> SummarizePrompts:
    """A family's stuff/map/reduce prompts; with ``max_words`` the final prompts ask for that length."""
    prompts = SummarizePrompts.for_family(family)
    if not max_words:
        return prompts
    instruction = f"Write at most {max_words} words."
    return SummarizePrompts(
        stuff=_with_instruction(prompts.stuff, instruction), map=prompts.map, reduce=_with_instruction(prompts.reduce, instruction)
    )


def _with_instruction(prompt: BasePromptTemplate, instruction: str) -> BasePromptTemplate:
    template = getattr(prompt, "template", None)
    if not isinstance(template, str) or "{docs}" not in template:
        return prompt
    return PromptTemplate(template=template.replace("{docs}", "{docs}\n\n" + instruction, 1), input_variables=list(prompt.input_variables))


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


# --- measuring LLM calls ------------------------------------------------------------------------------


class _CallMeter(BaseCallbackHandler):
    """Times every LLM call, keeps its prompt and output, and stops it when the job stops."""

    raise_error = True

    def __init__(self, stop: threading.Event | None):
        self.stop = stop
        self.seconds = 0.0
        self.prompts: list[str] = []
        self.outputs: list[str] = []
        self._started: dict[Any, float] = {}
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise _Stopping("the batch job is stopping")

    def on_llm_start(self, serialized: dict, prompts: list[str], *, run_id: Any, **kwargs: Any) -> None:
        self._check()
        with self._lock:
            self._started[run_id] = time.perf_counter()
            self.prompts.extend(prompts)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self._check()

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        self._finish(run_id)
        with self._lock:
            self.outputs.extend(generation.text for generations in response.generations for generation in generations)

    def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        self._finish(run_id)

    def _finish(self, run_id: Any) -> None:
        with self._lock:
            started = self._started.pop(run_id, None)
            if started is not None:
                self.seconds += time.perf_counter() - started


# --- summarizing one document or the rollup -------------------------------------------------------------


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
    number: int
    source: str
    record: dict | None = None
    stage: str = "summarize"
    reason: str | None = None
    stopped: bool = False
    reused: bool = False


def _summarize(local: LocalLLM, spec: JobSpec, docs: list[Document], stop: threading.Event | None) -> dict:
    chain = build_summarize_chain(spec.prompts(), local.llm, ContextBudget.from_llm(local))
    meter = _CallMeter(stop)
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
        "timing": {"llm_seconds": round(result["llm_seconds"], 3), "seconds": round(time.perf_counter() - started, 3), "finished_at": _now()},
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


def run_task(local: LocalLLM, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event | None, worker: str) -> TaskResult:
    """Summarize one document (or the rollup); failures come back as a reason, never raised."""
    stage = "rollup" if isinstance(task, RollupTask) else "summarize"
    try:
        if isinstance(task, RollupTask):
            record = _summarize_rollup(local, spec, task, stop, worker)
        else:
            record = _summarize_document(local, spec, task, stop, worker)
        return TaskResult(task.number, task.source, record=record, stage=stage)
    except _Stopping:
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


# --- engines: where a worker's LLM lives -------------------------------------------------------------------


class _InProcessEngine:
    """An LLM in this process (llama.cpp or GPT4All in-process, or a client of one server)."""

    def __init__(self, local: LocalLLM, worker: str):
        self.local = local
        self.worker = worker

    def run(self, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event) -> TaskResult:
        return run_task(self.local, spec, task, stop, self.worker)

    def abort(self) -> None:
        """Nothing to kill: the running call raises at its next token once ``stop`` is set."""

    def close(self) -> None:
        pass


class _ProcessEngine:
    """A child process with its own copy of the model, fed one task at a time over a pipe.

    The child ignores SIGINT: Ctrl-C reaches the parent, which kills its children. A
    child that dies mid-document fails that document; the next task starts a new one.
    """

    def __init__(self, factory: LLMFactory, settings: Settings):
        self.factory = factory
        self.settings = settings
        self.process: Any = None
        self.conn: Any = None
        self.identity: ModelIdentity | None = None

    @property
    def worker(self) -> str:
        return f"pid {self.process.pid}" if self.process is not None else "process"

    def start(self) -> None:
        if self.conn is not None:  # the previous child's pipe
            self.conn.close()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_engine_child, args=(child, self.factory, self.settings), name="rag-batch-worker", daemon=True)
        with _sigint_blocked():  # a Ctrl-C while the child starts up is the parent's to handle
            self.process.start()
        child.close()
        self.conn = parent

    def wait_ready(self, stop: threading.Event) -> ModelIdentity:
        kind, payload = self._receive(stop)
        if kind == "error":
            raise payload
        self.identity = payload
        return payload

    def run(self, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event) -> TaskResult:
        """Summarize one task in the child, first restarting it if it died; a failed restart fails this task only."""
        stage = "rollup" if isinstance(task, RollupTask) else "summarize"
        worker = self.worker
        try:
            if self.process is None or not self.process.is_alive():
                self.start()
                worker = self.worker
                self.wait_ready(stop)
            self.conn.send((spec, task))
            _kind, result = self._receive(stop)
        except _Stopping:
            return TaskResult(task.number, task.source, stage=stage, stopped=True)
        except (_WorkerDied, OSError, EOFError) as error:
            self.abort()
            return TaskResult(task.number, task.source, stage=stage, reason=f"worker process ({worker}) {error}")
        except Exception as error:  # the restarted child could not load its model; the next task tries again
            self.abort()
            detail = str(error) if isinstance(error, RagError) else f"{type(error).__name__}: {error}"
            return TaskResult(task.number, task.source, stage=stage, reason=f"worker process ({worker}) could not restart: {detail}")
        return result

    def _receive(self, stop: threading.Event) -> tuple[str, Any]:
        while True:
            if self.conn.poll(0.1):
                try:
                    return self.conn.recv()
                except EOFError:
                    raise _WorkerDied(f"exited with status {self._exitcode()}") from None
            if stop.is_set():
                self.abort()
                raise _Stopping("the batch job is stopping")
            if not self.process.is_alive() and not self.conn.poll():
                raise _WorkerDied(f"exited with status {self._exitcode()}")

    def _exitcode(self) -> Any:
        self.process.join(timeout=1)
        code = self.process.exitcode
        if isinstance(code, int) and code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                pass
        return code

    def abort(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self.conn.send(None)
                self.process.join(timeout=5)
            except OSError:
                pass
        self.abort()
        self.conn.close()


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread; a process started meanwhile inherits the block."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # started later, it would unblock SIGINT in this thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _engine_child(conn: Any, factory: LLMFactory, settings: Settings) -> None:
    """A worker process: load the model once, then summarize what the parent sends until it sends ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops its children
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since start-up; now ignored
    try:
        local = factory(settings)
    except Exception as error:  # handed to the parent, which raises it
        conn.send(("error", _portable(error)))
        return
    conn.send(("ready", ModelIdentity.of(local)))
    worker = f"pid {os.getpid()}"
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        spec, task = message
        conn.send(("result", run_task(local, spec, task, None, worker)))


def _portable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return BatchError(f"{type(error).__name__}: {error}")


class _Engines:
    """The workers' LLMs, each created on first use (a finished job re-run loads no model)."""

    def __init__(self, settings: Settings, workers: int, servers: Sequence[str], factory: LLMFactory, identity: ModelIdentity, ready: LocalLLM | None):
        self.settings = settings
        self.workers = workers
        self.servers = list(servers) or [settings.llamafile_url]
        self.factory = factory
        self.identity = identity
        self.ready = ready  # a model already loaded for the identity, used by worker 0
        self._engines: dict[int, Any] = {}
        self._lock = threading.Lock()

    def get(self, index: int, stop: threading.Event) -> Any:
        with self._lock:
            engine = self._engines.get(index)
        if engine is None:
            engine = self._create(index, stop)
            with self._lock:
                self._engines[index] = engine
        return engine

    def _create(self, index: int, stop: threading.Event) -> Any:
        settings = self.settings
        if settings.backend == "llamafile":
            url = self.servers[index % len(self.servers)]
            local = self.ready if (index == 0 and self.ready is not None) else self.factory(settings.with_overrides(llamafile_url=url))
            self._check(ModelIdentity.of(local), url)
            # Every server gets the smallest context of them all, so a record does not depend on where it ran.
            return _InProcessEngine(dataclasses.replace(local, n_ctx=self.identity.n_ctx), url)
        if self.workers == 1:
            local = self.ready or self.factory(settings)
            self._check(ModelIdentity.of(local), "in-process")
            return _InProcessEngine(local, "in-process")
        if settings.n_threads is None:  # share the cores instead of oversubscribing them
            settings = settings.with_overrides(n_threads=max(1, (os.cpu_count() or 1) // self.workers))
        engine = _ProcessEngine(self.factory, settings)
        engine.start()
        try:
            self._check(engine.wait_ready(stop), "a worker process")
        except BaseException:
            engine.abort()
            raise
        return engine

    def _check(self, found: ModelIdentity, where: str) -> None:
        wanted = self.identity
        if (found.model, found.family) != (wanted.model, wanted.family):
            raise BatchError(
                f"{where} serves {found.model} ({found.family} prompts), but this job runs {wanted.model} ({wanted.family}): "
                "point every --server at the same model"
            )
        if found.n_ctx < wanted.n_ctx:
            raise BatchError(f"{where} has a {found.n_ctx}-token context, less than the {wanted.n_ctx} this job plans with")

    def abort(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.abort()

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()


def identify_model(
    settings: Settings, servers: Sequence[str] = (), factory: LLMFactory | None = None
) -> tuple[ModelIdentity, LocalLLM | None]:
    """The model a job will run, found without loading it where possible.

    Returns the identity and, when finding it meant loading the model (a custom
    ``factory``), that model, for reuse.
    """
    if factory is not None and factory is not load_llm:
        url = (list(servers) or [settings.llamafile_url])[0]
        local = factory(settings.with_overrides(llamafile_url=url) if settings.backend == "llamafile" else settings)
        return ModelIdentity.of(local), local
    from rag.prompts import choose_family

    if settings.backend == "llamafile":
        from rag.llm import server_props

        found = []
        for url in dict.fromkeys(list(servers) or [settings.llamafile_url]):
            props = server_props(url, timeout=min(10.0, settings.request_timeout))
            model = Path(props.get("model_path") or "llamafile").name
            n_ctx = int((props.get("default_generation_settings") or {}).get("n_ctx") or settings.n_ctx)
            found.append((url, model, props.get("chat_template"), n_ctx))
        models = {model for _, model, _, _ in found}
        if len(models) > 1:
            raise BatchError("the servers serve different models: " + ", ".join(f"{url}: {model}" for url, model, _, _ in found))
        _, model, template, _ = found[0]
        n_ctx = min(n for _, _, _, n in found)
        return ModelIdentity(model, "llamafile", choose_family(settings.prompt, template, model), n_ctx, settings.max_tokens), None
    from rag.models import read_gguf_metadata, resolve_llm_path

    path = resolve_llm_path(settings.llm_model, settings)
    meta = read_gguf_metadata(path)
    family = choose_family(settings.prompt, meta.chat_template, path.name)
    return ModelIdentity(path.name, settings.backend, family, settings.n_ctx, settings.max_tokens), None


# --- output files ---------------------------------------------------------------------------------------------


class BatchOutputs:
    """The output folder: records by key, the manifest, and the files made from them."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir
        self.records_dir = ensure_directory(out_dir, "output folder", "choose a folder you can write to for --out") / RECORDS_DIR
        self.records_dir.mkdir(exist_ok=True)
        for folder in (self.dir, self.records_dir):  # left by a process killed mid-write
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.manifest = self._read_manifest()
        self._flushed = 0.0

    def _read_manifest(self) -> dict:
        path = self.dir / MANIFEST_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("version") == RECORD_VERSION:
                manifest.setdefault("documents", {})
                manifest.setdefault("rollups", {})
                return manifest
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable %s (%s); the records are kept", path, error)
        return {"version": RECORD_VERSION, "documents": {}, "rollups": {}}

    def record_path(self, key: str) -> Path:
        return self.records_dir / f"{key}.json"

    def cached(self, key: str) -> dict | None:
        """The finished record with this key, if there is one."""
        path = self.record_path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("redoing %s: unreadable record (%s)", path, error)
            return None
        return record if isinstance(record, dict) and record.get("key") == key and record.get("summary") else None

    def save(self, record: dict, spec: JobSpec, content: str) -> None:
        path = self.record_path(record["key"])
        write_atomic(path, json.dumps(record, ensure_ascii=False, indent=1))
        entry = {
            "record": f"{RECORDS_DIR}/{path.name}",
            "source": record.get("source"),
            **spec.key_parts(content),
            "finished_at": record["timing"]["finished_at"],
        }
        self.manifest["rollups" if record["kind"] == "rollup" else "documents"][record["key"]] = entry

    def flush(self, report: BatchReport, final: bool = False) -> None:
        """Rewrite ``summaries.jsonl`` and the manifest (at most every few seconds unless ``final``)."""
        now = time.monotonic()
        if not final and now - self._flushed < FLUSH_SECONDS:
            return
        self._flushed = now
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in report.records)
        write_atomic(self.dir / SUMMARIES_FILE, lines)
        self.manifest["updated_at"] = _now()
        write_atomic(self.dir / MANIFEST_FILE, json.dumps(self.manifest, ensure_ascii=False, indent=1))

    def finish(self, report: BatchReport) -> None:
        report.files = {
            "summaries": str(self.dir / SUMMARIES_FILE),
            "report": str(self.dir / REPORT_MD_FILE),
            "report_json": str(self.dir / REPORT_JSON_FILE),
            "manifest": str(self.dir / MANIFEST_FILE),
        }
        rollup_path = self.dir / ROLLUP_FILE
        if report.rollup is not None:
            write_atomic(rollup_path, json.dumps(report.rollup, ensure_ascii=False, indent=1))
            report.files["rollup"] = str(rollup_path)
        else:
            rollup_path.unlink(missing_ok=True)  # an earlier run's rollup does not describe this one
        self.flush(report, final=True)
        write_atomic(self.dir / REPORT_MD_FILE, render_report(report))
        write_atomic(self.dir / REPORT_JSON_FILE, json.dumps(report.to_dict(), ensure_ascii=False, indent=1))


def render_report(report: BatchReport) -> str:
    """The Markdown report: the corpus rollup first, then each document, then the failures."""
    from rag.load import display_form  # a file name may hold a newline: keep each entry on its line

    lines = ["# Batch summary", ""]
    counts = f"{report.done} of {report.documents} documents summarized ({report.summarized} this run, {report.reused} reused)"
    if report.failures:
        counts += f", {len(report.failures)} failed"
    lines += [f"{counts}. Model `{report.model}`, prompt `{report.prompt}`, status **{report.status}**.", ""]
    if report.status == "interrupted":
        lines += ["The job was interrupted: run the same command again to finish the remaining documents.", ""]
    lines += ["## Corpus summary", ""]
    if report.rollup is None:
        lines += ["(no rollup: " + ("the job was interrupted" if report.status == "interrupted" else "no document was summarized") + ")", ""]
    else:
        for point in report.rollup["points"]:
            refs = ", ".join(f"[{c['document']}](#doc-{c['document']})" for c in point["citations"])
            lines.append(f"- {point['text']}" + (f" [{refs}]" if refs else " *(no source found)*"))
        lines.append("")
    lines += ["## Documents", ""]
    for number, record in enumerate(report.records, start=1):
        lines += [f'<a id="doc-{number}"></a>', f"### {number}. {display_form(record.get('title') or record['source'])}", ""]
        how = "one prompt" if record["method"] == "stuff" else f"map-reduce, {record['tokens']['calls']} LLM calls"
        lines += [f"`{display_form(record['source'])}`: {record['chunks']} chunks, {how}.", ""]
        for point in record["points"]:
            lines.append(f"- {point['text']}" + (f" ({_chunk_refs(point['citations'])})" if point["citations"] else " *(no source found)*"))
        lines.append("")
    if report.failures:
        lines += ["## Failures", ""]
        lines += [f"- `{display_form(failure.source)}` ({failure.stage}): {display_form(failure.reason)}" for failure in report.failures]
        lines.append("")
    return "\n".join(lines)


def _chunk_refs(citations: list[dict]) -> str:
    refs = []
    for citation in citations:
        ref = f"chunk {citation['chunk']}"
        if citation.get("page") is not None:
            ref += f", p. {citation['page']}"
        refs.append(ref)
    return "; ".join(refs)


# --- finding and loading the documents --------------------------------------------------------------------------


def _find_sources(inputs: Sequence[str], settings: Settings, from_store: bool) -> tuple[list[str], list[BatchFailure], dict]:
    if from_store:
        entries = _store_entries(settings, inputs)
        return [entry.source for entry in entries], [], {entry.source: entry for entry in entries}
    from rag.load import expand_inputs

    found = expand_inputs(inputs, settings.include, settings.exclude, settings.include_hidden)
    return found.sources, [BatchFailure(failure.source, "load", failure.reason) for failure in found.failures], {}


def _store_entries(settings: Settings, under: Sequence[str]) -> list:
    from rag.load import is_url, normalize_url
    from rag.store import EmptyStore, SourceRecord, open_collection

    nothing = EmptyStore(
        f"nothing is indexed yet in collection {settings.collection!r} at {settings.store_path}: run `rag ingest PATH ...` first"
    )
    if not settings.store_path.is_dir() or open_collection(settings, create=False) is None:
        raise nothing
    with SourceRecord(settings) as record:
        if not under:
            entries = record.entries()
        else:
            wanted = [normalize_url(item) if is_url(item) else str(Path(item).expanduser().resolve()) for item in under]
            entries = list({entry.source: entry for item in wanted for entry in record.entries(item)}.values())
    entries = sorted((entry for entry in entries if entry.state == "indexed"), key=lambda entry: entry.source)
    if not entries:
        raise nothing if not under else EmptyStore(f"no indexed source of collection {settings.collection!r} is under {', '.join(under)}")
    return entries


class _Loader:
    """Loads each source in turn (files and URLs in a limited child process, or from the store)."""

    def __init__(self, settings: Settings, store_entries: dict):
        self.settings = settings
        self.store_entries = store_entries
        self._collection = None
        self._isolated = None
        if not store_entries and settings.isolate_loaders:
            from rag.loader_process import IsolatedLoader

            self._isolated = IsolatedLoader(settings.source_timeout, settings.loader_memory_mb)

    def load(self, source: str) -> tuple[str, str, str, list[tuple[str, dict]]]:
        """``(title, content hash, content id for the key, chunks)``; raises :class:`RagError` with the reason."""
        if self.store_entries:
            return self._from_store(self.store_entries[source])
        from rag.load import LoadOptions
        from rag.loader_process import LoadRequest, load_and_split

        request = LoadRequest(source, LoadOptions.from_settings(self.settings), self.settings.chunk_size, self.settings.chunk_overlap)
        outcome = self._isolated.load(request) if self._isolated else load_and_split(request)
        if outcome.status != "loaded":
            raise RagError(outcome.reason or f"not loaded ({outcome.status})")
        if not outcome.chunks:
            raise RagError("no text to summarize")
        return outcome.title or source, outcome.content_hash, outcome.content_hash, outcome.chunks

    def _from_store(self, entry: Any) -> tuple[str, str, str, list[tuple[str, dict]]]:
        if self._collection is None:
            from rag.store import open_collection

            self._collection = open_collection(self.settings, create=False)
        found = self._collection.get(where={"source": entry.source}, include=["documents", "metadatas"])
        pairs = [(text, dict(meta or {})) for text, meta in zip(found["documents"] or [], found["metadatas"] or [])]
        pairs.sort(key=lambda pair: (pair[1].get("page") or 0, pair[1].get("start_index") or 0))
        if not pairs:
            raise RagError("the store holds no chunks for this source: re-ingest it")
        content = _digest([text for text, _ in pairs])  # the chunks as indexed: the store's splitter made them
        return entry.title or entry.source, entry.content_hash or content, content, pairs

    def abort(self) -> None:
        if self._isolated is not None:
            self._isolated.abort()

    def close(self) -> None:
        if self._isolated is not None:
            self._isolated.close()


# --- the job ------------------------------------------------------------------------------------------------


def summarize_batch(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    servers: Sequence[str] = (),
    max_words: int | None = None,
    from_store: bool = False,
    progress: bool = False,
    llm_factory: LLMFactory | None = None,
    local_llm: LocalLLM | None = None,
) -> BatchReport:
    """Summarize every document under ``inputs`` into ``out_dir``, with a corpus rollup.

    Args:
        inputs: files, folders and URLs; with ``from_store``, sources (or folders/URL
            prefixes) of the configured store to narrow to, or nothing for all of them.
        out_dir: the job's folder; an earlier run's finished records there are reused.
        settings: model, backend, prompt, context and loading settings; default ``Settings()``.
        workers: documents summarized at once; default one per server, else 1.
        servers: llama.cpp / llamafile server URLs to spread the work over (implies the
            ``llamafile`` backend). Several workers on one server use its parallel slots.
        max_words: ask for summaries of at most this many words (and cut longer ones).
        from_store: summarize the sources indexed in ``settings``' store and collection.
        progress: show a progress bar (documents done/total, ETA) on stderr.
        llm_factory: builds a worker's model from settings; default :func:`rag.llm.load_llm`.
            Must be picklable (a module-level function) for in-process backends with
            several workers, which run in child processes.
        local_llm: an already loaded model (one worker only), e.g. in a notebook.

    Returns:
        A :class:`BatchReport`; ``status`` is ``"done"``, ``"partial"`` or ``"failed"``.

    Raises:
        BatchInterrupted: Ctrl-C; finished summaries are kept and ``.report`` says what was done.
        BatchError, rag.models.ModelNotFound, rag.llm.LLMBackendError: the job cannot start.
    """
    started = time.perf_counter()
    settings = settings or Settings()
    servers = list(dict.fromkeys(servers))
    if servers and settings.backend != "llamafile":
        settings = settings.with_overrides(backend="llamafile")
    workers = workers or len(servers) or 1
    if workers < 1:
        raise BatchError("--workers must be at least 1")
    if max_words is not None and max_words < 1:
        raise BatchError("--max-words must be at least 1")
    if local_llm is not None and workers > 1:
        raise BatchError("a loaded local_llm serves one worker: pass llm_factory (or nothing) to run several")
    if settings.prompt and settings.prompt.startswith("hub:"):
        raise BatchError("batch summaries use a prompt family's summarize/map/reduce prompts: pass a family such as chatml, not a hub prompt")

    inputs = [os.fspath(item) for item in inputs]
    if not inputs and not from_store:
        raise BatchError("nothing to summarize: give files, folders or URLs, or use the store (from_store / --from-store)")
    if local_llm is not None:
        identity, ready = ModelIdentity.of(local_llm), local_llm
    else:
        identity, ready = identify_model(settings, servers, llm_factory)
    spec = JobSpec.build(identity, settings, max_words)
    sources, failures, store_entries = _find_sources(inputs, settings, from_store)
    outputs = BatchOutputs(Path(out_dir))
    report = BatchReport(out_dir=str(out_dir), documents=len(sources) + len(failures), model=spec.model, prompt=spec.prompt, workers=workers)
    report.failures.extend(failures)
    engines = _Engines(settings, workers, servers, llm_factory or load_llm, identity, ready)
    job = _BatchRun(spec, settings, sources, store_entries, engines, outputs, report, workers, progress)
    interrupted = completed = False
    try:
        job.run()
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        job.stop_now()
    finally:
        job.close()
        report.records = [job.records[number] for number in sorted(job.records)]
        report.failures.extend(job.failures[number] for number in sorted(job.failures))
        if job.rollup_failure is not None:
            report.failures.append(job.rollup_failure)
        report.status = "interrupted" if interrupted else _status(report) if completed else "failed"
        report.seconds = round(time.perf_counter() - started, 3)
        report.llm_seconds = round(report.llm_seconds, 3)
        outputs.finish(report)
    logger.info("batch: %d of %d documents summarized (%d reused), %d failed", report.done, report.documents, report.reused, len(report.failures))
    if interrupted:
        raise BatchInterrupted(report)
    return report


def _moved(record: dict, source: str, title: str) -> dict:
    """A record made for the same content under another source (a copy, a renamed file), pointed at ``source``."""
    if record.get("source") == source:
        return record
    old = record.get("source")
    points = [
        {**point, "citations": [{**c, "source": source} if c.get("source") == old else c for c in point["citations"]]}
        for point in record.get("points", [])
    ]
    citations = [{**c, "source": source} if c.get("source") == old else c for c in record.get("citations", [])]
    return {**record, "source": source, "title": title, "points": points, "citations": citations}


def _status(report: BatchReport) -> str:
    if not report.failures:
        return "done"
    return "partial" if report.records else "failed"


class _Crash:
    """An unexpected error in a helper thread, handed to the main thread to raise."""

    def __init__(self, error: BaseException):
        self.error = error


class _BatchRun:
    """One run: a loader thread feeds tasks to worker threads; this thread records results and writes files."""

    def __init__(self, spec, settings, sources, store_entries, engines, outputs, report, workers, progress):
        self.spec = spec
        self.settings = settings
        self.sources = sources
        self.engines = engines
        self.outputs = outputs
        self.report = report
        self.workers = workers
        self.progress = progress
        self.loader = _Loader(settings, store_entries)
        self.tasks: queue.Queue = queue.Queue(maxsize=workers)
        self.results: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.records: dict[int, dict] = {}
        self.failures: dict[int, BatchFailure] = {}
        self.contents: dict[int, str] = {}
        self.rollup_failure: BatchFailure | None = None
        self.threads: list[threading.Thread] = []
        self.bar = None

    def run(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(self.sources), unit="doc", desc="summarizing", disable=not self.progress, dynamic_ncols=True)
        self.threads = [threading.Thread(target=self._load_all, name="rag-batch-loader", daemon=True)]
        self.threads += [threading.Thread(target=self._work, args=(index,), name=f"rag-batch-worker-{index}", daemon=True) for index in range(self.workers)]
        for thread in self.threads:
            thread.start()
        received = 0
        while received < len(self.sources):
            try:
                result = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(result, _Crash):
                raise result.error
            received += 1
            self._accept(result)
        self._rollup()

    def _put_task(self, task: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.tasks.put(task, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _load_all(self) -> None:
        try:
            for number, source in enumerate(self.sources):
                if self.stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    title, content_hash, content, chunks = self.loader.load(source)
                except RagError as error:
                    if self.stop.is_set():
                        return
                    self.results.put(TaskResult(number, source, stage="load", reason=str(error)))
                    continue
                key = self.spec.document_key(content)
                self.contents[number] = content
                cached = self.outputs.cached(key)
                if cached is not None:
                    self.results.put(TaskResult(number, source, record=_moved(cached, source, title), reused=True))
                    continue
                task = DocumentTask(number, source, title, content_hash, key, chunks, time.perf_counter() - started)
                if not self._put_task(task):
                    return
        except BaseException as error:
            if not self.stop.is_set():
                self.results.put(_Crash(error))
        finally:
            for _ in range(self.workers):
                if not self._put_task(None):
                    break

    def _work(self, index: int) -> None:
        try:
            while not self.stop.is_set():
                try:
                    task = self.tasks.get(timeout=0.2)
                except queue.Empty:
                    continue
                if task is None:
                    return
                result = self.engines.get(index, self.stop).run(self.spec, task, self.stop)
                if not result.stopped:
                    self.results.put(result)
        except BaseException as error:
            if not self.stop.is_set():
                self.results.put(_Crash(error))

    def _accept(self, result: TaskResult) -> None:
        if result.record is not None:
            record = result.record
            if result.reused:
                self.report.reused += 1
            else:
                self.outputs.save(record, self.spec, self.contents.get(result.number, record["content_hash"]))
                self._count(record)
                self.report.summarized += 1
            self.records[result.number] = record
        elif not result.stopped:
            self.failures[result.number] = BatchFailure(result.source, result.stage, result.reason or "unknown error")
        if self.bar is not None:
            self.bar.update(1)
        self.report.records = [self.records[number] for number in sorted(self.records)]
        self.outputs.flush(self.report)

    def _count(self, record: dict) -> None:
        self.report.llm_seconds += record["timing"]["llm_seconds"]
        self.report.llm_calls += record["tokens"]["calls"]
        self.report.prompt_tokens += record["tokens"]["prompt"]
        self.report.completion_tokens += record["tokens"]["completion"]

    def _rollup(self) -> None:
        records = [self.records[number] for number in sorted(self.records)]
        if not records:
            return
        key = self.spec.rollup_key([record["key"] for record in records])
        cached = self.outputs.cached(key)
        if cached is not None:
            self.report.rollup = cached
            return
        if self.bar is not None:
            self.bar.set_postfix_str("rollup")
        documents = [
            {"source": r["source"], "title": r.get("title") or r["source"], "key": r["key"], "summary": " ".join(p["text"] for p in r["points"]) or r["summary"]}
            for r in records
        ]
        result = self.engines.get(0, self.stop).run(self.spec, RollupTask(key, documents), self.stop)
        if result.stopped:
            raise KeyboardInterrupt
        if result.record is None:
            self.rollup_failure = BatchFailure("(rollup)", "rollup", result.reason or "unknown error")
            return
        self.outputs.save(result.record, self.spec, _digest([record["key"] for record in records]))
        self._count(result.record)
        self.report.rollup = result.record

    def stop_now(self) -> None:
        """Ctrl-C: stop loading and summarizing now; keep whatever finished meanwhile."""
        self.stop.set()
        self.loader.abort()
        self.engines.abort()
        for thread in self.threads:
            if thread.is_alive():  # Ctrl-C may come before every thread started
                thread.join(timeout=10)
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                break
            if isinstance(result, TaskResult) and result.record is not None:
                self._accept(result)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            if thread.is_alive():  # Ctrl-C may come before every thread started
                thread.join(timeout=10)
        self.loader.close()
        self.engines.close()
        if self.bar is not None:
            self.bar.close()


# --- small helpers ----------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
