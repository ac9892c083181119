"""The in-process llama.cpp backend: LangChain's ``LlamaCpp`` with merged stops, and the model's tokenizer.

Example::

    llm = build_llamacpp(path, ["<|im_end|>"], Settings())
    count = llama_cpp_token_counter(path)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.language_models.llms import BaseLLM

from rag.models import InvalidModelFile
from rag.native import quiet_native_stderr
from rag.settings import Settings


@functools.cache
def _llamacpp_class() -> type[BaseLLM]:
    """LangChain's ``LlamaCpp``, taking a call's stop sequences in addition to its own.

    LangChain's raises when both are given; a task's stops (:meth:`rag.llm.LocalLLM.for_task`)
    must add to the end-of-turn markers the LLM carries for every call.
    """
    from langchain_community.llms import LlamaCpp

    class StopMergingLlamaCpp(LlamaCpp):
        def _get_parameters(self, stop: list[str] | None = None) -> dict[str, Any]:
            params = super()._get_parameters(None)
            params["stop"] = list(dict.fromkeys([*params["stop"], *(stop or [])]))
            return params

    return StopMergingLlamaCpp


# Settings passed to LangChain's ``LlamaCpp`` under the same name.
PASSED_SETTINGS = ("n_ctx", "n_batch", "n_gpu_layers", "f16_kv", "temperature", "max_tokens", "seed")


def build_llamacpp(path: Path, stop: list[str], settings: Settings) -> BaseLLM:
    """LangChain's ``LlamaCpp`` over ``path``, stopping every call at ``stop``."""
    try:
        return _llamacpp_class()(
            model_path=str(path),
            **{name: getattr(settings, name) for name in PASSED_SETTINGS},
            n_threads=settings.n_threads or os.cpu_count(),
            # Prompt evaluation too: llama-cpp-python would take every core (batch workers share them).
            model_kwargs={"n_threads_batch": settings.n_threads or os.cpu_count()},
            stop=stop,
            # LangChain's defaults (10000, 1.0) override the model's own RoPE settings
            # (SmolLM2: base 100000) and degrade its answers; 0 means "from the GGUF".
            rope_freq_base=0.0,
            rope_freq_scale=0.0,
            streaming=True,
            verbose=False,
        )
    except ValueError as error:
        raise InvalidModelFile(f"llama.cpp could not load {path}: {error}") from error


def load_vocab(path: Path) -> Any:
    """The model's tokenizer alone (``vocab_only``: fast, little memory); also proves llama.cpp can read the file."""
    from llama_cpp import Llama

    with quiet_native_stderr():
        return Llama(str(path), vocab_only=True, verbose=False)


def llama_cpp_token_counter(path: Path) -> Callable[[str], int]:
    """Count tokens with the model's own tokenizer (vocabulary only: fast, little memory)."""
    vocab = load_vocab(path)
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True))
