"""Running ``rag eval``: ingest if needed, retrieve once per question, answer with each model x prompt, time it.

Example::

    from rag.eval import run_eval
    report = run_eval("data/questions.yaml", models=["default", "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"],
                      prompts=["chatml", "rlm/rag-prompt"])
    print(report.to_table())
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.answer import Answer, Assistant
from rag.embed import embedder_id
from rag.errors import RagError
from rag.eval.metrics import score_answer, score_retrieval, source_matches, summarize_run
from rag.eval.questions import EvalQuestion, QuestionSet, load_questions
from rag.eval.report import AnswerResult, EvalReport, RetrievalResult, RunResult
from rag.llm import LocalLLM, load_local_llm
from rag.settings import Settings
from rag.store import utc_timestamp

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
"""The model name that means "the configured model" (``Settings.llm_model``, else SmolLM2)."""

LLMFactory = Callable[[Settings], LocalLLM]


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
        questions: a question file (see :func:`rag.eval.load_questions`) or a loaded :class:`QuestionSet`.
        settings: store, collection, ``k``, answer budget and model settings; default ``Settings()``.
        models: GGUF paths or file names in the models folder; ``"default"`` is the configured
            model. Default: ``["default"]``.
        prompts: prompt names or families (``chatml``, ``rlm/rag-prompt``, ``hub:OWNER/NAME``);
            ``None`` or ``"default"`` is the one detected from the model. Default: ``[None]``.
        ingest: paths or URLs to ingest first. Default: the question file's ``corpus``, and
            only when the collection is empty.
        embeddings: the embedder; default the configured one.
        llm_factory: loads a model from settings; default :func:`rag.llm.load_local_llm`.
        progress: show a progress bar on stderr.

    Returns:
        An :class:`rag.eval.EvalReport`. A model or prompt that cannot be loaded is a
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
        created=utc_timestamp(),
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
                run = _run_one(model, prompt, question_set, contexts, settings, embeddings, llm_factory or load_local_llm, bar)
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
