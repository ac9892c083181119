"""rag.eval.questions: the question file's format, its shorthands and the mistakes it names."""

from __future__ import annotations

import pytest

from rag.eval.questions import Facts, QuestionFileError, load_questions
from tests.eval.conftest import DATA, SAMPLE_QUESTIONS, write_questions


def test_sample_question_file_covers_the_corpus_and_an_unanswerable_question():
    questions = load_questions(SAMPLE_QUESTIONS)
    assert questions.corpus == (str(DATA.resolve()),)
    unanswerable = [question for question in questions.questions if not question.answerable]
    assert unanswerable and all(not question.facts.count and not question.sources for question in unanswerable)
    files = {path.name for path in DATA.iterdir()}
    expected = {source for question in questions.questions for source in question.sources}
    assert expected <= files and expected == files - {"questions.yaml"}, "every document has a question, every source exists"
    assert all(question.facts.count for question in questions.questions if question.answerable)


def test_question_file_shorthands_and_defaults(tmp_path):
    path = write_questions(
        tmp_path,
        [
            {"question": "When was it lit?", "facts": ["1887", "March"], "sources": "lighthouse.md"},
            {"question": "Who won in 2023?", "answerable": False},
        ],
    )
    first, second = load_questions(path).questions
    assert (first.id, first.facts, first.sources) == ("q1", Facts(all_of=("1887", "March")), ("lighthouse.md",))
    assert (second.id, second.answerable) == ("q2", False)
    assert load_questions(path).corpus == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"questions": [{"question": "Q?", "fact": ["x"]}]}, r"unknown keys \['fact'\]"),
        ({"questions": [{"question": "Q?", "answerable": False, "facts": ["x"]}]}, "cannot expect facts"),
        ({"questions": [{"question": "Q?"}]}, "nothing to score"),
        ({"questions": [{"id": "a", "question": "Q?", "facts": ["x"]}, {"id": "a", "question": "R?", "facts": ["y"]}]}, "duplicate question ids"),
        ({"questions": [{"question": "Q?", "facts": {"one_of": ["x"]}}]}, "all_of"),
        ({"questions": []}, "non-empty `questions:` list"),
        ({"questions": [{"question": "Q?", "answerable": "no", "facts": ["x"]}]}, "true or false"),
    ],
)
def test_question_file_mistakes_are_named(tmp_path, data, message):
    with pytest.raises(QuestionFileError, match=message):
        load_questions(write_questions(tmp_path, data))


def test_missing_or_broken_question_file(tmp_path):
    with pytest.raises(QuestionFileError, match="not found"):
        load_questions(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("questions: [\n", encoding="utf-8")
    with pytest.raises(QuestionFileError, match="not valid YAML"):
        load_questions(broken)


def test_select_keeps_the_order_given_and_rejects_unknown_ids():
    questions = load_questions(SAMPLE_QUESTIONS)
    assert [q.id for q in questions.select(["quokkadb-port", "lighthouse-keeper"]).questions] == ["quokkadb-port", "lighthouse-keeper"]
    with pytest.raises(QuestionFileError, match="no question with id 'nope'"):
        questions.select(["nope"])
