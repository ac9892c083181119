"""The scores of ``rag eval``, as pure functions: hit@k, MRR, fact recall, groundedness, don't-know, speed.

- retrieval: hit@k (an expected source among the top ``k`` chunks) and MRR (1/rank of
  the first chunk from an expected source, 0 when none is in the top ``k``);
- fact recall: the share of expected facts found in the answer (see :func:`find_facts`);
- groundedness: the share of answers that cite a passage they were given, with a
  valid ``[n]`` marker or by quoting it (see :func:`grounding`);
- don't-know rate: the share of unanswerable questions answered with "I don't know"
  or the like (see :func:`says_dont_know`);
- speed: time to first token and tokens per second (medians over the questions);
- failures: answers that raised an error, and runs whose model or prompt could not load.

Example::

    from rag.eval.metrics import contains_phrase, says_dont_know
    contains_phrase("It was first lit in 1887.", "1887")   # True
    says_dont_know("The context does not mention it.")     # True
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.citations import marker_numbers
from rag.eval.questions import EvalQuestion, Facts
from rag.eval.report import AnswerResult, RetrievalResult, RunMetrics
from rag.sources import is_url

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.documents import Document

    from rag.answer import Answer, Source

QUOTE_WORDS = 6
"""An answer quotes a passage when it shares this many consecutive words with it."""


def _normalize(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u00a0", " ")
    return " ".join(text.lower().split())


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text``: case and spacing ignored, starting on a word boundary.

    A phrase ending in a digit must also end on one ("22" is not found in "220" or "2022");
    otherwise it may run on ("Sunday" is found in "Sundays").
    """
    phrase = _normalize(phrase)
    pattern = re.escape(phrase)
    if phrase[:1].isalnum():
        pattern = r"(?<![^\W_])" + pattern
    if phrase[-1:].isdigit():
        pattern += r"(?!\d)"
    return re.search(pattern, _normalize(text)) is not None


def find_facts(facts: Facts, answer: str) -> tuple[list[str], list[str]]:
    """The facts found in ``answer`` and those missing (an unmet ``any_of`` reads ``a | b``)."""
    found = [fact for fact in facts.all_of if contains_phrase(answer, fact)]
    missing = [fact for fact in facts.all_of if fact not in found]
    if facts.any_of:
        hit = next((fact for fact in facts.any_of if contains_phrase(answer, fact)), None)
        if hit is None:
            missing.append(" | ".join(facts.any_of))
        else:
            found.append(hit)
    return found, missing


_DONT_KNOW = re.compile(
    r"\b(?:"
    r"(?:do not|don't|dont|does not|doesn't|did not|didn't) (?:know|say|mention|contain|provide|specify|state|include|give)"
    r"|not (?:sure|known|mentioned|provided|specified|stated|given|included|available|found|clear)"
    r"|no (?:information|mention|answer|data|details|record)"
    r"|(?:cannot|can't|can not|unable to|could not|couldn't) (?:find|answer|determine|tell|say|know)"
    r"|there is nothing"
    r"|unknown"
    r")\b"
)


def says_dont_know(answer: str) -> bool:
    """Whether the answer declines: "I don't know", "the context does not mention ...", "no information", ..."""
    return _DONT_KNOW.search(_normalize(answer)) is not None


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", _normalize(text))


def grounding(answer: str, sources: Sequence[Source], quote_words: int = QUOTE_WORDS) -> str | None:
    """How the answer is tied to the passages it was given, best first.

    ``"citation"``: it cites a passage with a marker that exists (``[2]`` when at least two
    were given); ``"quote"``: it shares ``quote_words`` consecutive words with a passage;
    ``None``: neither (a marker that points at no passage does not count).
    """
    numbers = marker_numbers(answer)
    if any(1 <= number <= len(sources) for number in numbers):
        return "citation"
    words = _words(answer)
    if len(words) < quote_words:
        return None
    grams = {tuple(words[start : start + quote_words]) for start in range(len(words) - quote_words + 1)}
    for source in sources:
        passage = _words(source.chunk)
        if any(tuple(passage[start : start + quote_words]) in grams for start in range(len(passage) - quote_words + 1)):
            return "quote"
    return None


def source_matches(expected: str, source: str, title: str = "") -> bool:
    """Whether an indexed chunk's ``source`` (or ``title``) is the expected source.

    ``expected`` matches the full source, any path or URL ending with ``/expected``, or the title.
    """
    expected = expected.strip()
    tail = expected if is_url(expected) else expected.lstrip("./")
    return source == expected or source.endswith("/" + tail) or (bool(title) and title.strip().lower() == expected.lower())


def score_retrieval(question: EvalQuestion, hits: Sequence[tuple[Document, float]]) -> RetrievalResult:
    """Where the first chunk from an expected source ranks among ``hits`` (best first)."""
    retrieved = [
        {"source": str(doc.metadata.get("source", "")), "title": str(doc.metadata.get("title", "")), "score": round(float(score), 4)}
        for doc, score in hits
    ]
    rank = None
    if question.sources:
        rank = next(
            (
                number
                for number, item in enumerate(retrieved, start=1)
                if any(source_matches(expected, item["source"], item["title"]) for expected in question.sources)
            ),
            None,
        )
    return RetrievalResult(question.id, list(question.sources), retrieved, rank)


def score_answer(question: EvalQuestion, answer: Answer, tokens: int, ttft: float | None, seconds: float, decode: float | None) -> AnswerResult:
    """Score one answer against its question (facts, grounding, don't-know) and record its timing."""
    text = answer.answer
    found, missing = find_facts(question.facts, text) if question.answerable else ([], [])
    count = question.facts.count
    return AnswerResult(
        id=question.id,
        answer=text,
        facts_found=found,
        facts_missing=missing,
        fact_recall=round(len(found) / count, 4) if question.answerable and count else None,
        grounding=grounding(text, answer.sources),
        dont_know=says_dont_know(text),
        ttft_s=None if ttft is None else round(ttft, 4),
        tokens=tokens,
        tokens_per_s=None if decode is None or decode <= 0 or tokens < 2 else round((tokens - 1) / decode, 2),
        seconds=round(seconds, 4),
        context_kept=len(answer.sources),
    )


def summarize_run(questions: Sequence[EvalQuestion], retrieval: Sequence[RetrievalResult], answers: Sequence[AnswerResult]) -> RunMetrics:
    """A run's metrics; a failed answer counts as a miss for every quality metric."""
    by_id = {answer.id: answer for answer in answers}
    answerable = [question for question in questions if question.answerable]
    unanswerable = [question for question in questions if not question.answerable]
    ranked = [result for result in retrieval if result.expected]

    def mean(values: list[float]) -> float | None:
        return round(statistics.fmean(values), 4) if values else None

    def ok(question: EvalQuestion) -> AnswerResult | None:
        answer = by_id.get(question.id)
        return answer if answer is not None and answer.error is None else None

    with_facts = [question for question in answerable if question.facts.count]
    fine = [answer for answer in answers if answer.error is None]
    return RunMetrics(
        questions=len(questions),
        hit_at_k=mean([1.0 if result.hit else 0.0 for result in ranked]),
        mrr=mean([result.reciprocal_rank for result in ranked]),
        fact_recall=mean([(ok(q).fact_recall or 0.0) if ok(q) else 0.0 for q in with_facts]),
        groundedness=mean([1.0 if ok(q) and ok(q).grounding else 0.0 for q in answerable]),
        dont_know_rate=mean([1.0 if ok(q) and ok(q).dont_know else 0.0 for q in unanswerable]),
        false_dont_know_rate=mean([1.0 if ok(q) and ok(q).dont_know else 0.0 for q in answerable]),
        ttft_s=_median([answer.ttft_s for answer in fine]),
        tokens_per_s=_median([answer.tokens_per_s for answer in fine]),
        failures=len(questions) - len(fine),
    )


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 4) if present else None
