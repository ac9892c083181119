"""rag.eval.metrics: phrases and facts, don't-know, grounding, source matching and retrieval rank."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from rag.answer import Source
from rag.eval.metrics import contains_phrase, find_facts, grounding, says_dont_know, score_retrieval, source_matches
from rag.eval.questions import Facts, load_questions
from tests.eval.conftest import SAMPLE_QUESTIONS


@pytest.mark.parametrize(
    ("text", "phrase", "found"),
    [
        ("It was first lit in 1887.", "1887", True),
        ("Seen from 220 miles", "22", False),
        ("In 2022 it", "22", False),
        ("Closed on Sundays", "sunday", True),
        ("team  HELIOTROPE won", "Heliotrope", True),
        ("the Mozilla Public\nLicense 2.0", "mozilla public license", True),
        ("It uses MPL-2.0.", "MPL-2.0", True),
        ("reheliotrope", "Heliotrope", False),
    ],
)
def test_contains_phrase(text, phrase, found):
    assert contains_phrase(text, phrase) is found


def test_find_facts_counts_any_of_as_one_fact():
    facts = Facts(all_of=("1887", "Olsen"), any_of=("14 March", "March 14"))
    assert find_facts(facts, "First lit on March 14, 1887.") == (["1887", "March 14"], ["Olsen"])
    assert find_facts(facts, "No idea.") == ([], ["1887", "Olsen", "14 March | March 14"])


@pytest.mark.parametrize(
    ("answer", "declines"),
    [
        ("I don't know.", True),
        ("I don\u2019t know based on the context.", True),
        ("The context does not mention the 2023 race.", True),
        ("There is no information about the population.", True),
        ("I cannot find the price in the passages.", True),
        ("The winner is not mentioned.", True),
        ("Team Heliotrope won the race [1].", False),
        ("The population of Arran Bay is 1,205,378.", False),
    ],
)
def test_says_dont_know(answer, declines):
    assert says_dont_know(answer) is declines


def source(number: int, chunk: str) -> Source:
    return Source(number=number, source=f"/docs/{number}.md", title=f"doc {number}", score=0.5, chunk=chunk)


def test_grounding_by_citation_quote_or_not_at_all():
    passages = [source(1, "It was first lit on 14 March 1887 and is 31 metres tall."), source(2, "Other text.")]
    assert grounding("It was lit in 1887 [1].", passages) == "citation"
    assert grounding("It was lit in 1887 [2, 5].", passages) == "citation"
    assert grounding("It was lit in 1887 [3].", passages) is None, "a marker pointing at no passage does not count"
    assert grounding("The lighthouse: it was first lit on 14 March 1887.", passages) == "quote"
    assert grounding("It was first lit in 1920 by sailors.", passages) is None


def test_source_matches_paths_urls_and_titles():
    assert source_matches("quokkadb.rst", "/home/me/data/quokkadb.rst")
    assert source_matches("data/quokkadb.rst", "/home/me/data/quokkadb.rst")
    assert not source_matches("db.rst", "/home/me/data/quokkadb.rst")
    assert source_matches("https://example.org/a", "https://example.org/a")
    assert source_matches("QuokkaDB", "/x/y.rst", title="QuokkaDB")


def test_retrieval_rank_and_reciprocal_rank():
    question = load_questions(SAMPLE_QUESTIONS).select(["quokkadb-port"]).questions[0]
    hits = [(Document("a", metadata={"source": f"/d/{name}"}), 0.9 - n / 10) for n, name in enumerate(["x.md", "quokkadb.rst", "quokkadb.rst"])]
    result = score_retrieval(question, hits)
    assert (result.rank, result.hit, result.reciprocal_rank) == (2, True, 0.5)
    assert score_retrieval(question, hits[:1]).reciprocal_rank == 0.0
