"""One typed settings object for the whole package.

Every field can be set by keyword, by an environment variable with the
``RAG_`` prefix (``RAG_N_CTX=8192``) or from a TOML/JSON/YAML config file
named by ``RAG_CONFIG``. Keywords (the CLI passes its flags as keywords) beat
environment variables, which beat the config file, which beats the defaults.
A value it rejects is an :class:`InvalidSettings` (a ``RagError``) naming it.

Example::

    from rag.settings import Settings
    settings = Settings(collection="notes", n_ctx=8192)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rag.errors import RagError

Backend = Literal["llamacpp", "gpt4all", "llamafile"]
Retrieval = Literal["vector", "lexical", "hybrid"]
ContextOrder = Literal["best_last", "best_first"]
Executor = Literal["local", "ray"]


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("rag", appauthor=False))


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("rag", appauthor=False))


class Settings(BaseSettings):
    """Settings for ingestion, models and answering."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", validate_assignment=True)

    # Where things live
    data_dir: Path = Field(default_factory=_default_data_dir, description="Root of stores and user models.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Derived model files (converted embedder, compatibility copies).",
    )
    store_dir: Path | None = Field(
        None, description="Chroma store directory; default DATA_DIR/store.", json_schema_extra={"default_text": "DATA_DIR/store"}
    )
    models_dir: Path | None = Field(
        None, description="Folder searched for GGUF files by name; default DATA_DIR/models.", json_schema_extra={"default_text": "DATA_DIR/models"}
    )
    collection: str = Field("default", description="Chroma collection name.")
    chroma_url: str | None = Field(
        None, description="Chroma server URL (http://127.0.0.1:8000) used instead of the store folder; keep it on loopback or a private network."
    )
    chroma_token: SecretStr | None = Field(None, description="Token sent to the Chroma server as 'Authorization: Bearer TOKEN' (for a proxy that checks it).")
    executor: Executor = Field("local", description="Where batch jobs run: local (threads and processes here) or ray (a Ray cluster).")
    ray_address: str | None = Field(None, description="Ray cluster to join ('auto' or HOST:PORT); default: start a local one on loopback.")

    # LLM
    backend: Backend = Field("llamacpp", description="LLM backend: llamacpp, gpt4all or llamafile.")
    llm_model: str | None = Field(
        None, description="GGUF path or file name in MODELS_DIR; default SmolLM2-135M.", json_schema_extra={"default_text": "SmolLM2-135M"}
    )
    n_ctx: int = Field(4096, ge=256, description="Context window in tokens (LangChain's 512 is too small for RAG).")
    n_batch: int = Field(512, ge=1, description="Prompt tokens processed per batch.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_gpu_layers: int = Field(0, description="Layers offloaded to the GPU (-1 = all); needs a GPU build.")
    f16_kv: bool = Field(True, description="Half-precision KV cache.")
    temperature: float = Field(0.1, ge=0.0, description="Sampling temperature.")
    max_tokens: int = Field(256, ge=1, description="Answer budget in tokens.")
    seed: int = Field(0, description="Sampling seed, for repeatable answers.")
    stop: list[str] = Field(default_factory=list, description="Extra stop sequences (the prompt family adds its own).")
    llamafile_url: str = Field("http://127.0.0.1:8080", description="Base URL of a llamafile / llama.cpp server.")
    request_timeout: float = Field(120.0, gt=0, description="Seconds to wait on the llama.cpp server.")
    allow_download: bool = Field(False, description="Let gpt4all download models it does not find (off: offline).")

    # Embeddings
    embed_model: str | None = Field(None, description="Embedding GGUF path or gpt4all model name; default all-MiniLM-L6-v2.")

    # Ingestion and retrieval
    chunk_size: int = Field(500, ge=1, description="Characters per chunk (larger finds more, but the default 135M model answers worse).")
    chunk_overlap: int = Field(0, ge=0, description="Characters shared by neighbouring chunks.")
    embed_tokens: int = Field(
        48,
        ge=0,
        description=(
            "Tokens (words and punctuation marks) of each chunk's title, section and text the embedder sees (0: all); "
            "the keyword index keeps every word."
        ),
    )
    k: int = Field(4, ge=1, description="Chunks retrieved per question.")
    retrieval: Retrieval = Field("hybrid", description="How chunks are found: vector, lexical (BM25) or hybrid (both, fused by rank).")
    context_order: ContextOrder = Field(
        "best_first",
        description="Where the best chunk goes in the answer prompt: first, or last (nearest the question); [1] is the best either way.",
    )
    neighbours: int = Field(0, ge=0, description="Chunks before and after each hit (same section) added to its text.")
    min_score: float = Field(
        0.36,
        description="Drop hits whose cosine similarity is below this (0: keep all); when none reaches it, `ask` says it does not know.",
    )
    min_score_ratio: float = Field(0.0, ge=0, le=1, description="Drop hits scoring below this fraction of the best hit (0: keep all).")
    unmentioned_max_score: float = Field(
        0.5,
        description="When the question names what no chunk contains (LFS, pool_mode) and no hit scores this, `ask` says so (0: off).",
    )
    prompt: str | None = Field(
        None,
        description="Prompt name or family (chatml, rlm/rag-prompt, hub:OWNER/NAME); default: detected from the model.",
        json_schema_extra={"default_text": "detected"},
    )
    history_turns: int = Field(4, ge=0, description="Chat exchanges kept as context for follow-up questions.")
    allow_private_network: bool = Field(False, description="Allow URLs on loopback and private networks.")

    # Ingestion: what is read, and the limits on reading it
    include: list[str] = Field(default_factory=list, description="Globs a folder's files must match (name, or path with '/').")
    exclude: list[str] = Field(default_factory=list, description="Globs of files and folders to leave out.")
    include_hidden: bool = Field(False, description="Also read hidden files and folders (names starting with '.').")
    strip_boilerplate: bool = Field(True, description="Drop web page navigation, headers, footers and sidebars.")
    max_source_bytes: int = Field(20_000_000, ge=1, description="Largest file or web response read, in bytes.")
    source_timeout: float = Field(60.0, gt=0, description="Seconds allowed to load and split one source.")
    fetch_timeout: float = Field(15.0, gt=0, description="Seconds to wait for a web server to connect or send data.")
    loader_memory_mb: int = Field(2048, ge=0, description="Address-space cap of the loader process in MB (0: none).")
    isolate_loaders: bool = Field(True, description="Load sources in a child process, so limits can be enforced.")

    # Serving (rag serve): the HTTP API and chat page
    host: str = Field("127.0.0.1", description="Address `rag serve` binds; anything but loopback needs an API key.")
    port: int = Field(8000, ge=0, le=65535, description="Port `rag serve` listens on.")
    api_key: SecretStr | None = Field(None, description="Bearer token every /v1 request must carry (RAG_API_KEY); none: no check.")
    queue_size: int = Field(4, ge=0, description="Requests that may wait for the model; beyond them the API answers 429.")
    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest request body the API reads, in bytes (413 beyond).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from a browser (none: no CORS).")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keywords (the CLI's flags) beat ``RAG_*`` variables, which beat the ``RAG_CONFIG`` file."""
        return init_settings, env_settings, ConfigFileSource(settings_cls), dotenv_settings, file_secret_settings

    @property
    def store_path(self) -> Path:
        return self.store_dir or self.data_dir / "store"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    def __init__(self, **values: Any) -> None:
        """Validate keywords, ``RAG_*`` variables and the config file; raises :class:`InvalidSettings`."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise InvalidSettings.from_validation_error(error) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            raise InvalidSettings.from_validation_error(error) from None

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields changed; ``None`` values are ignored. Raises :class:`InvalidSettings`."""
        changes = {key: value for key, value in changes.items() if value is not None}
        return type(self)(**{**self.model_dump(), **changes})


def setting_default(name: str) -> Any:
    """The default of one :class:`Settings` field (what the LLM classes and loaders start from)."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def shown_default(name: str) -> str:
    """A field's default as help texts show it: the value, or what a ``None`` default stands for."""
    field = Settings.model_fields[name]
    value = setting_default(name)
    if value is None:
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        return str(extra.get("default_text", "none"))
    return f"{value:g}" if isinstance(value, float) else str(value)


class InvalidSettings(RagError, ValueError):
    """A keyword, ``RAG_*`` environment variable or config file value that :class:`Settings` rejects."""

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> InvalidSettings:
        """One line naming every rejected value and where values come from."""
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}={item['input']!r}: {item['msg']}" for item in error.errors())
        return cls(f"invalid setting: {problems} (check the flags, RAG_* environment variables and RAG_CONFIG file)")


class ConfigFileError(RagError, ValueError):
    """The file named by ``RAG_CONFIG`` is missing, unreadable, not a TOML/JSON/YAML table, or names unknown settings."""


class ConfigFileSource(PydanticBaseSettingsSource):
    """The settings in the TOML/JSON/YAML file named by ``RAG_CONFIG`` (none when it is unset)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        config = os.environ.get("RAG_CONFIG")
        self.values = _read_config_file(Path(config), set(settings_cls.model_fields)) if config else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def _read_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    import tomllib

    import yaml  # also reads JSON

    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise ConfigFileError(f"cannot read the RAG_CONFIG file {path}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"the RAG_CONFIG file {path} must hold a table of settings, not {type(values).__name__}")
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise ConfigFileError(
            f"unknown setting(s) in the RAG_CONFIG file {path}: {', '.join(unknown)}; "
            "settings are the fields of rag.settings.Settings, in lower case (e.g. n_ctx)"
        )
    return values
