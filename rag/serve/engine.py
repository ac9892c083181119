"""What the API serves: the models loaded once behind :class:`rag.answer.Assistant`, and generations run off the event loop.

A generation runs in its own thread, feeding tokens to the request through a queue; it
stops at the next token once the request goes away (:meth:`GenerationRun.stop`), and only
then frees the model. Closing a LangChain stream would not do: LangChain drains the rest of
its input, which runs the generation to its end; so a callback on the LLM raises
:class:`GenerationStopped` at the next token instead.

Example::

    models = ServedModels(settings)
    models.load()                                   # raises what is missing (RagError)
    run = GenerationRun(lambda cancel: models.chat_session([], cancel=cancel).stream("When was ...?"), slot)
    await run.start()
    async for item in run: ...                      # tokens, then the Answer
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import LanguageModelLike
from langchain_core.messages import BaseMessage

from rag.answer import Assistant, ChatSession
from rag.embed import NFCEmbeddings, embedder_id
from rag.errors import RagError
from rag.llm import LocalLLM
from rag.prompts import get_spec
from rag.serve.limits import GenerationSlot
from rag.settings import Settings

logger = logging.getLogger(__name__)


class SerializedEmbeddings(NFCEmbeddings):
    """The collection's embedder, used by one thread at a time (the API's requests and retrieval share it)."""

    def __init__(self, embeddings: NFCEmbeddings):
        super().__init__(embeddings.inner, embeddings.model_id)
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            return super().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            return super().embed_query(text)


class GenerationStopped(RagError):
    """The client of a generation went away; raised at the next token to end the generation."""


class _HideStops(logging.Filter):
    """LangChain logs a warning for each callback error, even one raised on purpose: not for a stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GenerationStopped" not in record.getMessage()


logging.getLogger("langchain_core.callbacks.manager").addFilter(_HideStops())


class StopWhenSet(BaseCallbackHandler):
    """Raise :class:`GenerationStopped` at the next token (or LLM call) once ``event`` is set."""

    raise_error = True

    def __init__(self, event: threading.Event):
        self.event = event

    def _check(self, *args: Any, **kwargs: Any) -> None:
        if self.event.is_set():
            raise GenerationStopped("the client went away")

    on_llm_new_token = on_llm_start = _check


@dataclasses.dataclass
class RequestLLM(LocalLLM):
    """The loaded LLM as one request asks for it: its answer budget, temperature and extra stops.

    Only the answer (the ``rag`` task) takes them; rewriting a follow-up question keeps the
    defaults. Every task's LLM stops at the next token once ``cancel`` is set.
    """

    answer_options: dict = dataclasses.field(default_factory=dict)
    answer_stop: list[str] = dataclasses.field(default_factory=list)
    cancel: threading.Event | None = None

    def for_task(self, kind: str) -> LanguageModelLike:
        if kind != "rag":
            runnable = super().for_task(kind)
        else:
            stop = list(dict.fromkeys([*get_spec(self.family, kind).stop, *self.answer_stop]))
            runnable = self.llm.bind(**({"stop": stop} if stop else {}), **self.answer_options)
        return runnable.with_config(callbacks=[StopWhenSet(self.cancel)]) if self.cancel else runnable


class ServedModels:
    """The LLM, the embedder and the store of one ``rag serve``, loaded once and shared by every request."""

    def __init__(self, settings: Settings, assistant: Assistant | None = None):
        self.settings = settings
        self.assistant = assistant or Assistant(settings)
        self.error: str | None = None
        self.ready = False

    def load(self) -> None:
        """Load the LLM and the embedder and open the store; raises what is missing, with the fix."""
        from rag.embed import load_embeddings

        try:
            if self.assistant._embeddings is None:
                self.assistant._embeddings = SerializedEmbeddings(load_embeddings(self.settings))
            self.assistant.check_ready()
            _ = self.assistant.qa_prompt
        except Exception as error:
            self.error = str(error)
            raise
        self.ready = True

    @property
    def llm(self) -> LocalLLM:
        return self.assistant.local_llm

    @property
    def embeddings(self) -> Any:
        _ = self.assistant.store
        return self.assistant._embeddings

    @property
    def embedder_name(self) -> str:
        """The embedder's model name as /v1/models lists it (its file name)."""
        return embedder_id(self.embeddings).split(" ")[0]

    def chat_session(
        self,
        history: Sequence[BaseMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> ChatSession:
        """A chat over the shared models with the conversation so far and this request's options; ``cancel`` stops it."""
        base = self.llm
        options: dict[str, Any] = {}
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        if temperature is not None:
            options["temperature"] = temperature
        fields = {field.name: getattr(base, field.name) for field in dataclasses.fields(LocalLLM)}
        fields["max_tokens"] = max_tokens or base.max_tokens
        llm = RequestLLM(**fields, answer_options=options, answer_stop=list(stop), cancel=cancel)
        assistant = Assistant(self.settings, local_llm=llm, embeddings=self.assistant._embeddings, store=self.assistant.store)
        assistant.__dict__["qa_prompt"] = self.assistant.qa_prompt  # resolved once, at load
        assistant.__dict__["prompt_name"] = self.assistant.prompt_name
        session = assistant.chat()
        session.history = list(history)
        return session

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the LLM's own tokenizer (without the BOS it adds)."""
        return max(0, self.llm.count_tokens(text) - self.llm.count_tokens(""))


_END = object()


class GenerationRun:
    """One library stream run in a thread while holding ``slot``; iterate it on the event loop.

    Args:
        work: starts the stream (called in the thread with the run's stop event, which the
            stream must watch: see :class:`StopWhenSet`).
        slot: the model's :class:`GenerationSlot`; released when the thread has finished.
        gone: an async check, polled while the request waits for the model and while tokens
            flow, that tells whether the client left: one that leaves the queue never starts.
    """

    POLL_SECONDS = 0.2

    def __init__(self, work: Callable[[threading.Event], Iterator[Any]], slot: GenerationSlot, gone: Callable[[], Any] | None = None):
        self.work = work
        self.slot = slot
        self.gone = gone
        self._stop = threading.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.finished = asyncio.Event()

    async def start(self) -> None:
        """Wait for the model (429 when the queue is full, 499 when the client leaves the queue), then start the thread."""
        await self.slot.acquire(gone=self.gone)
        loop = asyncio.get_running_loop()
        try:
            threading.Thread(target=self._run, args=(loop,), name="rag-generation", daemon=True).start()
        except BaseException:
            self.slot.release()
            raise

    def stop(self) -> None:
        """Ask the generation to stop at its next token (the client left)."""
        self._stop.set()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        def post(*item: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed (server shutting down)
                self._stop.set()

        try:
            for item in self.work(self._stop):
                post("item", item)
            post("end", None)
        except GenerationStopped:
            logger.info("client gone: generation stopped")
        except BaseException as error:  # handed to the request, which maps it to a status
            post("error", error)
        finally:
            try:
                loop.call_soon_threadsafe(self._released)
            except RuntimeError:
                pass

    def _released(self) -> None:
        self.slot.release()
        self.finished.set()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(self._queue.get(), self.POLL_SECONDS)
                except TimeoutError:
                    kind, value = None, None
                if self.gone is not None and loop.time() - checked >= self.POLL_SECONDS:
                    checked = loop.time()
                    if await self.gone():
                        return
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                elif kind == "error":
                    raise value
        finally:
            self.stop()
