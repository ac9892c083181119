"""Prompt registry over the YAML files in ``prompts/``.

A prompt is named ``family/kind`` (``chatml/rag``), by a bare family
(``chatml``, meaning its ``rag`` prompt unless another kind is asked for), or
by a LangChain Hub name that resolves offline (``rlm/rag-prompt``).

Example::

    from rag.prompts import get_prompt, detect_family
    family = detect_family(chat_template, "SmolLM2-135M-Instruct.Q4_1.gguf")  # "chatml"
    prompt = get_prompt(family, kind="rag")   # a PromptTemplate
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.prompts import PromptTemplate

from rag.errors import RagError
from rag.resources import resource_dir

logger = logging.getLogger(__name__)

GENERIC = "generic"
KINDS = ("rag", "summarize", "map", "reduce", "condense")


class PromptNotFound(RagError, KeyError):
    """No prompt file or alias matches the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class PromptSpec:
    """One prompt: its template text and the variables it declares."""

    family: str
    kind: str
    variables: tuple[str, ...]
    template: str

    def to_template(self) -> PromptTemplate:
        return PromptTemplate(template=self.template, input_variables=list(self.variables))


@dataclass(frozen=True)
class PromptFamily:
    """A chat format: how to recognise it, where to stop, and its prompts."""

    name: str
    description: str
    markers: tuple[str, ...]
    name_hints: tuple[str, ...]
    stop: tuple[str, ...]
    prompts: dict[str, PromptSpec]


def prompts_dir() -> Path:
    return resource_dir("prompts")


@functools.lru_cache(maxsize=1)
def load_families() -> dict[str, PromptFamily]:
    """Every prompt family in ``prompts/``, by name."""
    families = {}
    for path in sorted(prompts_dir().glob("*.yaml")):
        if path.stem == "aliases":
            continue
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        name = raw["family"]
        families[name] = PromptFamily(
            name=name,
            description=raw.get("description", ""),
            markers=tuple(raw.get("markers", ())),
            name_hints=tuple(raw.get("name_hints", ())),
            stop=tuple(raw.get("stop", ())),
            prompts={
                kind: PromptSpec(name, kind, tuple(spec["variables"]), spec["template"])
                for kind, spec in raw["prompts"].items()
            },
        )
    return families


@functools.lru_cache(maxsize=1)
def load_aliases() -> dict[str, str]:
    path = prompts_dir() / "aliases.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def get_family(name: str) -> PromptFamily:
    families = load_families()
    if name not in families:
        raise PromptNotFound(f"unknown prompt family {name!r}; known: {', '.join(sorted(families))}")
    return families[name]


def get_spec(name: str, kind: str = "rag") -> PromptSpec:
    """Resolve ``family``, ``family/kind`` or a hub alias to a :class:`PromptSpec`."""
    name = load_aliases().get(name, name)
    family_name, _, explicit_kind = name.partition("/")
    family = get_family(family_name)
    kind = explicit_kind or kind
    if kind not in family.prompts:
        raise PromptNotFound(f"prompt family {family_name!r} has no {kind!r} prompt; it has {', '.join(family.prompts)}")
    return family.prompts[kind]


def get_prompt(name: str, kind: str = "rag") -> PromptTemplate:
    """A LangChain ``PromptTemplate`` for a prompt name (see :func:`get_spec`)."""
    return get_spec(name, kind).to_template()


def detect_family(chat_template: str | None, model_name: str = "") -> str:
    """Pick the prompt family for a model: its GGUF chat template first, then its name, else generic."""
    families = load_families().values()
    if chat_template:
        for family in families:
            if family.markers and any(marker in chat_template for marker in family.markers):
                return family.name
    lowered = model_name.lower()
    for family in families:
        if any(hint in lowered for hint in family.name_hints):
            return family.name
    return GENERIC


def pull_hub_prompt(name: str, cache_dir: Path) -> PromptTemplate:
    """Fetch a prompt from the real LangChain Hub (online, on request only) and cache it.

    A cached copy is used without touching the network.
    """
    import json

    from langchain_core.load import dumpd, load

    cache_file = cache_dir / "hub" / (name.replace("/", "__") + ".json")
    if not cache_file.is_file():
        from langchainhub import Client  # only for users who ask for the hub

        logger.info("pulling prompt %s from the LangChain Hub", name)
        prompt = load(json.loads(Client().pull(name)))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(dumpd(prompt)), encoding="utf-8")
    return load(json.loads(cache_file.read_text(encoding="utf-8")))
