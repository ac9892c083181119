"""Metering a batch job's LLM calls: time, prompts and outputs, and a stop at the next token once the job stops."""

from __future__ import annotations

import threading
import time
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler

from rag.batch.tasks import JobStopping


class CallMeter(BaseCallbackHandler):
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
            raise JobStopping("the batch job is stopping")

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
