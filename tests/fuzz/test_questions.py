"""Fuzzing rag.eval.questions.load_questions: any file gives questions or one QuestionFileError, never another exception."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from rag.eval.questions import QuestionFileError, QuestionSet, load_questions

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.dates(),
    st.sampled_from(["q1", "~nosuchuser-rag/x", "a\x00b", "https://example.org/page", "", "   "]),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4), max_leaves=12)
SCALARS = (str, int, float, datetime.date)  # what a phrase, a source or a corpus entry may be written as
question = st.fixed_dictionaries(
    {"question": st.text(max_size=30) | values},
    optional={
        "id": scalars | values,
        "sources": values,
        "facts": values | st.fixed_dictionaries({}, optional={"all_of": values, "any_of": values}),
        "answerable": st.booleans() | scalars,
        "extra": scalars,
        7: scalars,
    },
)
question_file = st.one_of(
    st.fixed_dictionaries({"questions": st.lists(question, max_size=5)}, optional={"corpus": values, "other": scalars}),
    st.lists(question, max_size=5),
    values,
)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _load(folder: Path, raw: bytes) -> QuestionSet | None:
    path = folder / "questions.yaml"
    path.write_bytes(raw)
    try:
        questions = load_questions(path)
    except QuestionFileError as error:
        assert str(path) in str(error), "the error names the file"
        return None
    assert questions.questions, "a question set is never empty"
    ids = [item.id for item in questions.questions]
    assert len(set(ids)) == len(ids) and all(isinstance(item, str) for item in ids)
    for item in questions.questions:
        assert isinstance(item.question, str) and item.question.strip()
        assert all(isinstance(source, str) for source in item.sources)
        assert all(isinstance(fact, str) and fact.strip() for fact in (*item.facts.all_of, *item.facts.any_of))
        assert item.answerable or not item.facts.count
    assert all(isinstance(entry, str) for entry in questions.corpus)
    return questions


@given(data=question_file)
@example(data={"questions": [{"question": "Q?", "sources": ["a"]}], "corpus": ["~nosuchuser-rag/x"]})  # RuntimeError from expanduser
@example(data={"questions": [{"question": "Q?", "sources": ["a"]}], "corpus": ["a\x00b"]})  # ValueError: embedded null byte
@example(data={"questions": [{"question": "Q?", "sources": ["a"], 7: "x", "b": "y"}]})  # sorted() of int and str keys: TypeError
@example(data={"questions": [{"question": "Q?", "facts": [None, {"a": 1}]}]})  # None and a mapping were taken as phrases
def test_generated_question_files_load_or_fail_cleanly(folder, data):
    if _load(folder, yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8")) is None:
        return
    entries = data if isinstance(data, list) else data["questions"]
    given_lists = [data.get("corpus")] if isinstance(data, dict) else []
    for entry in entries:
        facts = entry.get("facts")
        given_lists += [entry.get("sources"), *(facts.values() if isinstance(facts, dict) else [facts])]
    for value in given_lists:
        items = value if isinstance(value, list) else [value]
        assert value is None or all(isinstance(item, SCALARS) for item in items), f"{value!r} was taken for phrases or paths"


@given(text=st.text(max_size=400))
@example(text="[" * 1200)  # PyYAML nests recursively: RecursionError
@example(text="questions: [{question: Q?, sources: " + "1" * 5000 + "}]")  # int() beyond 4300 digits: ValueError
@example(text="- question: Q?\n  sources: [a]\n  id: !!binary aGVsbG8=\n")  # bytes: the id was "b'hello'"
def test_any_yaml_text_loads_or_fails_cleanly(folder, text):
    _load(folder, text.encode("utf-8"))


@given(raw=st.binary(max_size=200))
@example(raw=b"questions:\n- question: caf\xe9?\n")  # latin-1, not UTF-8: UnicodeDecodeError
def test_any_bytes_load_or_fail_cleanly(folder, raw):
    _load(folder, raw)

