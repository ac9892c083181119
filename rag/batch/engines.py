"""Where a worker's model lives: in this process, in a child process of its own, or behind a llama.cpp server.

:class:`WorkerEngines` creates each worker's engine on first use (so a finished job
run again loads no model) and checks it runs the job's model. Every engine has
``run(spec, task, stop) -> TaskResult``, ``abort()`` (Ctrl-C: stop now) and ``close()``.

Example::

    engines = WorkerEngines(settings, workers=2, servers=[], factory=load_local_llm, identity=identity, ready=None)
    result = engines.get(0, stop).run(spec, task, stop)
    engines.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from rag.batch.jobs import BatchError, JobSpec, LLMFactory
from rag.batch.tasks import DocumentTask, JobStopping, RollupTask, TaskResult, run_task
from rag.errors import RagError
from rag.llm import LLMIdentity, LocalLLM, server_settings
from rag.settings import Settings


class WorkerDied(RagError, RuntimeError):
    """A worker process ended while summarizing."""


class InProcessEngine:
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


class ProcessEngine:
    """A child process with its own copy of the model, fed one task at a time over a pipe.

    The child ignores SIGINT and SIGTERM: Ctrl-C (sent to the whole process group) or a
    SIGTERM reaches the parent, which stops the job and kills its children (see
    :mod:`rag.signals`); a child whose parent is gone (``kill -9``) exits at once, even
    mid-document. A child that dies mid-document fails that document; the next task
    starts a new one.
    """

    def __init__(self, factory: LLMFactory, settings: Settings):
        self.factory = factory
        self.settings = settings
        self.process: Any = None
        self.conn: Any = None
        self.identity: LLMIdentity | None = None

    @property
    def worker(self) -> str:
        return f"pid {self.process.pid}" if self.process is not None else "process"

    def start(self) -> None:
        if self.conn is not None:  # the previous child's pipe
            self.conn.close()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_engine_child, args=(child, self.factory, self.settings), name="rag-batch-worker", daemon=True)
        with _stop_signals_blocked():  # a Ctrl-C or SIGTERM while the child starts up is the parent's to handle
            self.process.start()
        child.close()
        self.conn = parent

    def wait_ready(self, stop: threading.Event) -> LLMIdentity:
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
        except JobStopping:
            return TaskResult(task.number, task.source, stage=stage, stopped=True)
        except (WorkerDied, OSError, EOFError) as error:
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
                    raise WorkerDied(f"exited with status {self._exitcode()}") from None
            if stop.is_set():
                self.abort()
                raise JobStopping("the batch job is stopping")
            if not self.process.is_alive() and not self.conn.poll():
                raise WorkerDied(f"exited with status {self._exitcode()}")

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


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the parent's to handle: it stops the job and its children


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread; a process started meanwhile inherits the block."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # started later, it would unblock these signals in this thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _engine_child(conn: Any, factory: LLMFactory, settings: Settings) -> None:
    """A worker process: load the model once, then summarize what the parent sends until it sends ``None``."""
    for stop in STOP_SIGNALS:  # the parent handles Ctrl-C and SIGTERM, and stops its children
        signal.signal(stop, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since start-up; now ignored
    _exit_with_parent()
    try:
        local = factory(settings)
    except Exception as error:  # handed to the parent, which raises it
        conn.send(("error", _portable(error)))
        return
    conn.send(("ready", local.identity))
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


def _exit_with_parent() -> None:
    """End this worker process as soon as its parent is gone (killed with SIGKILL, it could not stop it): no orphan keeps computing."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="rag-batch-parent-watch", daemon=True).start()


def _portable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return BatchError(f"{type(error).__name__}: {error}")


def check_identity(wanted: LLMIdentity, found: LLMIdentity, where: str) -> None:
    """Raise :class:`BatchError` unless a worker's model (``found``) is the job's (``wanted``) with at least its context."""
    if (found.model, found.family) != (wanted.model, wanted.family):
        raise BatchError(
            f"{where} serves {found.model} ({found.family} prompts), but this job runs {wanted.model} ({wanted.family}): "
            "point every --server at the same model"
        )
    if found.n_ctx < wanted.n_ctx:
        raise BatchError(f"{where} has a {found.n_ctx}-token context, less than the {wanted.n_ctx} this job plans with")


class EngineSet:
    """The engines of a job's workers by index, created on first use; Ctrl-C aborts them all."""

    def __init__(self, settings: Settings, workers: int, servers: Sequence[str], factory: LLMFactory, identity: LLMIdentity):
        self.settings = settings
        self.workers = workers
        self.servers = list(servers)  # none: the model runs in this process (or the executor's workers)
        self.factory = factory
        self.identity = identity
        self._engines: dict[int, Any] = {}
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.abort()


class WorkerEngines(EngineSet):
    """The local executor (:mod:`rag.batch.executors`): the workers' LLMs, each created on first use (a finished job re-run loads no model)."""

    def __init__(self, settings: Settings, workers: int, servers: Sequence[str], factory: LLMFactory, identity: LLMIdentity, ready: LocalLLM | None):
        super().__init__(settings, workers, servers, factory, identity)
        self.ready = ready  # a model already loaded for the identity, used by worker 0

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
        if self.servers:
            url = self.servers[index % len(self.servers)]
            local = self.ready if (index == 0 and self.ready is not None) else self.factory(server_settings(settings, url))
            self._check(local.identity, url)
            # Every server gets the smallest context of them all, so a record does not depend on where it ran.
            return InProcessEngine(dataclasses.replace(local, n_ctx=self.identity.n_ctx), url)
        if self.workers == 1:
            local = self.ready or self.factory(settings)
            self._check(local.identity, "in-process")
            return InProcessEngine(local, "in-process")
        if settings.n_threads is None:  # share the cores instead of oversubscribing them
            settings = settings.with_overrides(n_threads=max(1, (os.cpu_count() or 1) // self.workers))
        engine = ProcessEngine(self.factory, settings)
        engine.start()
        try:
            self._check(engine.wait_ready(stop), "a worker process")
        except BaseException:
            engine.abort()
            raise
        return engine

    def _check(self, found: LLMIdentity, where: str) -> None:
        check_identity(self.identity, found, where)

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()
