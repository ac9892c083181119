"""Prompt registry over the YAML files in ``prompts/``.

A prompt is named ``family/kind`` (``chatml/rag``), by a bare family
(``chatml``, meaning its ``rag`` prompt unless another kind is asked for), by a
LangChain Hub name that resolves offline to one of our files (``rlm/rag-prompt``),
or, only when the user asks for it, by ``hub:OWNER/NAME``: pulled once from the
real hub and cached.

Example::

    from rag.prompts import detect_family, get_prompt
    family = detect_family(chat_template, "SmolLM2-135M-Instruct.Q4_1.gguf")  # "chatml"
    prompt = get_prompt(family, kind="rag")   # a PromptTemplate over {context, question}
"""

from __future__ import annotations

import functools
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from rag.atomic import write_atomic
from rag.errors import RagError
from rag.resources import resource_dir

if TYPE_CHECKING:  # langchain_core.prompts takes most of a second to import: only where a template is built
    from langchain_core.prompts import BasePromptTemplate, PromptTemplate

logger = logging.getLogger(__name__)

GENERIC = "generic"
KINDS = ("rag", "summarize", "map", "reduce", "condense")
HUB_PREFIX = "hub:"


class PromptNotFound(RagError, KeyError):
    """No prompt file or alias matches the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class PromptFileError(RagError, ValueError):
    """A prompt file is malformed: missing keys, or variables that do not match its template."""


class HubPullError(RagError, RuntimeError):
    """A prompt could not be pulled from the LangChain Hub."""


@dataclass(frozen=True)
class PromptSpec:
    """One prompt: its template text, the variables it declares, and its task's own stop sequences.

    ``stop`` is added to the family's stops for this task only (a QA answer may end at a
    blank line; a summary must not).
    """

    family: str
    kind: str
    variables: tuple[str, ...]
    template: str
    stop: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.family}/{self.kind}"

    def to_template(self) -> PromptTemplate:
        from langchain_core.prompts import PromptTemplate

        return PromptTemplate(template=self.template, input_variables=list(self.variables))

    def render(self, **values: str) -> str:
        """The prompt text for exactly the declared variables (raises on a missing or extra one)."""
        if set(values) != set(self.variables):
            raise PromptFileError(f"prompt {self.name} takes {sorted(self.variables)}, got {sorted(values)}")
        return self.to_template().format(**values)


@dataclass(frozen=True)
class PromptFamily:
    """A chat format: how to recognise it, where every task stops (``stop``), and its prompts."""

    name: str
    description: str
    markers: tuple[str, ...]
    name_hints: tuple[str, ...]
    stop: tuple[str, ...]
    prompts: dict[str, PromptSpec]


def prompts_dir() -> Path:
    return resource_dir("prompts")


def _read_family(path: Path) -> PromptFamily:
    """One prompt file; any flaw in it is a :class:`PromptFileError` naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as error:  # ValueError: not UTF-8; RecursionError: nested too deep
        raise PromptFileError(f"{path}: not a readable YAML file ({error}); see prompts/README.md") from error
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("prompts"), dict):
            raise PromptFileError(f"{path}: expected a mapping with `family` and a `prompts` mapping; see prompts/README.md")
        name = raw["family"]
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise PromptFileError(f"{path}: `family` must be a name without '/'")
        prompts = {}
        for kind, spec in raw["prompts"].items():
            declared = _strings(spec["variables"], path, f"{kind}: variables")
            template = spec["template"]
            if not isinstance(kind, str) or not isinstance(template, str) or not all(item.isidentifier() for item in declared):
                raise PromptFileError(f"{path}: prompt {kind!r} needs a name, a `template` text and `variables` that are names")
            used = _plain_fields(template, path, kind)
            if used != set(declared):
                raise PromptFileError(
                    f"{path}: prompt {kind!r} declares variables {sorted(declared)} but its template uses {sorted(used)}"
                )
            prompts[kind] = PromptSpec(name, kind, declared, template, _strings(spec.get("stop"), path, f"{kind}: stop"))
        return PromptFamily(
            name=name,
            description=str(raw.get("description") or ""),
            markers=_strings(raw.get("markers"), path, "markers"),
            name_hints=_strings(raw.get("name_hints"), path, "name_hints"),
            stop=_strings(raw.get("stop"), path, "stop"),
            prompts=prompts,
        )
    except PromptFileError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # ValueError: a template str.format cannot parse
        raise PromptFileError(f"{path}: malformed prompt file ({error!r}); see prompts/README.md") from error


def _strings(value: object, path: Path, field: str) -> tuple[str, ...]:
    """A list of strings of a prompt file (a lone string is a list of one, not of its characters)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise PromptFileError(f"{path}: `{field}` must be a list of strings")


def _plain_fields(template: str, path: Path, kind: str) -> set[str]:
    """The variables of an f-string template; refuses ``{question!r}`` and ``{question:>9}``.

    A variable's text goes into the prompt exactly as given.
    """
    fields = set()
    for _, field, format_spec, conversion in string.Formatter().parse(template):
        if field is not None and (format_spec or conversion):
            raise PromptFileError(f"{path}: prompt {kind!r} formats {{{field}}}; write the plain {{{field}}}")
        if field is not None:
            fields.add(field)
    return fields


@functools.lru_cache(maxsize=1)
def load_families() -> dict[str, PromptFamily]:
    """Every prompt family in ``prompts/``, by name."""
    families = {}
    for path in sorted(prompts_dir().glob("*.yaml")):
        if path.stem != "aliases":
            family = _read_family(path)
            families[family.name] = family
    return families


@functools.lru_cache(maxsize=1)
def load_aliases() -> dict[str, str]:
    """Hub-style names (``rlm/rag-prompt``) mapped to ``family/kind`` here."""
    path = prompts_dir() / "aliases.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def get_family(name: str) -> PromptFamily:
    families = load_families()
    if name not in families:
        raise PromptNotFound(f"unknown prompt family {name!r}; known: {', '.join(sorted(families))}")
    return families[name]


def get_spec(name: str, kind: str = "rag") -> PromptSpec:
    """Resolve ``family``, ``family/kind`` or a hub alias to a :class:`PromptSpec`."""
    if name.startswith(HUB_PREFIX):
        raise PromptNotFound(f"{name!r} is a LangChain Hub prompt, not one of our files; resolve it with resolve_prompt()")
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


def family_of(name: str) -> str | None:
    """The family a prompt name belongs to; ``None`` for a hub prompt (it has none)."""
    if name.startswith(HUB_PREFIX):
        return None
    return get_spec(name).family


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


def choose_family(override: str | None, chat_template: str | None, model_name: str) -> str:
    """The family to use: the one of the user's prompt choice, else detected from the model."""
    chosen = family_of(override) if override else None
    return chosen or detect_family(chat_template, model_name)


def resolve_prompt(name: str, kind: str = "rag", *, cache_dir: Path | None = None) -> BasePromptTemplate:
    """A prompt template for ``name``: our files and aliases offline, ``hub:OWNER/NAME`` from the hub.

    Args:
        name: ``family``, ``family/kind``, an alias such as ``rlm/rag-prompt``, or ``hub:OWNER/NAME``.
        kind: the kind wanted when ``name`` does not say (``rag``, ``summarize``, ...).
        cache_dir: where pulled hub prompts are cached (required for ``hub:`` names).
    """
    if name.startswith(HUB_PREFIX):
        if cache_dir is None:
            raise HubPullError("a cache directory is needed to pull hub prompts")
        return pull_hub_prompt(name[len(HUB_PREFIX) :], cache_dir)
    return get_prompt(name, kind)


def _hub_cache_file(name: str, cache_dir: Path) -> Path:
    return cache_dir / "hub" / (name.replace("/", "__").replace(":", "@") + ".json")


def _load_prompt_manifest(manifest: dict, origin: str) -> BasePromptTemplate:
    """Deserialize a hub manifest, allowing langchain_core objects only, and insist on a prompt."""
    from langchain_core.load import load
    from langchain_core.prompts import BasePromptTemplate

    try:
        prompt = load(manifest, allowed_objects="core")
    except Exception as error:  # the loader raises several kinds on untrusted input
        raise HubPullError(f"{origin} is not a prompt this package can use: {error}") from error
    if not isinstance(prompt, BasePromptTemplate):
        raise HubPullError(f"{origin} holds a {type(prompt).__name__}, not a prompt template")
    return prompt


def pull_hub_prompt(name: str, cache_dir: Path) -> BasePromptTemplate:
    """Fetch a prompt from the LangChain Hub (online, on request only) and cache it.

    A cached copy is used without touching the network. Only ``langchain_core``
    objects are deserialized and the result must be a prompt template: a hub
    manifest is untrusted input.
    """
    cache_file = _hub_cache_file(name, cache_dir)
    if cache_file.is_file():
        return _load_prompt_manifest(json.loads(cache_file.read_text(encoding="utf-8")), str(cache_file))
    from langsmith import Client  # only for users who ask for the hub

    logger.info("pulling prompt %s from the LangChain Hub", name)
    try:
        commit = Client().pull_prompt_commit(name, dangerously_pull_public_prompt=True)
    except Exception as error:  # network, auth and not-found errors all land here
        raise HubPullError(
            f"could not pull {name!r} from the LangChain Hub ({error}). "
            "Are you online? Offline, use one of our prompts: rlm/rag-prompt, rlm/rag-prompt-llama, or a family name."
        ) from error
    prompt = _load_prompt_manifest(commit.manifest, f"hub prompt {name!r}")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_file, json.dumps(commit.manifest))
    return prompt
