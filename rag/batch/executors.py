"""Where a batch job's workers run: here (threads and processes) or on a Ray cluster; the job is the same.

An executor hands the run loop (:mod:`rag.batch.run`) worker ``index``'s engine with
``get(index, stop)``, and has ``abort()`` and ``close()``. Every engine has
``run(spec, task, stop) -> TaskResult``. The local executor is
:class:`rag.batch.engines.WorkerEngines`; :class:`RayExecutor` gives each worker a Ray
actor that loads the model once (or, with ``--server`` URLs, is a client of one
llama.cpp server). Loading, manifest, outputs and resuming stay in this process.

Example::

    executor = open_executor(settings.with_overrides(executor="ray"), workers=2, servers=[], factory=load_local_llm, identity=identity, ready=None)
    result = executor.get(0, stop).run(spec, task, stop)
    executor.close()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from rag.batch.engines import EngineSet, WorkerEngines, _portable, check_identity
from rag.batch.jobs import BatchError, JobSpec, LLMFactory
from rag.batch.tasks import DocumentTask, RollupTask, TaskResult, run_task
from rag.llm import LLMIdentity, LocalLLM, server_settings
from rag.settings import Settings

logger = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'rag[ray]'"


class Engine(Protocol):
    def run(self, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event) -> TaskResult: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class Executor(Protocol):
    def get(self, index: int, stop: threading.Event) -> Engine: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


def open_executor(
    settings: Settings, workers: int, servers: Sequence[str], factory: LLMFactory, identity: LLMIdentity, ready: LocalLLM | None
) -> Executor:
    """The executor ``settings.executor`` names: ``local`` (:class:`WorkerEngines`) or ``ray`` (:class:`RayExecutor`)."""
    if settings.executor == "ray":
        return RayExecutor(settings, workers, servers, factory, identity)
    return WorkerEngines(settings, workers, servers, factory, identity, ready)


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`BatchError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise BatchError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


class Summarizer:
    """A Ray actor's state: one loaded model (in the actor's process, or a client of one server)."""

    def __init__(self, factory: LLMFactory, settings: Settings, n_ctx: int | None) -> None:
        self.worker = f"ray pid {os.getpid()} on {socket.gethostname()}"
        self.error: Exception | None = None
        self.local: LocalLLM | None = None
        try:
            local = factory(settings)
            self.local = dataclasses.replace(local, n_ctx=n_ctx) if n_ctx is not None else local
        except Exception as error:  # handed to the driver by ready(), which raises it there
            self.error = _portable(error)

    def ready(self) -> tuple[str, Any]:
        return ("error", self.error) if self.local is None else ("ready", self.local.identity)

    def pid(self) -> int:
        return os.getpid()

    def run(self, spec: JobSpec, task: DocumentTask | RollupTask) -> TaskResult:
        return run_task(self.local, spec, task, None, self.worker)


class RayEngine:
    """One worker's Ray actor, created on first use and again after it died (a dead actor fails its task only)."""

    def __init__(self, ray: Any, executor: RayExecutor, index: int) -> None:
        self.ray = ray
        self.executor = executor
        self.index = index
        self.actor: Any = None

    def start(self, stop: threading.Event) -> None:
        options, settings, n_ctx, where = self.executor.actor_plan(self.index)
        from ray.exceptions import RayActorError, RayTaskError

        self.actor = self.executor.actor_class.options(**options).remote(self.executor.factory, settings, n_ctx)
        try:
            kind, payload = self._wait(self.actor.ready.remote(), stop)
        except (RayActorError, RayTaskError) as error:  # it died starting: cannot import rag there, out of memory, ...
            self.abort()
            raise BatchError(f"a Ray worker could not start ({type(error).__name__}): {_first_line(error)}; is rag installed on every node?") from None
        if kind == "error":
            self.abort()
            raise payload
        check_identity(self.executor.identity, payload, where)

    def run(self, spec: JobSpec, task: DocumentTask | RollupTask, stop: threading.Event) -> TaskResult:
        """Summarize one task on the actor, first (re)starting it; an actor that dies fails this task only."""
        from ray.exceptions import RayActorError, RayTaskError

        stage = "rollup" if isinstance(task, RollupTask) else "summarize"
        try:
            if self.actor is None:
                self.start(stop)
            return self._wait(self.actor.run.remote(spec, task), stop)
        except _Stopped:
            return TaskResult(task.number, task.source, stage=stage, stopped=True)
        except (RayActorError, RayTaskError) as error:
            self.abort()
            return TaskResult(task.number, task.source, stage=stage, reason=f"Ray worker died ({type(error).__name__}): {_first_line(error)}")
        except Exception as error:  # the restarted actor could not load its model; the next task tries again
            self.abort()
            return TaskResult(task.number, task.source, stage=stage, reason=f"Ray worker could not restart: {error}")

    def _wait(self, ref: Any, stop: threading.Event) -> Any:
        while True:
            done, _ = self.ray.wait([ref], timeout=0.1)
            if done:
                return self.ray.get(ref)
            if stop.is_set():
                self.abort()
                raise _Stopped

    def abort(self) -> None:
        if self.actor is not None:
            self.ray.kill(self.actor)
            self.actor = None

    close = abort


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Stopped(Exception):
    """The job is stopping while a worker waits on Ray."""


class RayExecutor(EngineSet):
    """Workers as Ray actors, one per worker (``num_cpus=1`` each), on the cluster at ``settings.ray_address``.

    Without an address it starts a local Ray instance bound to 127.0.0.1 with no dashboard,
    and shuts it down on :meth:`close`; one already initialised in this process is used as is.
    """

    def __init__(self, settings: Settings, workers: int, servers: Sequence[str], factory: LLMFactory, identity: LLMIdentity) -> None:
        super().__init__(settings, workers, servers, factory, identity)
        self.ray = ray = import_ray()
        self.started = False
        if not ray.is_initialized():
            where = settings.ray_address or "a local Ray instance"
            try:
                if settings.ray_address:
                    ray.init(address=settings.ray_address, log_to_driver=False)
                else:
                    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
                    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise BatchError(f"could not start or join {where}: {_first_line(error)}; check --ray-address (auto, or HOST:PORT of `ray start --head`)") from None
            self.started = True
        self.actor_class = ray.remote(Summarizer)

    def actor_plan(self, index: int) -> tuple[dict, Settings, int | None, str]:
        """Worker ``index``'s actor options, model settings, context override and name (for messages)."""
        options = {"num_cpus": 1, "max_concurrency": 2}  # a second thread answers pid() while run() works
        if self.servers:
            url = self.servers[index % len(self.servers)]
            return options, server_settings(self.settings, url), self.identity.n_ctx, url
        settings = self.settings
        if settings.n_threads is None and self.workers > 1:  # as the local executor: share a node's cores
            settings = settings.with_overrides(n_threads=max(1, (os.cpu_count() or 1) // self.workers))
        return options, settings, None, "a Ray worker"

    def get(self, index: int, stop: threading.Event) -> RayEngine:
        with self._lock:
            engine = self._engines.get(index)
        if engine is None:  # the first start's errors stop the job; a restart's fail one task (RayEngine.run)
            engine = RayEngine(self.ray, self, index)
            engine.start(stop)
            with self._lock:
                self._engines[index] = engine
        return engine

    def close(self) -> None:
        self.abort()
        if self.started:
            self.ray.shutdown()
            self.started = False
