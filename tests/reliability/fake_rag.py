"""The ``rag`` command as a real process, with fake models, for tests that stop it with signals.

``python -m tests.reliability.fake_rag [--wait-for-go] ARGS...`` runs ``rag ARGS...`` (through
:func:`rag.cli.main`, so with its SIGTERM handling and exit statuses) with:

- a deterministic fake embedder (:class:`AnnouncingEmbeddings`) in place of the real one,
  which prints ``embedding N`` on stdout at each call (a test waits for it to know the
  ingest holds the store's lock and is writing) and sleeps ``FAKE_RAG_EMBED_DELAY`` seconds;
- a scripted LLM (:func:`fake_worker_llm`) for the in-process backends, so ``batch-summarize
  --workers N`` starts N real worker processes without loading a model; each call sleeps
  ``FAKE_RAG_LLM_DELAY`` seconds.

``--wait-for-go`` imports what the command needs first, prints ``ready``, then waits for a
line on stdin before running: a test starts such processes ahead and lets them go at the
moment it wants, without waiting for their start-up then.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from rag.settings import Settings

EMBED_DIMENSION = 64
PRELOADED = {  # what each command imports, paid before --wait-for-go lets it run
    "ingest": ("rag.indexing", "chromadb", "rag.sources.process"),
    "search": ("rag.indexing", "chromadb", "rag.retrieval"),
    "batch-summarize": ("rag.batch.run", "rag.batch.engines"),
}


class AnnouncingEmbeddings(Embeddings):
    """DeterministicFakeEmbedding (same text, same vector, in every process) that says when it embeds."""

    model_name = f"fake-deterministic-{EMBED_DIMENSION}"

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = DeterministicFakeEmbedding(size=EMBED_DIMENSION)
        self.delay = delay

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        print(f"embedding {len(texts)}", flush=True)
        time.sleep(self.delay)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def fake_embeddings(settings: Settings) -> AnnouncingEmbeddings:
    """Stands in for :func:`rag.embed.load_embeddings`."""
    return AnnouncingEmbeddings(float(os.environ.get("FAKE_RAG_EMBED_DELAY", "0")))


def fake_worker_llm(settings: Settings):
    """Stands in for :func:`rag.llm.load_local_llm` in batch workers: the configured model's identity, a scripted LLM.

    Module-level, so the spawned worker processes unpickle it by name.
    """
    from rag.llm import LocalLLM, identify_llm
    from tests.batch.fakes import ScriptedLLM, count_tokens

    delay = float(os.environ.get("FAKE_RAG_LLM_DELAY", "0"))

    class SlowScriptedLLM(ScriptedLLM):
        def _call(self, prompt: str, stop=None, run_manager=None, **kwargs) -> str:
            time.sleep(delay)
            return super()._call(prompt, stop, run_manager, **kwargs)

    identity = identify_llm(settings)  # reads the GGUF's header only; the job checks every worker runs this model
    return LocalLLM(SlowScriptedLLM(), identity.backend, identity.model, identity.family, identity.n_ctx, identity.max_tokens, count_tokens)


def main(argv: list[str]) -> None:
    """Run ``rag argv...`` with the fakes in place (see the module docstring)."""
    wait_for_go = argv[:1] == ["--wait-for-go"]
    argv = argv[1:] if wait_for_go else argv
    for module in ("rag.cli", "rag.embed", *PRELOADED.get(next((arg for arg in argv if not arg.startswith("-")), ""), ())):
        importlib.import_module(module)
    import rag.cli
    import rag.embed

    rag.embed.load_embeddings = fake_embeddings
    if "batch-summarize" in argv:
        import rag.batch.run

        rag.batch.run.load_local_llm = fake_worker_llm
    if wait_for_go:
        print("ready", flush=True)
        if not sys.stdin.readline():  # stdin closed: the test ended without letting it go
            return
    sys.argv = ["rag", *argv]
    rag.cli.main()


if __name__ == "__main__":
    from tests.reliability.fake_rag import main as run  # this module under its own name: workers unpickle its factory

    run(sys.argv[1:])
