"""rag: ask questions of, and summarize, your own documents with local models only.

Nothing heavy is imported here; the public functions load on first use::

    import rag
    rag.ingest(["data/"])
    print(rag.ask("When was the lighthouse first lit?").answer)

Every error raised on purpose is a :class:`rag.RagError` whose message names the fix::

    try:
        rag.ask("When was the lighthouse first lit?")
    except rag.EmptyStore:
        rag.ingest(["data/"])
    except rag.RagError as error:
        print(error)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # settings
    "Settings": "rag.settings",
    # indexing and the store
    "ingest": "rag.indexing",
    "search": "rag.indexing",
    "list_sources": "rag.indexing",
    "forget": "rag.indexing",
    "IndexReport": "rag.indexing",
    "SourceEntry": "rag.store",
    "retriever": "rag.retrieval",
    "RagRetriever": "rag.retrieval",
    # answers, summaries, chat
    "ask": "rag.answer",
    "summarize": "rag.answer",
    "Answer": "rag.answer",
    "Summary": "rag.answer",
    "Source": "rag.answer",
    "Assistant": "rag.answer",
    "ChatSession": "rag.answer",
    # batch and eval
    "summarize_batch": "rag.batch",
    "BatchReport": "rag.batch",
    "run_eval": "rag.eval",
    "EvalReport": "rag.eval",
    # models
    "load_llm": "rag.llm",
    "load_embeddings": "rag.embed",
    # errors: every one is a RagError
    "RagError": "rag.errors",
    "EmptyQuestion": "rag.errors",
    "LLMBackendError": "rag.errors",
    "InvalidSettings": "rag.settings",
    "ConfigFileError": "rag.settings",
    "ModelNotFound": "rag.models",
    "InvalidModelFile": "rag.models",
    "EmptyStore": "rag.store",
    "IncompatibleCollection": "rag.store",
    "ContextOverflow": "rag.budget",
    "NothingToSummarize": "rag.answer",
    "PromptNotFound": "rag.prompts",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from rag.answer import Answer, Assistant, ChatSession, NothingToSummarize, Source, Summary, ask, summarize
    from rag.batch import BatchReport, summarize_batch
    from rag.budget import ContextOverflow
    from rag.embed import load_embeddings
    from rag.errors import EmptyQuestion, LLMBackendError, RagError
    from rag.eval import EvalReport, run_eval
    from rag.retrieval import RagRetriever, retriever
    from rag.indexing import IndexReport, forget, ingest, list_sources, search
    from rag.llm import load_llm
    from rag.models import InvalidModelFile, ModelNotFound
    from rag.prompts import PromptNotFound
    from rag.settings import ConfigFileError, InvalidSettings, Settings
    from rag.store import EmptyStore, IncompatibleCollection, SourceEntry


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
