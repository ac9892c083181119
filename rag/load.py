"""Documents from URLs, files and folders.

A source is an absolute file path or an ``http(s)`` URL. Reading a source gives
its raw bytes (bounded by ``max_source_bytes``); parsing turns them into
LangChain ``Document`` objects, one per PDF page and one for anything else, with
``source``, ``title`` and ``kind`` metadata (and ``page`` for PDFs). A source
that cannot be read raises :class:`LoadError` with a reason a user can act on.

- Text (``.txt``, ``.md``, ``.rst``): the encoding is taken from a byte-order
  mark, else UTF-16 when every other byte is NUL, else UTF-8, else detected;
  decoding is strict, so no character is ever dropped silently, and binary data
  is refused.
- HTML: the charset from the HTTP header, a BOM or ``<meta charset>``; scripts
  and styles always go, and site boilerplate (``nav``, ``header``, ``footer``,
  ``aside``, navigation roles and classes) goes unless ``strip_boilerplate`` is
  off. What is left becomes Markdown-like text (headings, list items,
  paragraphs) so the splitter can cut at its structure.
- PDF: pypdf, one document per page; encrypted (with a password) and truncated
  files are refused with that reason.

Example::

    from rag.load import LoadOptions, expand_inputs, load_source
    found = expand_inputs(["notes/", "https://example.org/"], include=["*.md"])
    loaded = load_source(found.sources[0], LoadOptions())
    loaded.documents[0].metadata["title"]
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from langchain_core.documents import Document

from rag.errors import RagError

logger = logging.getLogger(__name__)

SUFFIX_KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
CONTENT_TYPE_KINDS = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/x-rst": "rst",
    "application/pdf": "pdf",
}
SUPPORTED_SUFFIXES = frozenset(SUFFIX_KINDS)
# Bump when loading or text extraction changes what a source turns into:
# sources indexed by an older version are re-read (unchanged chunks keep their vectors).
LOADER_VERSION = "2"


class LoadError(RagError, ValueError):
    """A source could not be loaded; the message is the reason."""


class UnsupportedSource(LoadError):
    """The source's type cannot be read."""


@dataclass(frozen=True)
class LoadFailure:
    source: str
    reason: str

    @property
    def display(self) -> str:
        """``source: reason`` on one line, for plain-text output (see :func:`display_form`)."""
        return f"{display_form(self.source)}: {display_form(self.reason)}"


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def display_form(text: str) -> str:
    """``text`` as one printable line: control characters (newlines, tabs, terminal escapes), line separators
    and undecodable bytes of file names are written as Python escapes (``\\n``, ``\\x1b``, ``\\udcff``).

    For plain-text output of sources and reasons; JSON output keeps the text as it is.
    """
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)


@dataclass(frozen=True)
class LoadOptions:
    """What loading needs to know; small and picklable (it crosses into the loader process)."""

    max_source_bytes: int = 20_000_000
    fetch_timeout: float = 15.0
    source_timeout: float = 60.0
    allow_private_network: bool = False
    strip_boilerplate: bool = True

    @classmethod
    def from_settings(cls, settings) -> LoadOptions:
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


@dataclass
class ExpandedInputs:
    """Sources found under the inputs, the inputs that failed, and the folders walked."""

    sources: list[str] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# --- finding sources ------------------------------------------------------------------------------


def is_url(text: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


def normalize_url(url: str) -> str:
    """The URL as a source id: scheme and host lower-cased, fragment dropped."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def expand_inputs(
    inputs: Iterable[str | os.PathLike],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> ExpandedInputs:
    """Turn paths, folders and URLs into a sorted, duplicate-free list of sources.

    Folders are walked recursively (symlinked folders followed once, so loops end);
    hidden files and folders are skipped unless ``include_hidden``; only supported
    file types are taken, narrowed by ``include``/``exclude`` globs. A glob without
    ``/`` matches file or folder names (``*.md``, ``drafts``); one with ``/`` matches
    the path relative to the folder given (``docs/*.md``; ``*`` also crosses ``/``).
    Files named directly are taken whatever their type, so that an unsupported one
    is reported. A symbolic link that leads back to itself, named or found in a
    folder (unless hidden or excluded), is a failure: a symlink loop.
    """
    found = ExpandedInputs()
    seen: set[str] = set()

    def add(source: str) -> None:
        if source not in seen:
            seen.add(source)
            found.sources.append(source)

    for item in inputs:
        text = os.fspath(item)
        if is_url(text):
            try:
                add(normalize_url(text))
            except ValueError as error:  # e.g. an unclosed [IPv6 address
                found.failures.append(LoadFailure(text, f"not a valid URL: {error}"))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            folder = path.resolve()
            found.folders.append(str(folder))
            before = len(found.sources)
            files, loops = _walk_folder(folder, include, exclude, include_hidden)
            for file in files:
                add(str(file))
            found.failures.extend(LoadFailure(str(loop), SYMLINK_LOOP) for loop in loops)
            if len(found.sources) == before:
                found.failures.append(LoadFailure(str(folder), _nothing_found_reason(include, exclude)))
        elif path.exists():
            add(str(path.resolve()))
        elif _is_symlink_loop(path):
            found.failures.append(LoadFailure(str(Path(os.path.abspath(path))), SYMLINK_LOOP))
        else:
            absolute = str(Path(os.path.abspath(path)))
            found.missing.append(absolute)
            found.failures.append(LoadFailure(absolute, "no such file or folder"))
    return found


def _nothing_found_reason(include: Sequence[str], exclude: Sequence[str]) -> str:
    reason = f"no supported files found (types: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
    if include:
        reason += f"; include: {', '.join(include)}"
    if exclude:
        reason += f"; exclude: {', '.join(exclude)}"
    return reason + ")"


def iter_files(
    folder: Path, include: Sequence[str] = (), exclude: Sequence[str] = (), include_hidden: bool = False
) -> Iterator[Path]:
    """Supported files below ``folder`` (resolved paths, sorted), see :func:`expand_inputs`."""
    yield from _walk_folder(folder, include, exclude, include_hidden)[0]


def _walk_folder(folder: Path, include: Sequence[str], exclude: Sequence[str], include_hidden: bool) -> tuple[list[Path], list[Path]]:
    """(supported files, resolved and sorted; symlink loops) below ``folder``.

    A link that loops is neither file nor folder, so type and ``include`` cannot say
    whether it was wanted: every one not hidden or excluded is reported.
    """
    visited: set[tuple[int, int]] = set()
    results: set[Path] = set()
    loops: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=lambda error: logger.warning("skipping %s", error)):
        try:
            stat = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a second way in
            dirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        relative_root = PurePosixPath(Path(root).relative_to(folder).as_posix())
        dirs[:] = sorted(
            name
            for name in dirs
            if (include_hidden or not name.startswith("."))
            and not _matches_any(relative_root / name, exclude)
        )
        for name in sorted(files):
            if not include_hidden and name.startswith("."):
                continue
            relative = relative_root / name
            if _matches_any(relative, exclude):
                continue
            path = Path(root) / name
            wanted = Path(name).suffix.lower() in SUPPORTED_SUFFIXES and not (include and not _matches_any(relative, include))
            try:
                if wanted and path.is_file():
                    results.add(path.resolve())
                elif _is_symlink_loop(path):
                    loops.append(path)
            except OSError:
                continue
    return sorted(results), loops


SYMLINK_LOOP = "symlink loop: following the link leads back to it, never to a file or folder"


def _is_symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _matches_any(relative: PurePosixPath, patterns: Sequence[str]) -> bool:
    text = str(relative).removeprefix("./")
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(text, pattern.removeprefix("./")) or fnmatch.fnmatchcase(text, pattern.removeprefix("**/")):
                return True
        elif fnmatch.fnmatchcase(relative.name, pattern):
            return True
    return False


# --- reading --------------------------------------------------------------------------------------


def read_source(source: str, options: LoadOptions) -> RawSource:
    """The raw bytes of a file or URL, within ``options.max_source_bytes``."""
    if is_url(source):
        return _read_url(source, options)
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


def _read_url(url: str, options: LoadOptions) -> RawSource:
    from rag.web import FetchError, FetchPolicy, fetch

    policy = FetchPolicy(
        allow_private_network=options.allow_private_network,
        max_bytes=options.max_source_bytes,
        timeout=options.fetch_timeout,
        deadline=options.source_timeout,
    )
    try:
        page = fetch(url, policy)
    except FetchError as error:
        raise LoadError(str(error)) from None
    kind = CONTENT_TYPE_KINDS.get(page.content_type)
    if kind is None:
        kind = SUFFIX_KINDS.get(PurePosixPath(unquote(urlsplit(page.url).path)).suffix.lower())
    if kind is None and page.content_type in ("", "application/octet-stream"):
        kind = "html" if page.body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")) else None
    if kind is None:
        raise UnsupportedSource(f"unsupported content type {page.content_type or '(none)'} at {page.url}")
    return RawSource(url, page.body, kind, charset=page.charset, url=page.url)


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
        title, pages = _parse_pdf(raw.body)
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
            title = _text_title(text, raw.kind)
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


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# What browsers do (WHATWG Encoding): these labels mean windows-1252.
_WINDOWS_1252_LABELS = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii", "cp819", "windows-1252", "cp1252"}


def decode_text(raw: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode bytes to text strictly; returns (text, encoding).

    Order: byte-order mark, UTF-16 without one (NULs in every other byte), the
    declared charset, UTF-8, then detection (charset-normalizer). Raises
    :class:`LoadError` for binary data or bytes that no encoding decodes without loss.
    """
    if not raw:
        raise LoadError("empty file")
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return _strict_decode(raw, encoding), encoding
    byte_order = _utf16_byte_order(raw)
    if byte_order is not None:  # before UTF-8: all-ASCII UTF-16 is valid UTF-8 too, NULs and all
        encoding = f"utf-16-{byte_order}"
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            pass
        else:
            _refuse_binary(text)
            return text, encoding
    candidates: list[str] = []
    if declared:
        label = declared.strip().lower()
        candidates.append("cp1252" if label in _WINDOWS_1252_LABELS else label)
    candidates.append("utf-8")
    for encoding in candidates:
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        _refuse_binary(text)
        return text, encoding
    if b"\x00" in raw[:65536] and _utf16_byte_order(raw) is None:
        raise LoadError("binary data, not text (NUL bytes); is the file extension right?")
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        raise LoadError("binary data, not text (no text encoding fits); is the file extension right?")
    best = matches[0]
    encoding = best.encoding
    # Short Western European texts are easily mis-detected (cp775, mac_roman, ...); when
    # cp1252, what Windows editors write, fits about as well, take it.
    if any(match.encoding == "cp1252" and match.chaos <= best.chaos + 0.1 for match in matches):
        encoding = "cp1252"
    text = _strict_decode(raw, encoding)
    _refuse_binary(text)
    return text, encoding


def _strict_decode(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise LoadError(f"not valid {encoding} text at byte {error.start}: {error.reason}") from None


def _utf16_byte_order(raw: bytes) -> str | None:
    """``"le"`` or ``"be"`` when NULs fill one byte of many pairs and hardly any of the other (UTF-16 text), else ``None``."""
    sample = raw[:4096]
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = max(len(sample) // 2, 1)
    if max(even_nuls, odd_nuls) <= 0.3 * half or min(even_nuls, odd_nuls) >= 0.05 * half:
        return None
    return "le" if odd_nuls > even_nuls else "be"  # little-endian ASCII: the letter, then NUL


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _refuse_binary(text: str) -> None:
    sample = text[:65536]
    if sample and len(_CONTROL.findall(sample)) > max(2, len(sample) // 100):
        raise LoadError("binary data, not text (control characters); is the file extension right?")


def _text_title(text: str, kind: str) -> str | None:
    lines = text[:20000].splitlines()
    if kind == "markdown":
        for index, line in enumerate(lines):
            if line.startswith("# "):
                return line[2:].strip().strip("#").strip() or None
            if index + 1 < len(lines) and line.strip() and re.fullmatch(r"=+\s*", lines[index + 1]):
                return line.strip()
    if kind == "rst":
        for index, line in enumerate(lines[:-1]):
            underline = lines[index + 1]
            if line.strip() and re.fullmatch(r"([=\-~`#*^\"'+:.])\1{2,}\s*", underline) and len(underline.rstrip()) >= len(line.strip()):
                return line.strip()
    if kind == "text":
        # A short first line standing alone, as in "Title\n\nBody ...".
        if len(lines) > 1 and 0 < len(lines[0].strip()) <= 100 and not lines[1].strip():
            return lines[0].strip()
    return None


# --- HTML -----------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "embed", "canvas", "head", "select", "button", "input", "textarea"}
_BOILERPLATE_TAGS = {"nav", "header", "footer", "aside", "form", "dialog", "menu"}
_BOILERPLATE_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "dialog", "alert"}
# Matched against whole class names and ids only ("site-nav", "sidebar"), never parts of
# longer ones ("sidebar-layout" may wrap the whole page).
_BOILERPLATE_NAMES = re.compile(
    r"(?:site|page|main|global|top|primary|secondary)?[-_]?"
    r"(?:nav|navbar|navigation|menu|sidebar|breadcrumbs?|footer|masthead|cookie-?banner|cookies?|skip-?links?)",
    re.IGNORECASE,
)
_BLOCK_TAGS = {
    "address", "article", "blockquote", "body", "dd", "details", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "hr", "main", "ol", "p", "section", "summary", "table", "tbody", "thead", "tfoot", "ul", "caption", "center",
}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_INTERNAL_DTD = re.compile(r"<!DOCTYPE[^\[>]*\[.*?\]\s*>", re.IGNORECASE | re.DOTALL)


def html_to_text(raw: bytes, declared_charset: str | None = None, strip_boilerplate: bool = True) -> tuple[str | None, str]:
    """(title, text) of an HTML page; the text is Markdown-like (``#`` headings, ``-`` items)."""
    from bs4 import BeautifulSoup

    charset = declared_charset
    if charset is None and not raw.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        match = _META_CHARSET.search(raw[:4096])
        charset = match.group(1).decode("ascii").lower() if match else None
    text, _encoding = decode_text(raw, charset)
    # An internal DTD subset (the "billion laughs" entity bomb lives there) is never
    # expanded by this parser; drop it so its text does not leak into the page.
    text = _INTERNAL_DTD.sub("", text[:65536], count=1) + text[65536:]
    soup = BeautifulSoup(text, "html.parser")
    title = None
    if soup.title is not None:
        title = " ".join(soup.title.get_text(" ").split()) or None
    body = _render_blocks(_content_root(soup), True) if strip_boilerplate else ""
    if not body:  # nothing but boilerplate: better the whole page than nothing
        body = _render_blocks(soup.body or soup, False)
    if title is None:
        match = re.search(r"^# (.+)$", body, re.MULTILINE)
        title = match.group(1).strip() if match else None
    return title, body


def _content_root(soup):
    for candidate in (soup.find("main"), soup.find(attrs={"role": "main"})):
        if candidate is not None:
            return candidate
    articles = soup.find_all("article", limit=2)
    if len(articles) == 1:
        return articles[0]
    return soup.body or soup


def _is_boilerplate(tag, inside_article: bool) -> bool:
    if tag.name in _BOILERPLATE_TAGS:
        # An article's own header/footer (its title, byline) belongs to it.
        return not (inside_article and tag.name in ("header", "footer"))
    attrs = tag.attrs or {}
    role = attrs.get("role")
    if isinstance(role, str) and role.lower() in _BOILERPLATE_ROLES:
        return True
    if attrs.get("aria-hidden") == "true" or "hidden" in attrs:
        return True
    classes = attrs.get("class") or []
    names = [*(classes.split() if isinstance(classes, str) else classes), attrs.get("id") or ""]
    return any(_BOILERPLATE_NAMES.fullmatch(name) for name in names if name)


def _render_blocks(root, strip_boilerplate: bool) -> str:
    """Walk the tree without recursion (deeply nested pages are fine) and write Markdown-like text."""
    from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    skipped_strings = (Comment, Declaration, Doctype, ProcessingInstruction)
    out = _TextWriter()
    stack: list[tuple[object, bool, bool]] = [(root, False, False)]  # node, exiting, inside an article
    while stack:
        node, exiting, in_article = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, skipped_strings):
                out.text(str(node))
            continue
        if not isinstance(node, Tag):
            continue
        name = node.name
        if exiting:
            if name == "pre":
                out.end_pre()
            elif name in ("li", "tr"):
                out.line()
            elif name in _BLOCK_TAGS or name in _HEADINGS:
                out.paragraph()
            continue
        if name in _SKIP_TAGS:
            continue
        if strip_boilerplate and node is not root and _is_boilerplate(node, in_article):
            continue
        if name in _HEADINGS:
            out.paragraph()
            out.raw("#" * _HEADINGS[name] + " ")
        elif name == "li":
            out.line()
            out.raw("- ")
        elif name == "br":
            out.line()
        elif name == "pre":
            out.start_pre()
        elif name in ("td", "th"):
            out.raw(" | ")
        elif name == "tr":
            out.line()
        elif name in _BLOCK_TAGS:
            out.paragraph()
        elif name == "img" and node.get("alt"):
            out.text(f" {node['alt']} ")
        stack.append((node, True, in_article))
        child_in_article = in_article or name == "article"
        stack.extend((child, False, child_in_article) for child in reversed(node.contents))
    return out.result()


class _TextWriter:
    """Collects text pieces; collapses whitespace outside ``<pre>``; joins blocks with blank lines."""

    _PRE = re.compile("\ue000(\\d+)\ue001")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pre_blocks: list[list[str]] = []
        self.pre_depth = 0

    def text(self, value: str) -> None:
        value = value.replace("\ue000", "").replace("\ue001", "")
        if self.pre_depth:
            self.pre_blocks[-1].append(value.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            self.parts.append(re.sub(r"\s+", " ", value))

    def raw(self, value: str) -> None:
        if not self.pre_depth:
            self.parts.append(value)

    def line(self) -> None:
        self._newlines(1)

    def paragraph(self) -> None:
        self._newlines(2)

    def _newlines(self, count: int) -> None:
        """End the current line or paragraph unless it already ends so (spaces aside)."""
        if self.pre_depth:
            return
        tail = "".join(self.parts[-4:]).rstrip(" ")
        have = len(tail) - len(tail.rstrip("\n"))
        if have < count:
            self.parts.append("\n" * (count - have))

    def start_pre(self) -> None:
        if not self.pre_depth:
            self.pre_blocks.append([])
            self.parts.append(f"\n\n\ue000{len(self.pre_blocks) - 1}\ue001\n\n")
        self.pre_depth += 1

    def end_pre(self) -> None:
        self.pre_depth = max(0, self.pre_depth - 1)

    def result(self) -> str:
        text = "\n".join(line.strip() for line in "".join(self.parts).split("\n"))
        text = re.sub(r"^(#+ |- )\s+", r"\1", text, flags=re.MULTILINE)
        text = re.sub(r"^(?:#+|-)$", "", text, flags=re.MULTILINE)  # empty headings and items
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        return self._PRE.sub(lambda match: "".join(self.pre_blocks[int(match.group(1))]).strip("\n"), text)


# --- PDF ------------------------------------------------------------------------------------------


def _parse_pdf(body: bytes) -> tuple[str | None, list[tuple[int, str]]]:
    """(title, [(page number from 1, text)]) of a PDF; refuses truncated and encrypted files."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

    if not body.lstrip()[:5].startswith(b"%PDF-"):
        raise LoadError("not a PDF file (no %PDF- header)")
    if b"%%EOF" not in body[-2048:]:
        raise LoadError("truncated or damaged PDF (no %%EOF marker at the end)")
    try:
        reader = PdfReader(io.BytesIO(body), strict=False)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")  # many PDFs only restrict printing/copying
            except (NotImplementedError, PdfReadError) as error:
                raise LoadError(f"encrypted PDF that cannot be opened: {error}") from None
            if not unlocked:
                raise LoadError("encrypted PDF: it needs a password; save a copy without one to index it")
        title = None
        try:
            metadata = reader.metadata
            title = (metadata.title or "").strip() or None if metadata else None
        except (PdfReadError, PdfStreamError, KeyError, TypeError, ValueError):
            title = None
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            if text.strip():
                pages.append((number, text))
    except LoadError:
        raise
    except FileNotDecryptedError:
        raise LoadError("encrypted PDF: it needs a password; save a copy without one to index it") from None
    except (PdfReadError, PdfStreamError, KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as error:
        raise LoadError(f"damaged PDF: {type(error).__name__}: {str(error)[:200]}") from None
    if not pages:
        raise LoadError("no extractable text in the PDF (a scan? OCR it first)")
    return title, pages


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
    time- and memory-limited process instead (:mod:`rag.loader_process`).
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
