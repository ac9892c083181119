"""Documents from local files and folders (and, in :mod:`rag.load`'s later stages, URLs).

Each source becomes one or more LangChain ``Document`` objects with ``source``
(absolute path or URL) and ``title`` metadata. A source that cannot be read is
returned as a :class:`LoadFailure` with its reason; it never stops the others.

Example::

    from rag.load import load_sources
    result = load_sources(["data/"])
    result.documents, result.failures
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from langchain_core.documents import Document

from rag.errors import RagError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES


class UnsupportedSource(RagError, ValueError):
    """The source's type cannot be read."""


@dataclass(frozen=True)
class LoadFailure:
    source: str
    reason: str


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def iter_files(folder: Path) -> Iterator[Path]:
    """Supported files below ``folder``, sorted, hidden ones skipped."""
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
            yield path


def load_file(path: Path) -> list[Document]:
    """Read one file into documents; raises with a readable reason on failure."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedSource(f"unsupported file type {suffix or '(none)'}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    source = str(path.resolve())
    if suffix in HTML_SUFFIXES:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(text, "html.parser")
        title = soup.title.get_text(strip=True) if soup.title else path.stem
        text = soup.get_text("\n", strip=True)
    else:
        title = _first_heading(text) or path.stem
    return [Document(page_content=text, metadata={"source": source, "title": title})]


def _first_heading(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def load_sources(inputs: Iterable[str | Path]) -> LoadResult:
    """Load files and folders; failures are collected, not raised."""
    result = LoadResult()
    for item in inputs:
        path = Path(item).expanduser()
        files = list(iter_files(path)) if path.is_dir() else [path]
        for file in files:
            source = str(file.resolve())
            result.sources.append(source)
            try:
                result.documents.extend(load_file(file))
            except (OSError, ValueError) as error:
                logger.warning("could not load %s: %s", source, error)
                result.failures.append(LoadFailure(source, str(error)))
    return result
