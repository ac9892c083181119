"""What a batch job is: the model it runs, the settings and prompts its records share, and the keys they are filed under.

A record's key is a digest of (record version, content hash, model, prompt, prompt hash,
settings): an unchanged document under an unchanged job gets the same key, so a
re-run finds its record and makes no LLM call.

Example::

    identity, _ = identify_model(settings)       # a rag.llm.LLMIdentity: model, backend, family, n_ctx, max_tokens
    spec = JobSpec.build(identity, settings, max_words=None)
    spec.document_key(content_hash)  # the record's file name under records/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.errors import RagError
from rag.llm import LLMIdentity, LocalLLM, identify_llm, load_local_llm, server_settings
from rag.settings import Settings

if TYPE_CHECKING:  # LangChain's prompt classes are imported only when a job has something to summarize
    from rag.chains import SummarizePrompts

RECORD_VERSION = 1
"""Part of every key: bump when what a record holds changes meaning, so old records are redone."""

LLMFactory = Callable[[Settings], LocalLLM]


class BatchError(RagError):
    """The job cannot run as asked (bad options, servers serving different models, ...)."""


@dataclass(frozen=True)
class JobSpec:
    """What every summary of a job shares; with a document's content it makes the record's key."""

    model: str
    backend: str
    family: str
    prompt_hash: str
    settings: dict = field(hash=False)
    max_words: int | None = None

    @classmethod
    def build(cls, identity: LLMIdentity, settings: Settings, max_words: int | None) -> JobSpec:
        from rag.sources import LoadOptions

        templates = summarize_templates(identity.family, max_words)
        knobs = {
            "n_ctx": identity.n_ctx,
            "max_tokens": identity.max_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "stop": list(settings.stop),
            "chunk_size": settings.chunk_size,
            "chunk_overlap": settings.chunk_overlap,
            "loader": LoadOptions.from_settings(settings).signature,
            "max_words": max_words,
        }
        prompt_hash = digest(list(templates))[:16]
        return cls(identity.model, identity.backend, identity.family, prompt_hash, knobs, max_words)

    @property
    def prompt(self) -> str:
        return f"{self.family}/summarize"

    def key_parts(self, content: str) -> dict:
        """What a record's key is made of; the manifest keeps it next to each record."""
        return {
            "version": RECORD_VERSION,
            "content_hash": content,
            "model": self.model,
            "prompt": self.prompt,
            "prompt_hash": self.prompt_hash,
            "settings": self.settings,
        }

    def document_key(self, content: str) -> str:
        return digest(self.key_parts(content))[:32]

    def rollup_key(self, document_keys: Sequence[str]) -> str:
        return "rollup-" + digest(self.key_parts(digest(list(document_keys))))[:32]

    def prompts(self) -> SummarizePrompts:
        return summarize_prompts(self.family, self.max_words)


def summarize_templates(family: str, max_words: int | None = None) -> tuple[str, str, str]:
    """A family's stuff, map and reduce template texts; with ``max_words`` the final two ask for that length."""
    from rag.prompts import get_spec

    instruction = f"\n\nWrite at most {max_words} words." if max_words else ""

    def final(template: str) -> str:
        return template.replace("{docs}", "{docs}" + instruction, 1) if instruction else template

    stuff, map_, reduce = (get_spec(family, kind).template for kind in ("summarize", "map", "reduce"))
    return final(stuff), map_, final(reduce)


def summarize_prompts(family: str, max_words: int | None = None) -> SummarizePrompts:
    """A family's stuff/map/reduce prompts (:func:`summarize_templates` as LangChain prompts)."""
    from langchain_core.prompts import PromptTemplate

    from rag.chains import SummarizePrompts

    return SummarizePrompts(*(PromptTemplate.from_template(template) for template in summarize_templates(family, max_words)))


def identify_model(
    settings: Settings, servers: Sequence[str] = (), factory: LLMFactory | None = None
) -> tuple[LLMIdentity, LocalLLM | None]:
    """The model a job will run on ``servers`` (none: in this process), found without loading it where possible.

    Every server must serve the same model; the job plans with the smallest context
    among them. Returns the identity and, when finding it meant loading the model (a
    custom ``factory``), that model, for reuse.
    """
    if factory is not None and factory is not load_local_llm:
        local = factory(server_settings(settings, servers[0]) if servers else settings)
        return local.identity, local
    if not servers:
        return identify_llm(settings), None
    found = [(url, identify_llm(server_settings(settings, url))) for url in servers]
    if len({identity.model for _, identity in found}) > 1:
        raise BatchError("the servers serve different models: " + ", ".join(f"{url}: {identity.model}" for url, identity in found))
    return dataclasses.replace(found[0][1], n_ctx=min(identity.n_ctx for _, identity in found)), None


def digest(value: Any) -> str:
    """The SHA-256 of ``value`` as canonical JSON: keys and content ids are made of it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
