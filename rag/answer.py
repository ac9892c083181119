"""Answer questions from the indexed documents with their sources; summarize documents; chat.

Example::

    from rag.answer import Assistant, ask, summarize
    answer = ask("Who maintains the project?")
    print(answer.answer, [s.source for s in answer.sources])

    assistant = Assistant()                 # loads the models on first use, then reuses them
    session = assistant.chat()
    session.ask("What is QuokkaDB?")
    session.ask("And what about its license?")   # answered using the history
    print(summarize(["data/quokkadb.rst"]).summary)

Results serialize themselves: ``answer.to_dict()`` (everything), ``answer.to_dict(chunks=False)``
(each source as cited, without its text: what ``rag ask --json`` prints).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough

from rag.budget import BudgetReport, ContextBudget
from rag.chains import (
    SummarizePrompts,
    build_context_fitter,
    build_conversational_qa_chain,
    build_docs_qa_chain,
    build_retrieval_qa_chain,
    build_retriever,
    build_summarize_chain,
)
from rag.errors import EmptyQuestion, RagError, require_question
from rag.llm import LocalLLM, load_local_llm
from rag.prompts import HUB_PREFIX, PromptNotFound, get_prompt, get_spec, resolve_prompt
from rag.settings import Settings
from rag.store import require_nonempty

if TYPE_CHECKING:  # pragma: no cover
    from rag.sources import LoadFailure

logger = logging.getLogger(__name__)


class NothingToSummarize(RagError, ValueError):
    """No document could be loaded for summarization; ``failures`` says why each input failed."""

    def __init__(self, message: str, failures: Sequence[LoadFailure] = ()):
        super().__init__(message)
        self.failures = list(failures)


@dataclass
class Source:
    """A document an answer or summary cites as ``[number]``."""

    number: int
    source: str
    title: str
    score: float | None
    chunk: str
    part: int | None = None
    trimmed: bool = False

    @classmethod
    def from_document(cls, number: int, doc: Document) -> Source:
        meta = doc.metadata
        score = meta.get("score")
        return cls(
            number=number,
            source=str(meta.get("source", "")),
            title=str(meta.get("title", "")),
            score=None if score is None else round(float(score), 4),
            chunk=doc.page_content,
            part=meta.get("part"),
            trimmed=bool(meta.get("trimmed", False)),
        )


def _sources(docs: Sequence[Document]) -> list[Source]:
    return [Source.from_document(number, doc) for number, doc in enumerate(docs, start=1)]


def _as_dict(result: Any, chunks: bool, cited: tuple[str, ...]) -> dict:
    """A result as a dict; without ``chunks``, each source keeps only the ``cited`` fields."""
    data = asdict(result)
    if not chunks:
        data["sources"] = [{key: source[key] for key in cited} for source in data["sources"]]
    return data


@dataclass
class Answer:
    """An answer, the sources its citations [1], [2], ... refer to, and how it was made.

    ``metadata["budget"]`` tells how the context was fitted (chunks trimmed or dropped);
    in a chat, ``metadata["standalone_question"]`` is the question retrieved and answered
    with, and ``metadata["condense"]`` how it was made from the history: ``"rewrite"`` (the
    LLM's rewrite), ``"fallback"`` (the previous question with the follow-up, when the
    rewrite was not a question) or ``"as_asked"`` (no history: the question itself).
    """

    question: str
    answer: str
    sources: list[Source]
    prompt: str
    model: str
    metadata: dict = field(default_factory=dict)

    CITED: ClassVar[tuple[str, ...]] = ("number", "source", "title", "score")

    def to_dict(self, chunks: bool = True) -> dict:
        """The answer as JSON-ready data; ``chunks=False`` keeps of each source only how it is cited (no text)."""
        return _as_dict(self, chunks, self.CITED)


@dataclass
class Summary:
    """A summary of documents, with the sources its citations refer to.

    ``method`` is ``"stuff"`` (one prompt) or ``"map_reduce"`` (the documents did not fit
    the context); ``metadata`` has the number of map groups and LLM calls; ``failures``
    the inputs that could not be loaded (each with its ``source`` and ``reason``).
    """

    summary: str
    sources: list[Source]
    method: str
    prompt: str
    model: str
    metadata: dict = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)

    CITED: ClassVar[tuple[str, ...]] = ("number", "source", "title", "part")

    def to_dict(self, chunks: bool = True) -> dict:
        """The summary as JSON-ready data; ``chunks=False`` keeps of each source only how it is cited (no text)."""
        return _as_dict(self, chunks, self.CITED)


class Assistant:
    """Answers, summaries and chats over one store with one LLM, loaded on first use and reused.

    Args:
        settings: the configuration (model, backend, prompt, store, k, ...).
        local_llm: an already loaded LLM (tests pass one over a fake).
        embeddings: the embedder for the store; loaded from settings when needed.
        store: an already opened vector store.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        local_llm: LocalLLM | None = None,
        embeddings: Embeddings | None = None,
        store: Any = None,
    ):
        self.settings = settings or Settings()
        self._local_llm = local_llm
        self._embeddings = embeddings
        self._store = store

    @property
    def local_llm(self) -> LocalLLM:
        if self._local_llm is None:
            self._local_llm = load_local_llm(self.settings)
        return self._local_llm

    @property
    def store(self) -> Any:
        if self._store is None:
            from rag.store import open_store

            if self._embeddings is None:
                from rag.embed import load_embeddings

                self._embeddings = load_embeddings(self.settings)
            self._store = open_store(self.settings, self._embeddings)
        return self._store

    @property
    def budget(self) -> ContextBudget:
        return ContextBudget.from_llm(self.local_llm)

    @functools.cached_property
    def prompt_name(self) -> str:
        """The QA prompt in use, e.g. ``chatml/rag`` (the user's choice, else the model's family)."""
        chosen = self.settings.prompt
        if chosen and chosen.startswith(HUB_PREFIX):
            return chosen
        return get_spec(chosen or self.local_llm.family, "rag").name

    @functools.cached_property
    def qa_prompt(self) -> BasePromptTemplate:
        prompt = resolve_prompt(self.prompt_name, "rag", cache_dir=self.settings.cache_dir)
        missing = {"context", "question"} - set(prompt.input_variables)
        if missing:
            raise PromptNotFound(
                f"prompt {self.prompt_name} cannot answer questions: it lacks {sorted(missing)}; "
                "pick a rag prompt such as chatml/rag or rlm/rag-prompt"
            )
        return prompt

    @property
    def best_last(self) -> bool:
        """Whether the answer prompt prints the best chunk last, nearest the question (``Settings.context_order``; default first)."""
        return self.settings.context_order == "best_last"

    @property
    def qa_llm(self) -> Runnable:
        """The LLM as it answers questions: with the QA task's stops (a summary has none)."""
        return self.local_llm.for_task("rag")

    def check_ready(self) -> None:
        """Load the LLM and open the store; raise what is missing, with the fix.

        A model that cannot be loaded is reported first (``ModelNotFound``,
        ``InvalidModelFile``, ``LLMBackendError``), then an empty store (``EmptyStore``).
        """
        _ = self.local_llm
        require_nonempty(self.store, self.settings)

    # --- questions --------------------------------------------------------------------------------

    def retrieval_chain(self) -> Runnable[str, dict]:
        """The retrieval QA chain this assistant runs, for composing your own pipelines."""
        return build_retrieval_qa_chain(self.retriever(), self.qa_prompt, self.qa_llm, self.budget, best_last=self.best_last)

    def retriever(self) -> Runnable[str, list[Document]]:
        """The retriever of ``ask`` and ``chat``: the same chunks ``rag search`` and ``rag eval`` get."""
        return build_retriever(self.store, self.settings.k, self.settings)

    def stream(self, question: str) -> Iterator[str | Answer]:
        """Yield answer tokens as they come, then the finished :class:`Answer`.

        Raises :class:`EmptyQuestion` (before anything loads), :class:`rag.store.EmptyStore`,
        :class:`rag.budget.ContextOverflow` (a question longer than the context, before
        retrieval) and :class:`rag.llm.LLMBackendError` (also mid-stream).
        """
        require_question(question)
        self.check_ready()
        yield from self._answer(self.retrieval_chain(), question, question)

    def ask(self, question: str) -> Answer:
        return _last(self.stream(question), Answer)

    def stream_from_docs(self, question: str, docs: Sequence[Document]) -> Iterator[str | Answer]:
        """Like :meth:`stream`, but answer from the given documents (best first) instead of the store."""
        require_question(question)
        chain = build_context_fitter(self.qa_prompt, self.budget) | RunnablePassthrough.assign(
            answer=build_docs_qa_chain(self.qa_prompt, self.qa_llm, best_last=self.best_last)
        )
        yield from self._answer(chain, {"question": question, "context": list(docs)}, question)

    def answer_from(self, question: str, docs: Sequence[Document]) -> Answer:
        """QA over given documents: the answer cites them as [1], [2], ... in the order given."""
        return _last(self.stream_from_docs(question, docs), Answer)

    def _answer(self, chain: Runnable, chain_input: Any, question: str) -> Iterator[str | Answer]:
        state: dict[str, Any] = {}
        parts: list[str] = []
        for chunk in chain.stream(chain_input):
            if "answer" in chunk:
                parts.append(chunk["answer"])
                yield chunk["answer"]
            else:
                state.update(chunk)
        metadata: dict[str, Any] = {"backend": self.local_llm.backend}
        if isinstance(state.get("budget"), BudgetReport):
            metadata["budget"] = state["budget"].to_dict()
        if "asked" in state:
            metadata["standalone_question"] = state["question"]
            metadata["condense"] = state["condense"]
        context = state.get("context", [])
        if context and context[0].metadata.get("unmentioned"):
            metadata["unmentioned"] = context[0].metadata["unmentioned"]  # named by the question, in no chunk
        if context and context[0].metadata.get("cut"):
            metadata["cut"] = context[0].metadata["cut"]  # the chunks the score cut-offs dropped
        elif not context and "context" in state:
            metadata["cut"] = f"no chunk reached min_score {self.settings.min_score}"
        yield Answer(
            question=question,
            answer="".join(parts).strip(),
            sources=_sources(state.get("context", [])),
            prompt=self.prompt_name,
            model=self.local_llm.model_name,
            metadata=metadata,
        )

    # --- summaries --------------------------------------------------------------------------------

    def stream_summary(
        self, inputs: Iterable[str | Path | Document], *, max_concurrency: int = 1
    ) -> Iterator[str | LoadFailure | Summary]:
        """Yield each input that fails to load, then the summary's tokens as they come, then the :class:`Summary`.

        ``inputs`` are Documents, or files, folders and URLs loaded as :func:`load_documents`
        loads them. The documents are stuffed into one prompt when they fit the context, else
        summarized part by part (map) and combined (reduce); only the last call streams.
        The failures are also in ``Summary.failures``; :class:`NothingToSummarize` (with
        its ``failures``) is raised when no document loads.
        """
        docs, failures = load_documents(inputs, self.settings)
        yield from failures
        if not docs:
            message = "no input could be loaded" if failures else "no documents were given or loaded"
            raise NothingToSummarize(f"nothing to summarize: {message}", failures)
        family = self.local_llm.family
        chain = build_summarize_chain(SummarizePrompts.for_family(family), self.local_llm.llm, self.budget, max_concurrency=max_concurrency)
        state: dict[str, Any] = {}
        parts: list[str] = []
        for chunk in chain.stream(list(docs)):
            if "summary" in chunk:
                parts.append(chunk["summary"])
                yield chunk["summary"]
            else:
                state.update(chunk)
        method = state["method"]
        yield Summary(
            summary="".join(parts).strip(),
            sources=_sources(state["docs"]),
            method=method,
            prompt=f"{family}/summarize" if method == "stuff" else f"{family}/map+reduce",
            model=self.local_llm.model_name,
            metadata={
                "backend": self.local_llm.backend,
                "groups": state["groups"],
                "calls": state["calls"],
                "n_ctx": self.local_llm.n_ctx,
                "answer_tokens": self.local_llm.max_tokens,
            },
            failures=failures,
        )

    def summarize(self, inputs: Iterable[str | Path | Document], *, max_concurrency: int = 1) -> Summary:
        """The :class:`Summary` of Documents, files, folders or URLs (see :meth:`stream_summary`)."""
        return _last(self.stream_summary(inputs, max_concurrency=max_concurrency), Summary)

    # --- chat -------------------------------------------------------------------------------------

    def chat(self, history_turns: int | None = None) -> ChatSession:
        """A conversation whose follow-up questions are answered using its history."""
        return ChatSession(self, self.settings.history_turns if history_turns is None else history_turns)


class ChatSession:
    """A conversation over the store: each question sees the last ``history_turns`` exchanges.

    A follow-up is rewritten into a standalone question from the history (history-aware
    retrieval); a failed turn is not added to the history.
    """

    def __init__(self, assistant: Assistant, history_turns: int):
        self.assistant = assistant
        self.history_turns = history_turns
        self.history: list[BaseMessage] = []

    def stream(self, question: str) -> Iterator[str | Answer]:
        """Yield answer tokens, then the :class:`Answer`; the exchange joins the history."""
        require_question(question)
        assistant = self.assistant
        assistant.check_ready()
        chain = build_conversational_qa_chain(
            assistant.retriever(),
            assistant.qa_prompt,
            get_prompt(assistant.local_llm.family, "condense"),
            assistant.qa_llm,
            assistant.budget,
            condense_llm=assistant.local_llm.for_task("condense"),
            best_last=assistant.best_last,
        )
        window = self.history[-2 * self.history_turns :] if self.history_turns else []
        answer: Answer | None = None
        for item in assistant._answer(chain, {"question": question, "history": window}, question):
            if isinstance(item, Answer):
                answer = item
            yield item
        if answer is not None:
            keep = 2 * self.history_turns
            asked = HumanMessage(question, additional_kwargs={"standalone_question": answer.metadata.get("standalone_question", question)})
            self.history = [*self.history, asked, AIMessage(answer.answer)][-keep:] if keep else []

    def ask(self, question: str) -> Answer:
        return _last(self.stream(question), Answer)

    def reset(self) -> None:
        self.history.clear()


def _last(items: Iterator, kind: type):
    result = None
    for item in items:
        result = item
    assert isinstance(result, kind)
    return result


def ask(question: str, settings: Settings | None = None) -> Answer:
    """One question, answered with its sources (loads the models; use :class:`Assistant` for many)."""
    return Assistant(settings).ask(question)


def load_documents(inputs: Iterable[str | Path | Document], settings: Settings | None = None) -> tuple[list[Document], list]:
    """Documents from files, folders and URLs, loaded as ingest loads them; given Documents pass through.

    Folders follow the settings' ``include``, ``exclude`` and ``include_hidden``; each
    source is parsed in the loader process under ``source_timeout`` and ``loader_memory_mb``
    (see :mod:`rag.sources.process`). Returns the documents (one per PDF page, else one per
    source) and the load failures (each with its ``source`` and ``reason``).
    """
    from rag.sources import LoadFailure, LoadOptions, expand_inputs
    from rag.sources.process import LoadRequest, load_each

    settings = settings or Settings()
    given = list(inputs)
    docs = [item for item in given if isinstance(item, Document)]
    paths = [item for item in given if not isinstance(item, Document)]
    failures: list = []
    if paths:
        found = expand_inputs(paths, settings.include, settings.exclude, settings.include_hidden)
        failures = list(found.failures)
        options = LoadOptions.from_settings(settings)
        requests = (LoadRequest(source, options, split=False) for source in found.sources)
        for outcome in load_each(requests, settings.source_timeout, settings.loader_memory_mb, settings.isolate_loaders):
            if outcome.status == "loaded":
                docs += [Document(page_content=text, metadata=metadata) for text, metadata in outcome.chunks]
            else:
                logger.info("could not load %s: %s", outcome.source, outcome.reason)
                failures.append(LoadFailure(outcome.source, outcome.reason or "unknown error"))
    return docs, failures


def summarize(inputs: Iterable[str | Path | Document], settings: Settings | None = None) -> Summary:
    """Summarize files, folders, URLs or Documents (loads the LLM; use :class:`Assistant` for many).

    Sources that cannot be loaded are logged and listed in ``Summary.failures``;
    :class:`NothingToSummarize` (naming each failure) is raised when none loads.
    """
    try:
        return Assistant(settings).summarize(inputs)
    except NothingToSummarize as error:
        reasons = "; ".join(f"{failure.source}: {failure.reason}" for failure in error.failures)
        raise NothingToSummarize(f"nothing to summarize: no document could be loaded ({reasons or 'no inputs'})", error.failures) from None
