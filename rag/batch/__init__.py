"""Batch summarization jobs: a cited summary per document and a corpus rollup; resumable and parallel.

:func:`summarize_batch` finds the documents under its inputs (files, folders, URLs,
or the sources of a store), summarizes each one (in one prompt when it fits the
context, map-reduce over its chunks otherwise), then combines the summaries into a
rollup that cites the documents. Everything lands in the output folder:

- ``summaries.jsonl``: one record per document: source, content hash, model, prompt,
  summary, its points with their citations (source, chunk, page), timing and tokens;
- ``rollup.json``, ``report.md`` (the rollup first, then each document) and ``report.json``;
- ``records/`` and ``manifest.json``: each finished summary under a key of (content hash,
  model, prompt, settings). A re-run reuses every record whose key still matches: an
  unchanged job makes no LLM call, and a changed document, model or prompt redoes
  only what it changes.

Every file is written atomically (a temporary file, then a rename). Ctrl-C stops the
job, keeps what is finished and raises :class:`BatchInterrupted`; running it again
finishes the rest. A document that cannot be loaded or summarized is recorded with
its reason and the job goes on. A server's error is an error, never a summary.

Work runs on ``workers`` threads: each drives its own llama.cpp server connection
(``servers``, or one server's parallel slots) or, for the in-process backends with
several workers, its own child process with its own copy of the model.

Example::

    from rag.batch import summarize_batch
    report = summarize_batch(["notes/", "https://example.org/"], "out/", workers=2)
    report.status      # "done", "partial" or "failed"
    report.failures    # [BatchFailure(source, stage, reason), ...]

The package, one module per part of the job:

- ``jobs``: the model a job runs, the settings its records share, their keys;
- ``documents``: finding the documents under the inputs (or in a store), loading each;
- ``tasks``: summarizing one document, or the rollup, into a cited record;
- ``engines``: where each worker's model lives (this process, a child process, a server);
- ``outputs``: the report, and the output folder's records, manifest and files;
- ``run``: :func:`summarize_batch` and the threads that drive the job.
"""

from rag.batch.jobs import BatchError, JobSpec, identify_model, summarize_prompts
from rag.batch.outputs import BatchFailure, BatchOutputs, BatchReport, render_report
from rag.batch.run import BatchInterrupted, summarize_batch
from rag.batch.tasks import EmptySummary, limit_words

__all__ = [
    "summarize_batch",
    "BatchReport",
    "BatchFailure",
    "BatchInterrupted",
    "BatchError",
    "EmptySummary",
    "BatchOutputs",
    "render_report",
    "JobSpec",
    "identify_model",
    "summarize_prompts",
    "limit_words",
]
