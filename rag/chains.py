"""LCEL chains: they take Runnables (retriever, prompt, LLM) in and give Runnables out.

Every builder works with any LangChain language model Runnable (the local backends
of :mod:`rag.llm`, with a task's stops bound by ``LocalLLM.for_task``, or a fake in
tests), streams with ``.stream()``, and leaves model loading to the caller. Pass a
:class:`rag.budget.ContextBudget` to keep prompts inside the model's context window.

Example (Jupyter)::

    from rag.chains import build_retrieval_qa_chain, build_retriever
    from rag.prompts import get_prompt
    chain = build_retrieval_qa_chain(build_retriever(store, k=4), get_prompt("chatml"), llm)
    result = chain.invoke("What is X?")   # {"question", "context": [Document], "budget", "answer"}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelLike
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnablePick,
)

from rag.budget import ContextBudget, ContextOverflow
from rag.prompts import get_prompt

logger = logging.getLogger(__name__)


def format_docs(docs: Sequence[Document], start: int = 1) -> str:
    """Number the documents so an answer can cite them as [1], [2], ..."""
    return "\n\n".join(
        f"[{number}] {doc.metadata.get('title') or doc.metadata.get('source', '')}\n{doc.page_content}"
        for number, doc in enumerate(docs, start=start)
    )


def format_context(docs: Sequence[Document], best_last: bool = False) -> str:
    """The passages of an answer prompt, numbered by rank ([1] the best); with ``best_last`` the best is printed last.

    Last is nearest the question: with SmolLM2-135M, answers to ``benchmarks/bench_retrieval.py``'s
    questions held more of their phrase, but answers on ``data/`` grew longer and cited less
    (see the README), so first is the default.
    """
    parts = [format_docs([doc], start=number) for number, doc in enumerate(docs, start=1)]
    return "\n\n".join(reversed(parts) if best_last else parts)


def format_history(messages: Sequence[BaseMessage]) -> str:
    """A chat history as ``User: ...`` / ``Assistant: ...`` lines for the condense prompt."""
    speaker = {"human": "User", "ai": "Assistant"}
    return "\n".join(f"{speaker.get(message.type, message.type)}: {message.text.strip()}" for message in messages)


def build_retriever(store, k: int = 4, settings=None) -> Runnable[str, list[Document]]:
    """The retriever of ``rag search``, ``ask``, ``chat`` and ``eval`` over a ``langchain_chroma.Chroma`` store.

    A :class:`rag.retrieval.RagRetriever` (a LangChain ``BaseRetriever``) built by
    :func:`rag.retrieval.retriever` from ``settings`` (method, neighbours, cut-offs) with ``k`` chunks;
    without ``settings``, vector search.
    """
    from rag.retrieval import retriever
    from rag.settings import Settings

    settings = settings or Settings(retrieval="vector")  # without settings, no store folder to find the lexical index in
    return retriever(settings, store.embeddings, k=k, collection=store._collection)


# --- question answering ---------------------------------------------------------------------------


NO_CONTEXT_ANSWER = "I don't know: no passage of the indexed documents matches the question closely enough."


def unmentioned_answer(names: Sequence[str]) -> str:
    """The answer to a question naming what the documents never mention (``metadata["unmentioned"]`` of the first hit)."""
    return "I don't know: the indexed documents never mention " + ", ".join(f"“{name}”" for name in names) + "."


def _declined(inputs: dict) -> str | None:
    """The answer given without the model: no context, or a context whose question names what no chunk mentions."""
    context = inputs.get("context")
    if not context:
        return NO_CONTEXT_ANSWER
    names = context[0].metadata.get("unmentioned")
    return unmentioned_answer(names) if names else None


def build_docs_qa_chain(prompt: BasePromptTemplate, llm: LanguageModelLike, *, best_last: bool = False) -> Runnable[dict, str]:
    """QA over given documents, best first: ``{"context": [Document], "question": str}`` -> answer text.

    The prompt prints them with :func:`format_context` (``best_last``: the best nearest the question).

    With no documents (nothing retrieved reached ``min_score``) the answer is
    :data:`NO_CONTEXT_ANSWER`, without calling the model: a small model given no context
    makes an answer up. So is a question naming what no chunk mentions (the first
    document's ``unmentioned``, set by :class:`rag.retrieval.RagRetriever`): :func:`unmentioned_answer`.
    """
    context = RunnablePick("context") | RunnableLambda(lambda docs: format_context(docs, best_last), name="format_context")
    answer = RunnablePassthrough.assign(context=context) | prompt | llm | StrOutputParser()
    return RunnableBranch((lambda inputs: _declined(inputs) is not None, RunnableLambda(_declined, name="declined")), answer)


def build_context_fitter(prompt: BasePromptTemplate, budget: ContextBudget) -> Runnable[dict, dict]:
    """Trim ``inputs["context"]`` (documents, best first) to the budget; add ``inputs["budget"]``.

    Raises :class:`rag.budget.ContextOverflow` when the question alone does not fit.
    """

    def fit(inputs: dict) -> dict:
        others = {key: value for key, value in inputs.items() if key in prompt.input_variables and key != "context"}

        def render(docs: list[Document]) -> str:
            return prompt.invoke({**others, "context": format_docs(docs)}).to_string()

        kept, report = budget.fit(inputs["context"], render)
        return {**inputs, "context": kept, "budget": report}

    return RunnableLambda(fit, name="fit_context")


def build_retrieval_qa_chain(
    retriever: Runnable[str, list[Document]],
    prompt: BasePromptTemplate,
    llm: LanguageModelLike,
    budget: ContextBudget | None = None,
    *,
    best_last: bool = False,
) -> Runnable[str, dict]:
    """Retrieval QA: question -> ``{"question", "context", "budget", "answer"}``.

    ``context`` holds the documents the answer's citations [1], [2], ... refer to (its
    sources); ``budget`` is the :class:`rag.budget.BudgetReport` (``None`` without a budget).
    Streaming yields the retrieval result first, then ``{"answer": token}`` chunks. With a
    budget, a question too long for the context raises :class:`rag.budget.ContextOverflow`
    before anything is retrieved.
    """
    retrieve = RunnableParallel(question=RunnablePassthrough(), context=retriever)
    if budget is not None:
        retrieve = build_question_check(prompt, budget) | retrieve
    fitted = retrieve | _fitter(prompt, budget)
    return fitted | RunnablePassthrough.assign(answer=build_docs_qa_chain(prompt, llm, best_last=best_last))


def build_question_check(prompt: BasePromptTemplate, budget: ContextBudget) -> Runnable[str, str]:
    """Pass the question on if it fits the prompt without documents; else raise :class:`ContextOverflow`.

    Run it before retrieval: a question too long to answer is refused without being embedded.
    """

    def check(question: str) -> str:
        budget.check_base(lambda docs: prompt.invoke({"question": question, "context": format_docs(docs)}).to_string())
        return question

    return RunnableLambda(check, name="check_question")


def _fitter(prompt: BasePromptTemplate, budget: ContextBudget | None) -> Runnable[dict, dict]:
    if budget is None:
        return RunnablePassthrough.assign(budget=RunnableLambda(lambda _: None))
    return build_context_fitter(prompt, budget)


# --- conversational QA ----------------------------------------------------------------------------


def build_condense_chain(prompt: BasePromptTemplate, llm: LanguageModelLike) -> Runnable[dict, str]:
    """``{"history": str, "question": str}`` -> a standalone question (one line)."""
    return {"history": itemgetter("history"), "question": itemgetter("question")} | prompt | llm | StrOutputParser() | RunnableLambda(_standalone_line)


def _understood(message: BaseMessage) -> str:
    """A user turn as the chain understood it (its ``standalone_question``), first question only."""
    text = (message.additional_kwargs.get("standalone_question") or message.text).strip()
    return re.split(r"(?<=\?)\s+", text, maxsplit=1)[0]


def _looks_like_question(text: str, max_words: int = 40) -> bool:
    return text.endswith("?") and len(text.split()) <= max_words


def _standalone_line(text: str) -> str:
    """The first non-empty line of a condense answer, without a label or quotes."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(standalone question|question)\s*:\s*", "", line, flags=re.IGNORECASE).strip().strip("\"'").strip()
        if line:
            return line
    return ""


def build_history_aware_question(
    condense_prompt: BasePromptTemplate,
    llm: LanguageModelLike,
    budget: ContextBudget | None = None,
) -> Runnable[dict, dict]:
    """``{"question", "history": [messages]}`` -> ``{"question", "condense"}``: the question to retrieve and answer with.

    ``condense`` says how the question was made:

    - ``"as_asked"``: without history (or none that fits the budget), the question as it is;
    - ``"rewrite"``: the LLM's rewrite as a standalone question, from the newest turns
      that fit the budget, used as it is;
    - ``"fallback"``: the rewrite was not a question (small models tend to answer
      instead), so the previous question joined with the follow-up.
    """
    condense = build_condense_chain(condense_prompt, llm)

    def condense_inputs(inputs: dict) -> dict:
        history = list(inputs["history"])
        while history:
            values = {"history": format_history(history), "question": inputs["question"]}
            if budget is None or budget.fits(condense_prompt.invoke(values).to_string()):
                return {**values, "messages": history}
            history = history[2:]  # drop the oldest exchange
        return {"history": "", "question": inputs["question"], "messages": []}

    def rewrite(values: dict) -> dict:
        if not values["history"]:
            return {"question": values["question"], "condense": "as_asked"}
        rewritten = condense.invoke(values)
        if _looks_like_question(rewritten):
            return {"question": rewritten, "condense": "rewrite"}
        # Small models often answer instead of rewriting: then use the previous question
        # (as it was understood, first part only) with the follow-up; it names what "it" is.
        logger.info("the condense step gave %r, not a question; using the previous question with the follow-up", rewritten[:80])
        previous = next((_understood(message) for message in reversed(values["messages"]) if message.type == "human"), "")
        return {"question": f"{previous} {values['question']}".strip(), "condense": "fallback"}

    return RunnableBranch(
        (lambda inputs: not inputs.get("history"), RunnableLambda(lambda inputs: {"question": inputs["question"], "condense": "as_asked"})),
        RunnableLambda(condense_inputs) | RunnableLambda(rewrite, name="condense_question"),
    )


def build_conversational_qa_chain(
    retriever: Runnable[str, list[Document]],
    prompt: BasePromptTemplate,
    condense_prompt: BasePromptTemplate,
    llm: LanguageModelLike,
    budget: ContextBudget | None = None,
    *,
    condense_llm: LanguageModelLike | None = None,
    best_last: bool = False,
) -> Runnable[dict, dict]:
    """Conversational QA: ``{"question", "history": [messages]}`` -> ``{"asked", "question", "condense", "context", "budget", "answer"}``.

    A follow-up ("and its license?") is rewritten into a standalone ``question`` from
    the history (history-aware retrieval), which then drives retrieval and the answer;
    ``asked`` is what the user typed and ``condense`` how the question was made (see
    :func:`build_history_aware_question`). The caller bounds the history it passes in; a
    human message may carry ``additional_kwargs["standalone_question"]`` (how that turn
    was understood), which the fallback prefers. ``condense_llm`` (default ``llm``)
    rewrites the question, e.g. the LLM with the condense task's stops.
    """
    standalone = build_history_aware_question(condense_prompt, condense_llm or llm, budget)
    prepare = RunnableParallel(asked=itemgetter("question"), standalone=standalone) | RunnableLambda(
        lambda state: {"asked": state["asked"], **state["standalone"]}, name="standalone_question"
    )
    retrieve = RunnablePassthrough.assign(context=itemgetter("question") | retriever)
    chain = prepare | retrieve | _fitter(prompt, budget) | RunnablePassthrough.assign(answer=build_docs_qa_chain(prompt, llm, best_last=best_last))
    if budget is None:
        return chain
    check = build_question_check(prompt, budget)

    def check_asked(inputs: dict) -> dict:
        # Whole, in one step: a streamed passthrough would hand on the history before the check fails.
        check.invoke(inputs["question"])
        return inputs

    return RunnableLambda(check_asked, name="check_asked") | chain


# --- summarization --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummarizePrompts:
    """The three prompts summarization uses: stuff (all at once), map (one part), reduce (combine)."""

    stuff: BasePromptTemplate
    map: BasePromptTemplate
    reduce: BasePromptTemplate

    @classmethod
    def for_family(cls, family: str) -> SummarizePrompts:
        return cls(get_prompt(family, "summarize"), get_prompt(family, "map"), get_prompt(family, "reduce"))


def build_stuff_chain(prompt: BasePromptTemplate, llm: LanguageModelLike) -> Runnable[list[Document], str]:
    """Summarize documents in one prompt: ``{"docs": format_docs} | prompt | llm | parser``."""
    return {"docs": RunnableLambda(format_docs)} | prompt | llm | StrOutputParser()


def join_summaries(summaries: Sequence[str]) -> str:
    return "\n\n".join(summary.strip() for summary in summaries)


def build_summarize_chain(
    prompts: SummarizePrompts,
    llm: LanguageModelLike,
    budget: ContextBudget | None = None,
    *,
    max_concurrency: int = 1,
) -> Runnable[list[Document], dict]:
    """Summarize documents: stuff them into one prompt when they fit, map-reduce otherwise.

    Returns a Runnable from documents to ``{"docs", "method", "groups", "calls", "partials", "summary"}``:
    ``docs`` are the documents as numbered for citations (a document too long for one
    prompt appears as its parts), ``method`` is ``"stuff"`` or ``"map_reduce"``,
    ``groups`` the number of map prompts, ``calls`` the LLM calls made and ``partials``
    the partial summaries the final reduce combined. Only the final (stuff or reduce)
    call streams.

    Args:
        max_concurrency: map prompts run at once; keep 1 for in-process backends.
    """
    map_chain = prompts.map | llm | StrOutputParser()
    reduce_chain = prompts.reduce | llm | StrOutputParser()
    config: dict[str, Any] = {"max_concurrency": max_concurrency}

    def render_stuff(docs: list[Document]) -> str:
        return prompts.stuff.invoke({"docs": format_docs(docs)}).to_string()

    def render_map(docs: list[Document]) -> str:
        return prompts.map.invoke({"docs": format_docs(docs)}).to_string()

    def render_reduce(docs: list[Document]) -> str:
        return prompts.reduce.invoke({"docs": join_summaries([doc.page_content for doc in docs])}).to_string()

    def plan(docs: list[Document]) -> dict:
        docs = list(docs)
        if budget is None or budget.fits(render_stuff(docs)):
            return {"docs": docs, "method": "stuff", "groups": [docs]}
        groups = budget.pack(docs, render_map, "the map prompt")
        return {"docs": [doc for group in groups for doc in group], "method": "map_reduce", "groups": groups}

    def map_and_collapse(state: dict) -> dict:
        if state["method"] == "stuff":
            return {"summaries": [], "calls": 0}
        starts = _group_starts(state["groups"])
        summaries = map_chain.batch([{"docs": format_docs(group, start)} for group, start in zip(state["groups"], starts)], config)
        calls = len(summaries)
        while not budget.fits(render_reduce(_as_docs(summaries))):
            groups = budget.pack(_as_docs(summaries), render_reduce, "the reduce prompt")
            if len(groups) >= len(summaries):
                raise ContextOverflow(
                    f"partial summaries cannot be combined within {budget.limit} tokens: raise n_ctx or lower max_tokens"
                )
            summaries = reduce_chain.batch([{"docs": join_summaries([doc.page_content for doc in group])} for group in groups], config)
            calls += len(groups)
        return {"summaries": summaries, "calls": calls}

    def shape(state: dict) -> dict:
        return {
            "docs": state["docs"],
            "method": state["method"],
            "groups": len(state["groups"]),
            "calls": state["partials"]["calls"] + 1,
            "partials": state["partials"]["summaries"],
        }

    def final_step(state: dict) -> Runnable:
        if state["method"] == "stuff":
            return itemgetter("docs") | build_stuff_chain(prompts.stuff, llm)
        return RunnableLambda(lambda s: {"docs": join_summaries(s["partials"])}) | reduce_chain

    return (
        RunnableLambda(plan, name="plan_summary")
        | RunnablePassthrough.assign(partials=RunnableLambda(map_and_collapse, name="map_and_collapse"))
        | RunnableLambda(shape, name="summary_state")
        | RunnablePassthrough.assign(summary=RunnableLambda(final_step, name="final_summary"))
    )


def _group_starts(groups: Sequence[Sequence[Document]]) -> list[int]:
    starts, number = [], 1
    for group in groups:
        starts.append(number)
        number += len(group)
    return starts


def _as_docs(summaries: Sequence[str]) -> list[Document]:
    return [Document(page_content=summary) for summary in summaries]
