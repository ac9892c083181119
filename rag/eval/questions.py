"""The question file of ``rag eval``: its schema (:class:`EvalQuestion`, :class:`Facts`) and its parser.

Example::

    from rag.eval import load_questions
    questions = load_questions("data/questions.yaml").select(["lighthouse-first-lit"])
    questions.questions[0].facts.all_of   # ("1887",)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from rag.errors import RagError
from rag.sources import is_url


class QuestionFileError(RagError, ValueError):
    """The question file cannot be read or does not follow the format."""


@dataclass(frozen=True)
class Facts:
    """What a good answer contains: every phrase of ``all_of``, and at least one of ``any_of``.

    Each ``all_of`` phrase is one fact; ``any_of`` is one more fact with alternative wordings.
    """

    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.all_of) + (1 if self.any_of else 0)


@dataclass(frozen=True)
class EvalQuestion:
    """One question of a question file."""

    id: str
    question: str
    sources: tuple[str, ...] = ()
    facts: Facts = Facts()
    answerable: bool = True

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "answerable": self.answerable,
            "sources": list(self.sources),
            "facts": {"all_of": list(self.facts.all_of), "any_of": list(self.facts.any_of)},
        }


@dataclass(frozen=True)
class QuestionSet:
    """The questions of a question file, and the corpus it is about (paths, resolved)."""

    questions: tuple[EvalQuestion, ...]
    corpus: tuple[str, ...] = ()
    path: Path | None = None

    def select(self, ids: Iterable[str]) -> QuestionSet:
        """The questions with these ids, in the order given (to evaluate a few quickly)."""
        by_id = {question.id: question for question in self.questions}
        wanted = list(ids)
        unknown = [item for item in wanted if item not in by_id]
        if unknown:
            raise QuestionFileError(f"no question with id {', '.join(map(repr, unknown))}; known: {', '.join(by_id)}")
        return replace(self, questions=tuple(by_id[item] for item in wanted))


_QUESTION_KEYS = {"id", "question", "sources", "facts", "answerable"}
_SCALARS = (str, int, float, datetime.date)  # what a phrase, source or id may be written as (bool is an int)
_FACT_KEYS = {"all_of", "any_of"}


def load_questions(path: str | os.PathLike) -> QuestionSet:
    """Read a question file.

    The file is a mapping with ``questions`` (a list) and an optional ``corpus`` (paths
    or URLs, relative to the file). Each question has ``question`` and optionally ``id``
    (default ``q1``, ``q2``, ...), ``sources`` (file names, paths or URLs of the sources
    that hold the answer; a path matches any indexed source ending with it), ``facts``
    (``all_of``/``any_of`` lists of phrases, or a plain list meaning ``all_of``) and
    ``answerable`` (``false``: the corpus has no answer, a good answer says it does not know).

    Raises:
        QuestionFileError: the file is missing, is not YAML, or breaks the format; the message names the question.
    """
    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise QuestionFileError(f"question file not found: {path}") from error
    except (yaml.YAMLError, ValueError, RecursionError) as error:  # ValueError: not UTF-8, or an int beyond 4,300 digits
        raise QuestionFileError(f"{path} is not valid YAML: {error}") from error
    except OSError as error:
        raise QuestionFileError(f"cannot read question file {path}: {error.strerror or error}") from error
    if isinstance(raw, list):
        raw = {"questions": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list) or not raw["questions"]:
        raise QuestionFileError(f"{path}: expected a mapping with a non-empty `questions:` list (see the README, `rag eval`)")
    unknown = set(raw) - {"questions", "corpus"}
    if unknown:
        raise QuestionFileError(f"{path}: unknown top-level keys {sorted(map(str, unknown))}; expected `questions` and `corpus`")
    questions = tuple(_parse_question(item, number, path) for number, item in enumerate(raw["questions"], start=1))
    ids = [question.id for question in questions]
    duplicates = sorted({item for item in ids if ids.count(item) > 1})
    if duplicates:
        raise QuestionFileError(f"{path}: duplicate question ids {duplicates}")
    corpus = tuple(_resolve_corpus_item(str(item), path) for item in _as_list(raw.get("corpus"), "corpus", path))
    return QuestionSet(questions, corpus, path)


def _parse_question(item: Any, number: int, path: Path) -> EvalQuestion:
    where = f"{path}: question {number}"
    if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
        raise QuestionFileError(f"{where}: each item needs a `question:` text")
    unknown = set(item) - _QUESTION_KEYS
    if unknown:
        raise QuestionFileError(f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_QUESTION_KEYS)}")
    if not isinstance(item.get("id"), (*_SCALARS, type(None))):
        raise QuestionFileError(f"{where}: `id` must be a text")
    question_id = str(item.get("id") or f"q{number}")
    where = f"{path}: question {question_id!r}"
    answerable = item.get("answerable", True)
    if not isinstance(answerable, bool):
        raise QuestionFileError(f"{where}: `answerable` must be true or false")
    facts = _parse_facts(item.get("facts"), where)
    sources = tuple(str(source) for source in _as_list(item.get("sources"), "sources", where))
    if not answerable and facts.count:
        raise QuestionFileError(f"{where}: an unanswerable question (`answerable: false`) cannot expect facts")
    if answerable and not facts.count and not sources:
        raise QuestionFileError(f"{where}: nothing to score: give `sources`, `facts`, or mark it `answerable: false`")
    return EvalQuestion(question_id, item["question"].strip(), sources, facts, answerable)


def _parse_facts(raw: Any, where: str) -> Facts:
    if raw is None:
        return Facts()
    if isinstance(raw, (list, str)):
        raw = {"all_of": raw}
    if not isinstance(raw, dict) or set(raw) - _FACT_KEYS:
        raise QuestionFileError(f"{where}: `facts` must be a list of phrases or a mapping with `all_of` and/or `any_of`")
    all_of = tuple(str(fact) for fact in _as_list(raw.get("all_of"), "facts.all_of", where))
    any_of = tuple(str(fact) for fact in _as_list(raw.get("any_of"), "facts.any_of", where))
    if any(not fact.strip() for fact in (*all_of, *any_of)):
        raise QuestionFileError(f"{where}: empty fact")
    return Facts(all_of, any_of)


def _as_list(value: Any, name: str, where: Any) -> list:
    """``value`` as a list of texts and numbers (a lone one is a list of one); ``None`` is an empty list."""
    if value is None:
        return []
    if isinstance(value, _SCALARS):
        return [value]
    if isinstance(value, list) and all(isinstance(item, _SCALARS) for item in value):
        return value
    raise QuestionFileError(f"{where}: `{name}` must be a text or a list of texts")


def _resolve_corpus_item(item: str, path: Path) -> str:
    if is_url(item):
        return item
    try:
        return str((path.parent / Path(item).expanduser()).resolve())
    except (OSError, RuntimeError, ValueError) as error:  # "~nosuchuser", a symlink loop, a NUL byte
        raise QuestionFileError(f"{path}: corpus entry {item!r} is not a usable path: {error}") from error
