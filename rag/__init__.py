"""rag: ask questions of, and summarize, your own documents with local models only.

Nothing heavy is imported here; the public functions load on first use::

    import rag
    rag.ingest(["data/"])
    print(rag.ask("When was the lighthouse first lit?").answer)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "rag.settings",
    "ingest": "rag.indexing",
    "search": "rag.indexing",
    "list_sources": "rag.indexing",
    "forget": "rag.indexing",
    "IndexReport": "rag.indexing",
    "ask": "rag.answer",
    "summarize": "rag.answer",
    "Answer": "rag.answer",
    "Summary": "rag.answer",
    "Assistant": "rag.answer",
    "ChatSession": "rag.answer",
    "summarize_batch": "rag.batch",
    "BatchReport": "rag.batch",
    "run_eval": "rag.eval",
    "EvalReport": "rag.eval_report",
    "load_llm": "rag.llm",
    "load_embeddings": "rag.embed",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from rag.answer import Answer, Assistant, ChatSession, Summary, ask, summarize
    from rag.batch import BatchReport, summarize_batch
    from rag.embed import load_embeddings
    from rag.eval import run_eval
    from rag.eval_report import EvalReport
    from rag.indexing import IndexReport, forget, ingest, list_sources, search
    from rag.llm import load_llm
    from rag.settings import Settings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
