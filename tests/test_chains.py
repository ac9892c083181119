"""LCEL chains (QA, retrieval QA, summarize, conversational), over fake LLMs and a word-counting tokenizer (fast tier).

The budget itself (fit, pack) is tested in ``tests/test_budget.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import FakeListLLM, FakeStreamingListLLM
from langchain_core.language_models.llms import LLM
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda

from rag.budget import ContextBudget, ContextOverflow
from rag.chains import (
    NO_CONTEXT_ANSWER,
    unmentioned_answer,
    SummarizePrompts,
    build_conversational_qa_chain,
    build_docs_qa_chain,
    build_retrieval_qa_chain,
    build_stuff_chain,
    build_summarize_chain,
    format_context,
    format_docs,
)
from rag.prompts import get_prompt


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per word, plus one like a BOS."""
    return len(text.split()) + 1


class EchoLLM(LLM):
    """Answers with the prompt it was given, so tests can read what the model saw."""

    prompts: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.prompts.append(prompt)
        return prompt


class CountingLLM(FakeListLLM):
    """A FakeListLLM that counts its calls."""

    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)


def doc(text: str, source: str = "s", title: str = "T", **meta: Any) -> Document:
    return Document(page_content=text, metadata={"source": source, "title": title, **meta})


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


# --- formatting and QA ----------------------------------------------------------------------------


def test_format_docs_numbers_from_start_with_titles():
    text = format_docs([doc("alpha", title="A"), doc("beta", source="b.md", title="")], start=3)
    assert text == "[3] A\nalpha\n\n[4] b.md\nbeta"


def test_docs_qa_chain_without_documents_says_it_does_not_know_without_the_model():
    llm = CountingLLM(responses=["made up"])
    assert build_docs_qa_chain(get_prompt("chatml"), llm).invoke({"context": [], "question": "Who?"}) == NO_CONTEXT_ANSWER
    assert llm.calls == 0


def test_docs_qa_chain_says_what_the_documents_never_mention_without_the_model():
    llm = CountingLLM(responses=["made up"])
    context = [Document("weak match", metadata={"unmentioned": ["LFS", "pool_mode"]}), doc("another")]
    answer = build_docs_qa_chain(get_prompt("chatml"), llm).invoke({"context": context, "question": "LFS and pool_mode?"})
    assert answer == unmentioned_answer(["LFS", "pool_mode"]) == "I don't know: the indexed documents never mention “LFS”, “pool_mode”."
    assert llm.calls == 0


def test_docs_qa_chain_puts_numbered_docs_and_question_in_the_prompt():
    chain = build_docs_qa_chain(get_prompt("chatml"), EchoLLM())
    prompt = chain.invoke({"context": [doc("The lamp was lit in 1871.", title="Lighthouse")], "question": "When?"})
    assert "[1] Lighthouse\nThe lamp was lit in 1871." in prompt
    assert "Question: When?<|im_end|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_the_best_chunk_can_be_printed_nearest_the_question_and_keeps_number_one():
    docs = [doc("best passage", title="A"), doc("second passage", title="B")]
    last = build_docs_qa_chain(get_prompt("chatml"), EchoLLM(), best_last=True).invoke({"context": docs, "question": "Which?"})
    assert last.index("[2] B\nsecond passage") < last.index("[1] A\nbest passage") < last.index("Question: Which?")
    first = build_docs_qa_chain(get_prompt("chatml"), EchoLLM()).invoke({"context": docs, "question": "Which?"})
    assert first.index("[1] A\nbest passage") < first.index("[2] B\nsecond passage")
    assert format_context(docs) == format_docs(docs)


def test_retrieval_qa_returns_answer_and_sources_and_streams_tokens():
    sources = [doc("one", "a.md"), doc("two", "b.md")]
    retriever = RunnableLambda(lambda question: sources)
    chain = build_retrieval_qa_chain(retriever, get_prompt("generic"), FakeStreamingListLLM(responses=["It is one [1]."]))
    result = chain.invoke("which?")
    assert result["answer"] == "It is one [1]."
    assert result["context"] == sources and result["question"] == "which?" and result["budget"] is None
    answer_chunks = [chunk["answer"] for chunk in chain.stream("which?") if "answer" in chunk]
    assert len(answer_chunks) > 1 and "".join(answer_chunks) == "It is one [1]."


# --- retrieval QA within a budget -----------------------------------------------------------------


def test_retrieval_qa_with_budget_records_what_was_cut():
    docs = [doc(words(100, f"d{n}x"), source=f"s{n}") for n in range(4)]
    chain = build_retrieval_qa_chain(
        RunnableLambda(lambda q: docs), get_prompt("generic"), EchoLLM(), ContextBudget(count_words, 300, 100)
    )
    result = chain.invoke("q?")
    assert result["budget"].dropped and count_words(result["answer"]) <= 200
    assert len(result["context"]) == result["budget"].kept


# --- summarization --------------------------------------------------------------------------------


def test_stuff_chain_is_format_prompt_llm_parser():
    prompt = build_stuff_chain(get_prompt("generic", "summarize"), EchoLLM()).invoke([doc("alpha", title="A")])
    assert "Summarize the main themes in these retrieved docs" in prompt and "[1] A\nalpha" in prompt


def test_summarize_stuffs_when_it_fits():
    llm = CountingLLM(responses=["Short summary [1]."])
    chain = build_summarize_chain(SummarizePrompts.for_family("chatml"), llm, ContextBudget(count_words, 2000, 100))
    result = chain.invoke([doc(words(50)), doc(words(50))])
    assert (result["method"], result["groups"], result["calls"], llm.calls) == ("stuff", 1, 1, 1)
    assert result["summary"] == "Short summary [1]." and len(result["docs"]) == 2


def test_summarize_map_reduces_when_it_does_not_fit_with_citations_numbered_across_parts():
    docs = [doc(words(100, f"d{n}x"), source=f"s{n}") for n in range(4)]
    prompts_seen: list[str] = []
    responses = iter(["part one [1]", "part two [3]", "final [1][3]"])

    def fake_llm(prompt_value):
        prompts_seen.append(prompt_value.to_string())
        return next(responses)

    budget = ContextBudget(count_words, 400, 100)
    result = build_summarize_chain(SummarizePrompts.for_family("generic"), RunnableLambda(fake_llm), budget).invoke(docs)
    assert (result["method"], result["groups"], result["calls"]) == ("map_reduce", 2, 3)
    assert result["summary"] == "final [1][3]" and result["partials"] == ["part one [1]", "part two [3]"]
    assert "[1] T\nd0x0" in prompts_seen[0] and "[3] T\nd2x0" in prompts_seen[1], "numbering continues across map groups"
    assert "part one [1]\n\npart two [3]" in prompts_seen[2]
    assert all(count_words(prompt) <= budget.limit for prompt in prompts_seen)


def test_summarize_collapses_partials_that_do_not_fit_one_reduce():
    docs = [doc(words(200, f"d{n}x"), source=f"s{n}") for n in range(6)]
    long_partial = words(90, "p")
    llm = CountingLLM(responses=[long_partial] * 20)
    budget = ContextBudget(count_words, 400, 100)
    result = build_summarize_chain(SummarizePrompts.for_family("generic"), llm, budget).invoke(docs)
    assert result["method"] == "map_reduce"
    assert result["calls"] == llm.calls > result["groups"] + 1, "an extra collapse round ran"


def test_summarize_streams_the_final_call():
    chain = build_summarize_chain(SummarizePrompts.for_family("chatml"), FakeStreamingListLLM(responses=["A summary."]))
    chunks = [chunk["summary"] for chunk in chain.stream([doc("x")]) if "summary" in chunk]
    assert len(chunks) > 1 and "".join(chunks) == "A summary."


# --- conversational QA ----------------------------------------------------------------------------


def test_first_question_is_used_as_is_without_a_condense_call():
    llm = CountingLLM(responses=["QuokkaDB is a database [1]."])
    seen = []
    retriever = RunnableLambda(lambda query: seen.append(query) or [doc("QuokkaDB is an embedded database.")])
    chain = build_conversational_qa_chain(retriever, get_prompt("chatml"), get_prompt("chatml", "condense"), llm)
    result = chain.invoke({"question": "What is QuokkaDB?", "history": []})
    assert seen == ["What is QuokkaDB?"] and llm.calls == 1
    assert result["asked"] == result["question"] == "What is QuokkaDB?" and result["condense"] == "as_asked"


def test_follow_up_is_rewritten_from_history_and_drives_retrieval():
    llm = FakeListLLM(responses=["Standalone question: What is the license of QuokkaDB?\nextra", "It is MIT [1]."])
    seen = []
    retriever = RunnableLambda(lambda query: seen.append(query) or [doc("QuokkaDB is MIT licensed.", "quokkadb.rst")])
    chain = build_conversational_qa_chain(retriever, get_prompt("chatml"), get_prompt("chatml", "condense"), llm)
    history = [HumanMessage("What is QuokkaDB?"), AIMessage("An embedded database.")]
    result = chain.invoke({"question": "And what about its license?", "history": history})
    assert seen == ["What is the license of QuokkaDB?"]
    assert result["asked"] == "And what about its license?" and result["condense"] == "rewrite"
    assert result["question"] == "What is the license of QuokkaDB?" and result["answer"] == "It is MIT [1]."


def test_a_rewrite_that_is_not_a_question_falls_back_to_previous_question_and_follow_up():
    llm = FakeListLLM(responses=["QuokkaDB is licensed under some license.", "MPL-2.0 [1]."])
    seen = []
    retriever = RunnableLambda(lambda query: seen.append(query) or [])
    chain = build_conversational_qa_chain(retriever, get_prompt("chatml"), get_prompt("chatml", "condense"), llm)
    history = [HumanMessage("What is QuokkaDB?"), AIMessage("An embedded database.")]
    result = chain.invoke({"question": "And its license?", "history": history})
    assert seen == ["What is QuokkaDB? And its license?"] == [result["question"]]
    assert result["condense"] == "fallback"


def test_fallback_uses_how_the_previous_turn_was_understood():
    llm = FakeListLLM(responses=["Port 7420.", "It listens on 7420 [1]."])
    chain = build_conversational_qa_chain(RunnableLambda(lambda q: []), get_prompt("chatml"), get_prompt("chatml", "condense"), llm)
    understood = "What is QuokkaDB? And its license?"
    history = [HumanMessage("And its license?", additional_kwargs={"standalone_question": understood}), AIMessage("MPL-2.0.")]
    result = chain.invoke({"question": "Which port does its server use?", "history": history})
    assert result["question"] == "What is QuokkaDB? Which port does its server use?" and result["condense"] == "fallback"


def test_condense_uses_its_own_llm_when_given():
    answers, rewrites = FakeListLLM(responses=["MPL-2.0 [1]."]), FakeListLLM(responses=["What is the license of QuokkaDB?"])
    chain = build_conversational_qa_chain(
        RunnableLambda(lambda q: [Document(page_content="QuokkaDB is MPL-2.0.")]), get_prompt("chatml"), get_prompt("chatml", "condense"), answers, condense_llm=rewrites
    )
    history = [HumanMessage("What is QuokkaDB?"), AIMessage("An embedded database.")]
    result = chain.invoke({"question": "And its license?", "history": history})
    assert (result["question"], result["condense"], result["answer"]) == ("What is the license of QuokkaDB?", "rewrite", "MPL-2.0 [1].")


def not_called(query: str) -> list[Document]:
    raise AssertionError("a question too long to answer was retrieved for")


@pytest.mark.parametrize("conversational", [False, True])
def test_question_too_long_for_the_context_is_refused_before_retrieval(conversational):
    budget = ContextBudget(count_words, n_ctx=300, answer_tokens=100)
    question = words(400)
    if conversational:
        chain = build_conversational_qa_chain(
            RunnableLambda(not_called), get_prompt("chatml"), get_prompt("chatml", "condense"), FakeListLLM(responses=["?"]), budget
        )
        run = lambda: chain.invoke({"question": question, "history": [HumanMessage("Hi?"), AIMessage("Hello.")]})  # noqa: E731
    else:
        chain = build_retrieval_qa_chain(RunnableLambda(not_called), get_prompt("chatml"), FakeListLLM(responses=["?"]), budget)
        run = lambda: chain.invoke(question)  # noqa: E731
    with pytest.raises(ContextOverflow, match=r"the question and its prompt take \d+ tokens, but only 200 fit"):
        run()


def test_condense_prompt_keeps_the_newest_history_that_fits():
    echo = EchoLLM(prompts=[])
    history = []
    for turn in range(6):
        history += [HumanMessage(f"question{turn} " + words(30)), AIMessage(f"answer{turn} " + words(30))]
    chain = build_conversational_qa_chain(
        RunnableLambda(lambda q: []), get_prompt("chatml"), get_prompt("chatml", "condense"), echo, ContextBudget(count_words, 400, 100)
    )
    chain.invoke({"question": "and then?", "history": history})
    condense_prompt = echo.prompts[0]
    assert "question5" in condense_prompt and "answer5" in condense_prompt
    assert "question0" not in condense_prompt
    assert count_words(condense_prompt) <= 300
