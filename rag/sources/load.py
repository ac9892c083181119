"""Loading one source: read its bytes (file or URL) within the limits of LoadOptions, then parse them into Documents by kind.

Example::

    from rag.sources.load import LoadOptions, load_source
    loaded = load_source("/notes/a.md", LoadOptions())
    loaded.documents[0].metadata["title"]
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from langchain_core.documents import Document

from rag.errors import RagError
from rag.settings import Settings
from rag.sources.errors import LoadError, LoadFailure, UnsupportedSource
from rag.sources.expand import CONTENT_TYPE_KINDS, SUFFIX_KINDS, SUPPORTED_SUFFIXES, expand_inputs, is_url
from rag.sources.html import html_to_text
from rag.sources.pdf import parse_pdf
from rag.sources.text import decode_text, text_title

logger = logging.getLogger(__name__)

# Bump when loading or text extraction changes what a source turns into:
# sources indexed by an older version are re-read (unchanged chunks keep their vectors).
LOADER_VERSION = "2"
_SETTINGS = Settings.model_fields  # the defaults below are the settings' defaults, set in one place


@dataclass(frozen=True)
class LoadOptions:
    """What loading needs to know; small and picklable (it crosses into the loader process).

    Each field is the :class:`~rag.settings.Settings` field of the same name, and defaults to its default.
    """

    max_source_bytes: int = _SETTINGS["max_source_bytes"].default
    fetch_timeout: float = _SETTINGS["fetch_timeout"].default
    source_timeout: float = _SETTINGS["source_timeout"].default
    allow_private_network: bool = _SETTINGS["allow_private_network"].default
    strip_boilerplate: bool = _SETTINGS["strip_boilerplate"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadOptions:
        """The options ``settings`` ask for."""
        return cls(
            max_source_bytes=settings.max_source_bytes,
            fetch_timeout=settings.fetch_timeout,
            source_timeout=settings.source_timeout,
            allow_private_network=settings.allow_private_network,
            strip_boilerplate=settings.strip_boilerplate,
        )

    @property
    def signature(self) -> str:
        """Everything that changes a source's text, recorded with each indexed source."""
        return f"loader={LOADER_VERSION};boilerplate={'strip' if self.strip_boilerplate else 'keep'}"


@dataclass
class RawSource:
    source: str
    body: bytes
    kind: str
    charset: str | None = None  # declared by the server
    url: str | None = None  # final URL after redirects
    validators: tuple[str | None, str | None] | None = None  # a URL's (ETag, Last-Modified), for a conditional re-fetch
    not_modified: bool = False  # a conditional fetch got 304: no body, the source is as it was

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class LoadedSource:
    source: str
    kind: str
    title: str
    content_hash: str  # of the raw bytes
    documents: list[Document]


# --- reading --------------------------------------------------------------------------------------


def read_source(source: str, options: LoadOptions, validators: tuple[str | None, str | None] | None = None) -> RawSource:
    """The raw bytes of a file or URL, within ``options.max_source_bytes``.

    ``validators``: a URL's (ETag, Last-Modified) from its last fetch; when the server
    answers the conditional request with 304 the result has ``not_modified`` set and no bytes.
    """
    if is_url(source):
        return _read_url(source, options, validators)
    return _read_file(Path(source), options)


def _read_file(path: Path, options: LoadOptions) -> RawSource:
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise UnsupportedSource(
            f"unsupported file type {path.suffix or '(no extension)'}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise LoadError("not a regular file")
        if size > options.max_source_bytes:
            raise LoadError(
                f"file is {size / 1e6:.1f} MB, over the {options.max_source_bytes / 1e6:.1f} MB limit "
                "(raise max_source_bytes / --max-source-mb to index it)"
            )
        with path.open("rb") as handle:
            body = handle.read(options.max_source_bytes + 1)
    except OSError as error:
        raise LoadError(f"cannot read file: {error.strerror or error}") from None
    if len(body) > options.max_source_bytes:
        raise LoadError(f"file grew over the {options.max_source_bytes / 1e6:.1f} MB limit while being read")
    return RawSource(str(path), body, kind)


def _read_url(url: str, options: LoadOptions, validators: tuple[str | None, str | None] | None = None) -> RawSource:
    from rag.sources.web import FetchError, FetchPolicy, fetch

    policy = FetchPolicy.from_settings(options)
    try:
        page = fetch(url, policy, validators)
    except FetchError as error:
        raise LoadError(str(error)) from None
    if page.not_modified:
        return RawSource(url, b"", "", url=page.url, validators=page.validators, not_modified=True)
    kind = CONTENT_TYPE_KINDS.get(page.content_type)
    if kind is None:
        kind = SUFFIX_KINDS.get(PurePosixPath(unquote(urlsplit(page.url).path)).suffix.lower())
    if kind is None and page.content_type in ("", "application/octet-stream"):
        kind = "html" if page.body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")) else None
    if kind is None:
        raise UnsupportedSource(f"unsupported content type {page.content_type or '(none)'} at {page.url}")
    return RawSource(url, page.body, kind, charset=page.charset, url=page.url, validators=page.validators)


# --- parsing --------------------------------------------------------------------------------------


def load_source(source: str, options: LoadOptions | None = None) -> LoadedSource:
    """Read and parse one source; raises :class:`LoadError` with the reason."""
    options = options or LoadOptions()
    return parse_source(read_source(source, options), options)


def parse_source(raw: RawSource, options: LoadOptions) -> LoadedSource:
    """Turn a source's bytes into documents (one per PDF page, else one)."""
    if not raw.body.strip():
        raise LoadError("empty file" if not raw.body else "no text (only whitespace)")
    if raw.kind == "pdf":
        title, pages = parse_pdf(raw.body)
        fallback = _name_title(raw)
        title = title or fallback
        documents = [
            Document(page_content=text, metadata={"source": raw.source, "title": title, "kind": "pdf", "page": number})
            for number, text in pages
        ]
    else:
        if raw.kind == "html":
            title, text = html_to_text(raw.body, raw.charset, options.strip_boilerplate)
        else:
            text, _encoding = decode_text(raw.body, raw.charset)
            title = text_title(text, raw.kind)
        title = title or _name_title(raw)
        if not text.strip():
            raise LoadError("no text found" + (" after removing page boilerplate" if raw.kind == "html" else ""))
        documents = [Document(page_content=text, metadata={"source": raw.source, "title": title, "kind": raw.kind})]
    if raw.url and raw.url != raw.source:
        for document in documents:
            document.metadata["url"] = raw.url
    return LoadedSource(raw.source, raw.kind, title, raw.content_hash, documents)


def _name_title(raw: RawSource) -> str:
    if is_url(raw.source):
        parts = urlsplit(raw.url or raw.source)
        name = PurePosixPath(unquote(parts.path)).stem
        return name or parts.hostname or raw.source
    return Path(raw.source).stem


# --- convenience ------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def load_sources(
    inputs: Iterable[str | os.PathLike],
    options: LoadOptions | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> LoadResult:
    """Load everything under ``inputs`` in this process, without limits; failures are collected, not raised.

    :func:`rag.indexing.ingest` and :func:`rag.answer.load_documents` load in a separate,
    time- and memory-limited process instead (:mod:`rag.sources.process`).
    """
    options = options or LoadOptions()
    found = expand_inputs(inputs, include, exclude, include_hidden)
    result = LoadResult(failures=list(found.failures), sources=list(found.sources))
    for source in found.sources:
        try:
            result.documents.extend(load_source(source, options).documents)
        except RagError as error:
            logger.warning("could not load %s: %s", source, error)
            result.failures.append(LoadFailure(source, str(error)))
    return result
