"""Settings: defaults, environment, config file, overrides."""

from __future__ import annotations

import pytest
from rag.errors import RagError
from rag.settings import ConfigFileError, InvalidSettings, Settings, setting_default, shown_default


def test_defaults_are_offline_and_rag_sized(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.allow_download is False
    assert settings.n_ctx >= 2048  # LangChain's 512 is too small for RAG prompts
    assert (settings.chunk_size, settings.chunk_overlap) == (500, 0)
    assert settings.store_path == tmp_path / "store"
    assert settings.models_path == tmp_path / "models"
    assert settings.request_timeout > 0


def test_environment_variables_use_the_rag_prefix(monkeypatch):
    monkeypatch.setenv("RAG_N_CTX", "8192")
    monkeypatch.setenv("RAG_BACKEND", "gpt4all")
    settings = Settings()
    assert (settings.n_ctx, settings.backend) == (8192, "gpt4all")


def test_config_file_is_read_and_keywords_win(monkeypatch, tmp_path):
    config = tmp_path / "rag.toml"
    config.write_text('collection = "notes"\nk = 6\n')
    monkeypatch.setenv("RAG_CONFIG", str(config))
    settings = Settings(k=2)
    assert (settings.collection, settings.k) == ("notes", 2)


def test_environment_beats_the_config_file_and_keywords_beat_both(monkeypatch, tmp_path):
    config = tmp_path / "rag.toml"
    config.write_text('collection = "notes"\nk = 2\nn_ctx = 2048\n')
    monkeypatch.setenv("RAG_CONFIG", str(config))
    monkeypatch.setenv("RAG_K", "5")
    monkeypatch.setenv("RAG_N_CTX", "8192")
    settings = Settings()
    assert (settings.collection, settings.k, settings.n_ctx) == ("notes", 5, 8192)
    assert Settings(k=3).k == 3
    changed = settings.with_overrides(collection="other")  # a copy keeps what the original resolved
    assert (changed.collection, changed.k, changed.n_ctx) == ("other", 5, 8192)


@pytest.mark.parametrize(
    ("name", "text"), [("rag.toml", 'k = 2\nchunk_sise = 300\n"top k" = 1\n'), ("rag.yaml", "k: 2\nchunk_sise: 300\ntop k: 1\n")]
)
def test_unknown_keys_in_the_config_file_are_an_error_naming_them(monkeypatch, tmp_path, name, text):
    config = tmp_path / name
    config.write_text(text)
    monkeypatch.setenv("RAG_CONFIG", str(config))
    with pytest.raises(ConfigFileError, match=r"unknown setting\(s\) in the RAG_CONFIG file .*: chunk_sise, top k;"):
        Settings()


def test_with_overrides_ignores_none_and_validates(tmp_path):
    settings = Settings(data_dir=tmp_path)
    changed = settings.with_overrides(collection="x", k=None)
    assert (changed.collection, changed.k, changed.data_dir) == ("x", settings.k, tmp_path)
    with pytest.raises(InvalidSettings, match="backend='openai'"):
        settings.with_overrides(backend="openai")


@pytest.mark.parametrize(
    "make",
    [lambda: Settings(k=0), lambda: Settings().with_overrides(n_ctx=10), lambda: setattr(Settings(), "temperature", -1)],
    ids=["keyword", "override", "assignment"],
)
def test_a_rejected_value_is_one_line_rag_error_naming_it(make):
    with pytest.raises(InvalidSettings) as caught:
        make()
    message = str(caught.value)
    assert isinstance(caught.value, RagError) and message.startswith("invalid setting: ") and "\n" not in message
    assert "RAG_* environment variables" in message


def test_a_bad_environment_variable_is_an_invalid_setting(monkeypatch):
    monkeypatch.setenv("RAG_N_CTX", "lots")
    with pytest.raises(InvalidSettings, match="n_ctx='lots'"):
        Settings()


def test_defaults_are_read_from_the_fields_and_shown_for_help():
    assert setting_default("k") == 4 and setting_default("stop") == []
    assert shown_default("source_timeout") == "60" and shown_default("backend") == "llamacpp"
    assert shown_default("llm_model") == "SmolLM2-135M" and shown_default("store_dir") == "DATA_DIR/store"

