"""Context budgeting (rag.budget): keep the best-ranked chunks, trim the next, drop the rest; pack groups for map-reduce."""

from __future__ import annotations

import random
from typing import Any

import pytest
from langchain_core.documents import Document

from rag.budget import ContextBudget, ContextOverflow
from rag.chains import format_docs
from rag.prompts import get_prompt


def count_words(text: str) -> int:
    """A stand-in tokenizer: one token per word, plus one like a BOS."""
    return len(text.split()) + 1


def doc(text: str, source: str = "s", title: str = "T", **meta: Any) -> Document:
    return Document(page_content=text, metadata={"source": source, "title": title, **meta})


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def render_with(prompt_name: str = "generic", question: str = "q?"):
    prompt = get_prompt(prompt_name)
    return lambda docs: prompt.format(context=format_docs(docs), question=question)


def test_budget_keeps_best_ranked_trims_next_and_drops_the_rest():
    docs = [doc(words(100, f"d{n}x"), source=f"s{n}") for n in range(5)]
    budget = ContextBudget(count_words, n_ctx=400, answer_tokens=100)
    kept, report = budget.fit(docs, render_with())
    assert [d.metadata["source"] for d in kept] == ["s0", "s1", "s2"]
    assert kept[2].metadata.get("trimmed") and kept[2].page_content in docs[2].page_content
    assert len(kept[2].page_content) < len(docs[2].page_content)
    assert report.trimmed == ["s2"] and report.dropped == ["s3", "s4"]
    assert report.prompt_tokens == count_words(render_with()(kept)) <= 300 == report.limit


def test_budget_drops_rather_than_keeping_a_useless_sliver():
    budget = ContextBudget(count_words, 400, 100, min_trim_tokens=32)
    room = budget.limit - count_words(render_with()([doc("")]))
    docs = [doc(words(room - 20), source="big"), doc(words(50), source="next")]
    kept, report = budget.fit(docs, render_with())
    assert [d.metadata["source"] for d in kept] == ["big"] and report.dropped == ["next"] and not report.trimmed


def test_budget_never_exceeds_the_limit():
    rng = random.Random(7)
    for _ in range(30):
        docs = [doc(words(rng.randint(1, 200), f"r{n}x"), source=f"s{n}") for n in range(rng.randint(0, 8))]
        budget = ContextBudget(count_words, n_ctx=rng.randint(150, 600), answer_tokens=rng.randint(10, 100))
        kept, report = budget.fit(docs, render_with())
        assert count_words(render_with()(kept)) <= budget.limit
        assert report.kept + len(report.dropped) == len(docs)


def test_question_longer_than_the_context_is_a_clear_error():
    budget = ContextBudget(count_words, n_ctx=200, answer_tokens=50)
    with pytest.raises(ContextOverflow, match=r"question .* take \d+ tokens, but only 150 fit"):
        budget.fit([doc("x")], render_with(question=words(300)))


def test_pack_groups_in_order_within_the_limit_and_splits_long_documents():
    docs = [doc(words(40, "a"), "a"), doc(words(500, "b"), "b"), doc(words(30, "c"), "c")]
    budget = ContextBudget(count_words, n_ctx=300, answer_tokens=100)
    render = render_with()
    groups = budget.pack(docs, render)
    assert all(count_words(render(group)) <= budget.limit for group in groups)
    flat = [d for group in groups for d in group]
    assert " ".join(d.page_content for d in flat).split() == " ".join(d.page_content for d in docs).split()
    parts = [d.metadata.get("part") for d in flat if d.metadata["source"] == "b"]
    assert parts == list(range(1, len(parts) + 1)) and len(parts) >= 3


def test_the_budget_of_an_llm_is_its_counter_context_and_answer_tokens():
    from langchain_core.language_models import FakeListLLM

    from rag.llm import LocalLLM

    budget = ContextBudget.from_llm(LocalLLM(FakeListLLM(responses=["x"]), "fake", "m.gguf", "chatml", 1024, 100, count_words))
    assert (budget.n_ctx, budget.answer_tokens, budget.limit) == (1024, 100, 924)
    assert budget.fits(words(923)) and not budget.fits(words(924))
