"""The run loop: :func:`summarize_batch` checks its options; a loader thread feeds worker threads; this thread records results.

Example::

    report = summarize_batch(["notes/"], "out/", settings, workers=2)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rag.batch.documents import DocumentLoader, find_sources
from rag.batch.executors import import_ray, open_executor
from rag.batch.jobs import BatchError, JobSpec, LLMFactory, digest, identify_model
from rag.batch.outputs import BatchFailure, BatchOutputs, BatchReport
from rag.batch.tasks import DocumentTask, RollupTask, TaskResult
from rag.errors import RagError
from rag.llm import LocalLLM, load_local_llm, server_url
from rag.settings import Settings

logger = logging.getLogger(__name__)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, see :mod:`rag.signals`) stopped the job; ``report`` tells what was finished (and kept) before it.

    It is raised from the ``KeyboardInterrupt`` that stopped the job (``__cause__``), so
    :func:`rag.signals.exit_status` tells Ctrl-C from SIGTERM.
    """

    def __init__(self, report: BatchReport):
        super().__init__("batch summarization interrupted")
        self.report = report


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
            ``settings.executor`` runs the workers here (``local``) or on Ray (``ray``, at
            ``settings.ray_address``); the job, its outputs and resuming are the same.
        workers: documents summarized at once; default one per server, else 1.
        servers: llama.cpp / llamafile server URLs to spread the work over (implies the
            ``llamafile`` backend). Several workers on one server use its parallel slots.
        max_words: ask for summaries of at most this many words (and cut longer ones).
        from_store: summarize the sources indexed in ``settings``' store and collection.
        progress: show a progress bar (documents done/total, ETA) on stderr.
        llm_factory: builds a worker's model from settings; default :func:`rag.llm.load_local_llm`.
            Must be picklable (a module-level function) for in-process backends with
            several workers, which run in child processes.
        local_llm: an already loaded model (one worker only), e.g. in a notebook.

    Returns:
        A :class:`BatchReport`; ``status`` is ``"done"``, ``"partial"`` or ``"failed"``.

    Raises:
        BatchInterrupted: Ctrl-C or SIGTERM; finished summaries are kept and ``.report`` says what was done.
        BatchError, rag.models.ModelNotFound, rag.llm.LLMBackendError: the job cannot start.
    """
    started = time.perf_counter()
    settings = settings or Settings()
    servers = list(dict.fromkeys(servers)) or [url for url in [server_url(settings)] if url]
    workers = workers or len(servers) or 1
    if workers < 1:
        raise BatchError("--workers must be at least 1")
    if max_words is not None and max_words < 1:
        raise BatchError("--max-words must be at least 1")
    if local_llm is not None and (workers > 1 or settings.executor != "local"):
        raise BatchError("a loaded local_llm serves one local worker: pass llm_factory (or nothing) to run several or on Ray")
    if settings.prompt and settings.prompt.startswith("hub:"):
        raise BatchError("batch summaries use a prompt family's summarize/map/reduce prompts: pass a family such as chatml, not a hub prompt")

    if settings.executor == "ray":
        import_ray()  # without the extra, fail before anything is read or loaded
    inputs = [os.fspath(item) for item in inputs]
    if not inputs and not from_store:
        raise BatchError("nothing to summarize: give files, folders or URLs, or use the store (from_store / --from-store)")
    if local_llm is not None:
        identity, ready = local_llm.identity, local_llm
    else:
        identity, ready = identify_model(settings, servers, llm_factory)
    spec = JobSpec.build(identity, settings, max_words)
    sources, failures, store_entries = find_sources(inputs, settings, from_store)
    outputs = BatchOutputs(Path(out_dir))
    report = BatchReport(out_dir=str(out_dir), documents=len(sources) + len(failures), model=spec.model, prompt=spec.prompt, workers=workers)
    report.failures.extend(failures)
    engines = open_executor(settings, workers, servers, llm_factory or load_local_llm, identity, ready)
    job = BatchRun(spec, settings, sources, store_entries, engines, outputs, report, workers, progress)
    interrupted: KeyboardInterrupt | None = None
    completed = False
    try:
        job.run()
        completed = True
    except KeyboardInterrupt as stopped:
        interrupted = stopped
        job.stop_now()
    finally:
        job.close()
        report.records = [job.records[number] for number in sorted(job.records)]
        report.failures.extend(job.failures[number] for number in sorted(job.failures))
        if job.rollup_failure is not None:
            report.failures.append(job.rollup_failure)
        report.status = "interrupted" if interrupted is not None else _status(report) if completed else "failed"
        report.seconds = round(time.perf_counter() - started, 3)
        report.llm_seconds = round(report.llm_seconds, 3)
        outputs.finish(report)
    logger.info("batch: %d of %d documents summarized (%d reused), %d failed", report.done, report.documents, report.reused, len(report.failures))
    if interrupted is not None:
        raise BatchInterrupted(report) from interrupted
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


class BatchRun:
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
        self.loader = DocumentLoader(settings, store_entries)
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
        self.outputs.save(result.record, self.spec, digest([record["key"] for record in records]))
        self._count(result.record)
        self.report.rollup = result.record

    def stop_now(self) -> None:
        """Ctrl-C or SIGTERM: stop loading and summarizing now; keep whatever finished meanwhile."""
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
