"""Evaluate retrieval and answers on your own documents: models x prompts, side by side.

A question file (YAML, see :func:`load_questions` and the README) lists questions with
the sources that hold their answers and the facts a good answer contains; questions
marked ``answerable: false`` have no answer in the corpus. :func:`run_eval` retrieves
once per question (the store and embedder are the same for every run), then answers
every question with each model and prompt from those same chunks, and scores:

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

    from rag.eval import run_eval
    report = run_eval("data/questions.yaml", models=["default", "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"],
                      prompts=["chatml", "rlm/rag-prompt"])
    print(report.to_table())
    report.write("eval-out/")      # eval.md, eval.json and eval.png
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.answer import Answer, Assistant, Source
from rag.citations import marker_numbers
from rag.embed import embedder_id
from rag.errors import RagError
from rag.eval_report import AnswerResult, EvalReport, RetrievalResult, RunMetrics, RunResult
from rag.llm import LocalLLM, load_llm
from rag.load import is_url
from rag.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
"""The model name that means "the configured model" (``Settings.llm_model``, else SmolLM2)."""

QUOTE_WORDS = 6
"""An answer quotes a passage when it shares this many consecutive words with it."""

LLMFactory = Callable[[Settings], LocalLLM]


class QuestionFileError(RagError, ValueError):
    """The question file cannot be read or does not follow the format."""


# --- the question file ------------------------------------------------------------------------------


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
    except yaml.YAMLError as error:
        raise QuestionFileError(f"{path} is not valid YAML: {error}") from error
    if isinstance(raw, list):
        raw = {"questions": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list) or not raw["questions"]:
        raise QuestionFileError(f"{path}: expected a mapping with a non-empty `questions:` list (see the README, `rag eval`)")
    unknown = set(raw) - {"questions", "corpus"}
    if unknown:
        raise QuestionFileError(f"{path}: unknown top-level keys {sorted(unknown)}; expected `questions` and `corpus`")
    questions = tuple(_parse_question(item, number, path) for number, item in enumerate(raw["questions"], start=1))
    ids = [question.id for question in questions]
    duplicates = sorted({item for item in ids if ids.count(item) > 1})
    if duplicates:
        raise QuestionFileError(f"{path}: duplicate question ids {duplicates}")
    corpus = tuple(_resolve_corpus_item(str(item), path.parent) for item in _as_list(raw.get("corpus"), "corpus", path))
    return QuestionSet(questions, corpus, path)


def _parse_question(item: Any, number: int, path: Path) -> EvalQuestion:
    where = f"{path}: question {number}"
    if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
        raise QuestionFileError(f"{where}: each item needs a `question:` text")
    unknown = set(item) - _QUESTION_KEYS
    if unknown:
        raise QuestionFileError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_QUESTION_KEYS)}")
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
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, list):
        return value
    raise QuestionFileError(f"{where}: `{name}` must be a list")


def _resolve_corpus_item(item: str, base: Path) -> str:
    if is_url(item):
        return item
    return str((base / Path(item).expanduser()).resolve())


# --- scoring ----------------------------------------------------------------------------------------


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


# --- running ----------------------------------------------------------------------------------------


def run_eval(
    questions: str | os.PathLike | QuestionSet,
    settings: Settings | None = None,
    models: Sequence[str] | None = None,
    prompts: Sequence[str | None] | None = None,
    *,
    ingest: Sequence[str | os.PathLike] | None = None,
    embeddings: Embeddings | None = None,
    llm_factory: LLMFactory | None = None,
    progress: bool = False,
) -> EvalReport:
    """Answer every question with every model x prompt and score them side by side.

    Retrieval runs once per question (``settings.k`` chunks from the configured store and
    collection) and every run answers from those same chunks, fitted to its context.

    Args:
        questions: a question file (see :func:`load_questions`) or a loaded :class:`QuestionSet`.
        settings: store, collection, ``k``, answer budget and model settings; default ``Settings()``.
        models: GGUF paths or file names in the models folder; ``"default"`` is the configured
            model. Default: ``["default"]``.
        prompts: prompt names or families (``chatml``, ``rlm/rag-prompt``, ``hub:OWNER/NAME``);
            ``None`` or ``"default"`` is the one detected from the model. Default: ``[None]``.
        ingest: paths or URLs to ingest first. Default: the question file's ``corpus``, and
            only when the collection is empty.
        embeddings: the embedder; default the configured one.
        llm_factory: loads a model from settings; default :func:`rag.llm.load_llm`.
        progress: show a progress bar on stderr.

    Returns:
        An :class:`rag.eval_report.EvalReport`. A model or prompt that cannot be loaded is a
        failed run (``run.error``); an answer that raises is a failed answer (``answer.error``).

    Raises:
        QuestionFileError: the question file is malformed.
        rag.store.EmptyStore: nothing is indexed and there is no corpus to ingest.
    """
    started = time.perf_counter()
    settings = settings or Settings()
    question_set = questions if isinstance(questions, QuestionSet) else load_questions(questions)
    model_specs = list(dict.fromkeys(models or [DEFAULT_MODEL]))
    prompt_specs = list(dict.fromkeys(None if prompt in (None, "", "default") else prompt for prompt in (prompts or [None])))
    if embeddings is None:
        from rag.embed import load_embeddings

        embeddings = load_embeddings(settings)

    report = EvalReport(
        questions_file=str(question_set.path) if question_set.path else None,
        store=str(settings.store_path),
        collection=settings.collection,
        embedder=embedder_id(embeddings),
        k=settings.k,
        max_tokens=settings.max_tokens,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        questions=[question.to_dict() for question in question_set.questions],
    )
    report.ingested = _prepare_store(question_set, settings, embeddings, ingest, report.warnings)
    report.warnings += _unindexed_sources(question_set, settings)

    contexts: dict[str, list[Document]] = {}
    for question in question_set.questions:
        contexts[question.id], result = _retrieve(question, settings, embeddings)
        report.retrieval.append(result)

    bar = _progress_bar(len(model_specs) * len(prompt_specs) * len(question_set.questions), progress)
    try:
        for model in model_specs:
            for prompt in prompt_specs:
                run = _run_one(model, prompt, question_set, contexts, settings, embeddings, llm_factory or load_llm, bar)
                run.metrics = summarize_run(question_set.questions, report.retrieval, run.answers)
                if run.error:
                    run.metrics.failures = len(question_set.questions)
                report.runs.append(run)
    finally:
        bar.close()
    report.seconds = round(time.perf_counter() - started, 3)
    logger.info("eval: %d questions x %d runs in %.1f s", len(question_set.questions), len(report.runs), report.seconds)
    return report


def _prepare_store(
    question_set: QuestionSet, settings: Settings, embeddings: Embeddings, paths: Sequence[str | os.PathLike] | None, warnings: list[str]
) -> dict | None:
    """Ingest ``paths``, or the question file's corpus when the collection is empty."""
    from rag.indexing import ingest
    from rag.store import open_collection

    if not paths:
        collection = open_collection(settings, create=False)
        if collection is not None and collection.count() > 0:
            return None
        paths = question_set.corpus
        if not paths:
            return None  # retrieval raises EmptyStore, with the fix
    report = ingest([os.fspath(path) for path in paths], settings, embeddings)
    warnings += [f"could not ingest {failure.source}: {failure.reason}" for failure in report.failures]
    return {
        "inputs": [os.fspath(path) for path in paths],
        "sources": report.sources,
        "chunks_added": report.chunks_added,
        "chunks": report.chunks,
        "failed": len(report.failures),
    }


def _unindexed_sources(question_set: QuestionSet, settings: Settings) -> list[str]:
    from rag.indexing import list_sources

    entries = list_sources(settings)
    expected = dict.fromkeys(source for question in question_set.questions for source in question.sources)
    return [
        f"expected source {source!r} is not indexed in collection {settings.collection!r}: it can never be retrieved "
        "(ingest it, or fix the name in the question file)"
        for source in expected
        if not any(source_matches(source, entry.source, entry.title or "") for entry in entries)
    ]


def _retrieve(question: EvalQuestion, settings: Settings, embeddings: Embeddings) -> tuple[list[Document], RetrievalResult]:
    from rag.indexing import search

    hits = search(question.question, settings.k, settings, embeddings)  # the retrieval of `rag ask`
    return [doc for doc, _ in hits], score_retrieval(question, hits)


def _run_one(
    model: str,
    prompt: str | None,
    question_set: QuestionSet,
    contexts: dict[str, list[Document]],
    settings: Settings,
    embeddings: Embeddings,
    llm_factory: LLMFactory,
    bar: Any,
) -> RunResult:
    run_settings = settings.with_overrides(llm_model=None if model == DEFAULT_MODEL else model, prompt=prompt)
    run = RunResult(model=model, prompt=prompt or "default")
    try:
        local = llm_factory(run_settings)
        assistant = Assistant(run_settings, local_llm=local, embeddings=embeddings)
        _ = assistant.qa_prompt  # an unknown or unusable prompt fails the run here
    except RagError as error:
        logger.warning("eval: %s with prompt %s cannot run: %s", model, prompt or "default", error)
        run.error = str(error)
        bar.update(len(question_set.questions))
        return run
    run.model, run.backend, run.prompt_name = local.model_name, local.backend, assistant.prompt_name
    for question in question_set.questions:
        run.answers.append(_answer_one(assistant, local, question, contexts[question.id]))
        bar.update(1)
    return run


def _answer_one(assistant: Assistant, local: LocalLLM, question: EvalQuestion, docs: list[Document]) -> AnswerResult:
    """Answer and score one question; an error (the backend failing, even while counting tokens) is a failed answer."""
    started = time.perf_counter()
    first: float | None = None
    answer: Answer | None = None
    try:
        for item in assistant.stream_from_docs(question.question, docs):
            if isinstance(item, Answer):
                answer = item
            elif item and first is None:
                first = time.perf_counter()
        finished = time.perf_counter()
        assert answer is not None
        # Generated tokens: the answer's count less what the tokenizer adds to any text (BOS).
        tokens = max(0, local.count_tokens(answer.answer) - local.count_tokens("")) if answer.answer else 0
    except RagError as error:
        logger.warning("eval: %s failed on %s: %s", local.model_name, question.id, error)
        return AnswerResult(id=question.id, error=str(error), seconds=round(time.perf_counter() - started, 4))
    ttft = None if first is None else first - started
    decode = None if first is None else finished - first
    return score_answer(question, answer, tokens, ttft, finished - started, decode)


class _NoBar:
    def update(self, _count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="answer", desc="eval", file=sys.stderr, dynamic_ncols=True)


def default_out_dir(settings: Settings) -> Path:
    """Where ``rag eval`` writes its report when no ``--out`` is given: ``DATA_DIR/evals/TIMESTAMP``."""
    return settings.data_dir / "evals" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


__all__ = [
    "DEFAULT_MODEL",
    "EvalQuestion",
    "EvalReport",
    "Facts",
    "QuestionFileError",
    "QuestionSet",
    "contains_phrase",
    "default_out_dir",
    "find_facts",
    "grounding",
    "load_questions",
    "run_eval",
    "says_dont_know",
    "source_matches",
]
