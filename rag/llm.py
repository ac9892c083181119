"""LLM backends (llama.cpp in-process, GPT4All, a llamafile / llama.cpp server), chosen in one place.

This is the only module that branches on ``Settings.backend``; the LangChain class of
each backend lives in :mod:`rag.backends`.

- :func:`load_llm` returns the LangChain ``BaseLLM`` to compose in your own chains;
  its ``metadata["rag"]`` says what it is (model, backend, prompt family, context size).
- :func:`load_local_llm` returns a :class:`LocalLLM`: that ``BaseLLM`` plus what rag's
  chains need to use it well (prompt family, stop sequences, context size, a token
  counter). :class:`rag.answer.Assistant`, batch and eval use it.
- :func:`identify_llm` tells what the configured LLM is without loading it,
  :func:`server_url` where it runs, and :func:`backend_checks` are the readiness
  checks ``rag doctor`` runs for the backend.

The LLM stops every call at the family's end-of-turn markers and the user's extra
stops; :meth:`LocalLLM.for_task` adds a task's own stops (a QA answer may end at
a blank line, a summary must not).

Example::

    from rag.llm import load_llm
    llm = load_llm(Settings(backend="llamacpp"))
    llm.metadata["rag"]["family"]                   # "chatml"
    for token in llm.stream("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"):
        print(token, end="")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from rag.errors import LLMBackendError
from rag.models import model_prompt_family, read_gguf_metadata, resolve_llm_path
from rag.prompts import choose_family, get_family, get_spec
from rag.settings import Settings

if TYPE_CHECKING:  # langchain_core.language_models takes most of a second to import; a backend imports it when built
    from langchain_core.language_models import LanguageModelLike
    from langchain_core.language_models.llms import BaseLLM

__all__ = [
    "BackendCheck",
    "LLMBackendError",
    "LLMIdentity",
    "LocalLLM",
    "backend_checks",
    "identify_llm",
    "load_llm",
    "load_local_llm",
    "server_settings",
    "server_url",
]


@dataclass(frozen=True)
class LLMIdentity:
    """What an LLM is: the model, its backend and prompt family, the context and answer budgets."""

    model: str
    backend: str
    family: str
    n_ctx: int
    max_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LocalLLM:
    """A loaded LLM with what the chains need to use it well."""

    llm: BaseLLM
    backend: str
    model_name: str
    family: str
    n_ctx: int
    max_tokens: int
    count_tokens: Callable[[str], int] = field(repr=False)

    @property
    def identity(self) -> LLMIdentity:
        return LLMIdentity(self.model_name, self.backend, self.family, self.n_ctx, self.max_tokens)

    @property
    def stop(self) -> list[str]:
        """The family's stop sequences, which end every call (``llm`` carries them)."""
        return list(get_family(self.family).stop)

    def for_task(self, kind: str) -> LanguageModelLike:
        """The LLM with the stop sequences of one task (``rag``, ``condense``, ...) added to its own.

        Summaries (``summarize``, ``map``, ``reduce``) have none of their own: they get :attr:`llm`.
        """
        stop = list(get_spec(self.family, kind).stop)
        return self.llm.bind(stop=stop) if stop else self.llm


def load_llm(settings: Settings | None = None) -> BaseLLM:
    """The configured LLM as a LangChain ``BaseLLM``, ready to compose (``prompt | llm``).

    It stops every call at its prompt family's end-of-turn markers and ``settings.stop``.
    ``llm.metadata["rag"]`` holds :class:`LLMIdentity`'s fields (``model``, ``backend``,
    ``family``, ``n_ctx``, ``max_tokens``); :func:`load_local_llm` also gives the token
    counter and the per-task stops. Raises ``ModelNotFound``/``InvalidModelFile``/``LLMBackendError``.
    """
    return load_local_llm(settings or Settings()).llm


def load_local_llm(settings: Settings) -> LocalLLM:
    """Build the configured backend. Raises ``ModelNotFound``/``InvalidModelFile`` with the fix."""
    identity = identify_llm(settings)
    local = _load_llamafile(settings, identity) if server_url(settings) else _load_gguf(settings, identity)
    local.llm.metadata = {**(local.llm.metadata or {}), "rag": local.identity.to_dict()}
    return local


def server_url(settings: Settings) -> str | None:
    """The URL of the llama.cpp server the configured LLM runs on; ``None`` when it runs in this process."""
    return settings.llamafile_url if settings.backend == "llamafile" else None


def server_settings(settings: Settings, url: str) -> Settings:
    """``settings`` for a client of the llama.cpp server at ``url`` (the llamafile backend)."""
    return settings.with_overrides(backend="llamafile", llamafile_url=url)


def identify_llm(settings: Settings) -> LLMIdentity:
    """What :func:`load_local_llm` would load, found without loading it (a server is asked its ``/props``)."""
    url = server_url(settings)
    if url:
        from rag.backends.llama_server import read_server_model

        served = read_server_model(url, timeout=min(10.0, settings.request_timeout))
        family = choose_family(settings.prompt, served.chat_template, served.model_name)
        return LLMIdentity(served.model_name, "llamafile", family, served.n_ctx or settings.n_ctx, settings.max_tokens)
    path = resolve_llm_path(settings.llm_model, settings)
    return LLMIdentity(path.name, settings.backend, model_prompt_family(path, settings.prompt, settings.cache_dir), settings.n_ctx, settings.max_tokens)


def _stop_sequences(family: str, settings: Settings) -> list[str]:
    """Stops for every call: the family's end-of-turn markers and the user's extra stops."""
    return list(dict.fromkeys([*get_family(family).stop, *settings.stop]))


def _load_gguf(settings: Settings, identity: LLMIdentity) -> LocalLLM:
    """An in-process backend (llama.cpp or GPT4All) over a local GGUF."""
    path = resolve_llm_path(settings.llm_model, settings)
    stop = _stop_sequences(identity.family, settings)
    if settings.backend == "gpt4all":
        from rag.backends.gpt4all import build_gpt4all
        from rag.backends.llamacpp import llama_cpp_token_counter

        llm = build_gpt4all(path, read_gguf_metadata(path, settings.cache_dir).pre_tokenizer, stop, settings)
        counter = llama_cpp_token_counter(path)
    else:
        from rag.backends.llamacpp import build_llamacpp

        llm = build_llamacpp(path, stop, settings)
        counter = lambda text: len(llm.client.tokenize(text.encode("utf-8"), add_bos=True, special=True))  # noqa: E731
    return LocalLLM(llm, identity.backend, identity.model, identity.family, identity.n_ctx, identity.max_tokens, counter)


def _load_llamafile(settings: Settings, identity: LLMIdentity) -> LocalLLM:
    from rag.backends.llama_server import LlamafileLLM, server_token_counter

    llm = LlamafileLLM(
        base_url=settings.llamafile_url,
        request_timeout=settings.request_timeout,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        seed=settings.seed,
        stop=_stop_sequences(identity.family, settings),
    )
    counter = server_token_counter(settings.llamafile_url, settings.request_timeout)
    return LocalLLM(llm, identity.backend, identity.model, identity.family, identity.n_ctx, identity.max_tokens, counter)


# --- readiness ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendCheck:
    """A readiness check a backend needs: ``run(settings)`` returns what it found, or raises what is wrong."""

    name: str
    run: Callable[[Settings], str]
    fix: str


def backend_checks(settings: Settings) -> list[BackendCheck]:
    """The checks the configured backend needs beyond the model files and libraries (``rag doctor`` runs them)."""
    url = server_url(settings)
    if url:
        port = url.rsplit(":", 1)[-1]
        return [BackendCheck("llama.cpp server", _describe_server, f"start a server: llama-server -m MODEL.gguf --port {port}")]
    return []


def _describe_server(settings: Settings) -> str:
    from rag.backends.llama_server import read_server_model

    served = read_server_model(settings.llamafile_url, timeout=min(5.0, settings.request_timeout))
    return f"{settings.llamafile_url} serves {served.model_path or '?'}"
