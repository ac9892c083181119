"""Evaluate retrieval and answers on your own documents: models x prompts, side by side (``rag eval``).

A question file (YAML, see :func:`load_questions` and the README) lists questions with
the sources that hold their answers and the facts a good answer contains; questions
marked ``answerable: false`` have no answer in the corpus. :func:`run_eval` retrieves
once per question, answers every question with each model and prompt from those same
chunks, and scores them (hit@k, MRR, fact recall, groundedness, don't-know, speed).

- :mod:`rag.eval.questions`: the question file's schema and parser;
- :mod:`rag.eval.metrics`: the scores, as pure functions;
- :mod:`rag.eval.runner`: :func:`run_eval`, the runs and their timing;
- :mod:`rag.eval.report`: :class:`EvalReport` as table, Markdown, JSON and chart.

Example::

    from rag.eval import run_eval
    report = run_eval("data/questions.yaml", models=["default", "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"],
                      prompts=["chatml", "rlm/rag-prompt"])
    print(report.to_table())
    report.write("eval-out/")      # eval.md, eval.json and eval.png
"""

from __future__ import annotations

from rag.eval.metrics import contains_phrase, find_facts, grounding, says_dont_know, source_matches
from rag.eval.questions import EvalQuestion, Facts, QuestionFileError, QuestionSet, load_questions
from rag.eval.report import AnswerResult, EvalReport, RetrievalResult, RunMetrics, RunResult, default_out_dir
from rag.eval.runner import DEFAULT_MODEL, run_eval

__all__ = [
    "DEFAULT_MODEL",
    "AnswerResult",
    "EvalQuestion",
    "EvalReport",
    "Facts",
    "QuestionFileError",
    "QuestionSet",
    "RetrievalResult",
    "RunMetrics",
    "RunResult",
    "contains_phrase",
    "default_out_dir",
    "find_facts",
    "grounding",
    "load_questions",
    "run_eval",
    "says_dont_know",
    "source_matches",
]
