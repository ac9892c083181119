"""Section-aware chunking around LangChain's ``RecursiveCharacterTextSplitter``.

Markdown, HTML (which :mod:`rag.sources.html` turns into Markdown-like text) and
reStructuredText are first cut into sections at their headings; each section is split
with the kind's ``RecursiveCharacterTextSplitter`` (code fences, rules, paragraphs,
lines, words), and a chunk under a minimum size merges with its neighbour (never a
heading-only chunk). Each chunk's ``section`` metadata is its heading path
(``Tutorial > 12. Virtual Environments > 12.2 Creating``). :func:`chunk_heading` is the
page title and that path; :func:`embedding_text` puts it in front of the chunk, and the
embedder gets that text's first tokens (:func:`first_tokens`), while the keyword index keeps
heading and chunk apart. The chunk text itself is what is shown and cited. Header-link
marks (``¶``) go. Plain text and PDF pages have no sections and are cut at paragraphs,
lines, then words. Every chunk carries ``start_index`` and ``chunk_hash`` (SHA-256 of its
:func:`embedding_text`).

Example::

    from rag.split import split_documents
    chunks = split_documents(documents, chunk_size=500, chunk_overlap=0)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from langchain_core.documents import Document

from rag.errors import RagError

# Recorded with each collection; bump when the separators or the sectioning change.
SPLITTER_ID = "sections-v3"  # v2: a heading alone is never a chunk (found by tests/fuzz); v3: site titles (_same_heading)
LEGACY_SPLITTER_ID = "recursive-v2"  # before issue 15: no sections, the chunk text embedded alone
SECTION_SEPARATOR = " > "

_MARKS = re.compile(r"[ \t]*[\u00b6\uf0c1\U0001f517][ \t]*(?=\n|$)|[\u200b\u200c\u200d\ufeff]")
_MD_HEADING = re.compile(r"(#{1,6})[ \t]+(\S.*?)[ \t#]*$")
_RST_ADORNMENT = re.compile(r"([=\-`:'\"~^_*+#<>.])\1{2,}[ \t]*$")
_FENCE = re.compile(r"^(```|~~~)")
_WORD = re.compile(r"\w+")


class BadSplitterSettings(RagError, ValueError):
    """chunk_size / chunk_overlap do not make sense together."""


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_splitter(kind: str, chunk_size: int = 500, chunk_overlap: int = 0):
    """The splitter for a document kind (``markdown``, ``html``, ``rst``, ``text``, ``pdf``)."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    if chunk_overlap >= chunk_size:
        raise BadSplitterSettings(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    language = {"markdown": Language.MARKDOWN, "html": Language.MARKDOWN, "rst": Language.RST}.get(kind)
    if language is None:
        return RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    return RecursiveCharacterTextSplitter.from_language(
        language, chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )


def embedding_text(text: str, metadata: dict) -> str:
    """A chunk's heading (title and section path), then its text: what its vector is computed from.

    Chunks without a ``section`` key (made before sections existed) are embedded as they are.
    The embedder is given its first ``Settings.embed_tokens`` tokens (:func:`first_tokens`).
    """
    heading = chunk_heading(metadata)
    return f"{heading}\n\n{text}" if heading else text


def chunk_heading(metadata: dict) -> str:
    """A chunk's page title and section path (``Title > Section > Subsection``); ``""`` without a ``section`` key."""
    if "section" not in metadata:
        return ""
    title = str(metadata.get("title") or "").strip()
    path = [part for part in str(metadata.get("section") or "").split(SECTION_SEPARATOR) if part]
    if title and path and _same_heading(path[0], title):
        path = path[1:]
    return SECTION_SEPARATOR.join([title, *path] if title else path)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def first_tokens(text: str, limit: int) -> str:
    """``text`` cut to the whole words holding its first ``limit`` tokens, joined by single spaces;
    unchanged when shorter (or ``limit`` is 0).

    A token is what a BERT tokenizer splits text into before word pieces: a run of letters
    and digits, or one punctuation mark (``--ignore-unmatch`` is 5, ``git-rm(1)`` 6). This is
    what the embedder is given of a chunk (``Settings.embed_tokens``): all-MiniLM-L6-v2's time
    grows with its word pieces, and a cut counted in words let option lists and code through
    at twice the cost of prose.
    """
    if limit <= 0:
        return text
    kept: list[str] = []
    count = 0
    for word in text.split():
        count += len(_TOKEN.findall(word)) or 1
        if count > limit and kept:
            return " ".join(kept)
        kept.append(word)
    return text


def _same_heading(heading: str, title: str) -> bool:
    """Whether a page's first heading names what its title does: equal, one the start of the other,
    or two thirds of the shorter's words (numbers aside) in the other: a site's "Git - git-stash
    Documentation" and the page's "git-stash(1) Manual Page", not "Python 3.12 documentation" and
    "Python 3.12 release notes"."""
    heading, title = heading.casefold(), title.casefold()
    if heading == title or heading.startswith(title) or title.startswith(heading):
        return True
    heading_words, title_words = ({word for word in _WORD.findall(text) if not word.isdigit()} for text in (heading, title))
    shorter = min(len(heading_words), len(title_words))
    return shorter > 0 and 3 * len(heading_words & title_words) >= 2 * shorter


@dataclass
class _Piece:
    path: tuple[str, ...]
    text: str
    start: int
    body: int  # where the text under the section's heading begins: a piece ending before it is the heading alone


def split_documents(
    documents: list[Document], chunk_size: int = 500, chunk_overlap: int = 0, *, sections: bool = True
) -> list[Document]:
    """Split documents into chunks carrying ``section``, ``start_index`` and ``chunk_hash`` metadata.

    Each document's ``kind`` metadata picks the separators (see :func:`build_splitter`).
    ``sections=False`` is the splitter before issue 15 (no sections, no merging, no
    ``section`` key), kept for comparison in ``benchmarks/bench_retrieval.py``.
    """
    splitters: dict[str, object] = {}
    chunks: list[Document] = []
    for document in documents:
        kind = document.metadata.get("kind", "text")
        if kind not in splitters:
            splitters[kind] = build_splitter(kind, chunk_size, chunk_overlap)
        if not sections:
            for chunk in splitters[kind].split_documents([document]):
                if chunk.page_content.strip():
                    chunk.metadata["chunk_hash"] = content_hash(chunk.page_content)
                    chunks.append(chunk)
            continue
        text = _MARKS.sub("", document.page_content)
        pieces = _split_sections(_sections(text, kind), splitters[kind])
        for piece in _merge_small(pieces, chunk_size, text):
            metadata = {**document.metadata, "section": SECTION_SEPARATOR.join(piece.path), "start_index": piece.start}
            metadata["chunk_hash"] = content_hash(embedding_text(piece.text, metadata))
            chunks.append(Document(page_content=piece.text, metadata=metadata))
    return chunks


def _sections(text: str, kind: str) -> list[_Piece]:
    """``text`` cut at its headings: (heading path, section text with its heading line, offset)."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    headings = _rst_headings(lines) if kind == "rst" else _markdown_headings(lines) if kind in ("markdown", "html") else []
    result: list[_Piece] = []
    stack: list[tuple[int, str]] = []
    bounds = [(start, end, level, title) for start, end, level, title in headings]
    first = bounds[0][0] if bounds else len(lines)
    if "".join(lines[:first]).strip():
        result.append(_Piece((), "".join(lines[:first]), 0, 0))
    for number, (start, end, level, title) in enumerate(bounds):
        stop = bounds[number + 1][0] if number + 1 < len(bounds) else len(lines)
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        body = "".join(lines[end:stop])
        if body.strip():  # a heading with nothing under it lives on in its subsections' paths
            result.append(_Piece(tuple(name for _, name in stack), "".join(lines[start:stop]), offsets[start], offsets[end]))
    return result


def _markdown_headings(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """(first line, line after, level, title) of ``#`` headings outside code fences, set off by blank lines."""
    found = []
    fenced = False
    for number, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _MD_HEADING.match(line.rstrip("\n"))
        if not match:
            continue
        before = number == 0 or not lines[number - 1].strip()
        after = number + 1 >= len(lines) or not lines[number + 1].strip()
        if before and after:  # "# ... hack hack ..." inside an unfenced shell example is not a heading
            found.append((number, number + 1, len(match.group(1)), _clean_title(match.group(2))))
    return found


def _rst_headings(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """reStructuredText section titles (underlined, optionally overlined); levels in order of first use."""
    styles: list[tuple[str, bool]] = []
    found = []
    number = 0
    while number + 1 < len(lines):
        title, under = lines[number].rstrip(), lines[number + 1].rstrip()
        over = number > 0 and _RST_ADORNMENT.match(lines[number - 1].rstrip() or " ")
        adornment = _RST_ADORNMENT.match(under)
        if title.strip() and not _RST_ADORNMENT.match(title) and adornment and len(under) >= len(title.strip()):
            style = (under[0], bool(over))
            if style not in styles:
                styles.append(style)
            start = number - 1 if over else number
            found.append((start, number + 2, styles.index(style) + 1, _clean_title(title.strip())))
            number += 2
            continue
        number += 1
    return found


def _clean_title(title: str) -> str:
    return " ".join(title.replace(SECTION_SEPARATOR.strip(), "-").split())


def _split_sections(sections: list[_Piece], splitter) -> list[_Piece]:
    pieces = []
    for section in sections:
        for part in splitter.create_documents([section.text]):
            if part.page_content.strip():
                start = section.start + part.metadata.get("start_index", 0)
                pieces.append(_Piece(section.path, part.page_content, start, section.body))
    return pieces


def _merge_small(pieces: list[_Piece], chunk_size: int, text: str) -> list[_Piece]:
    """Merge pieces under a quarter of ``chunk_size`` into a neighbour, up to 1.5 chunk sizes.

    First inside each section (a section's small first piece, often its heading alone, joins
    the piece after it; other small pieces the one before); then consecutive sections pack into
    one chunk while they fit in ``chunk_size`` (as the recursive splitter packs paragraphs), a
    small one even beyond, under their common heading path. A heading alone counts as small
    whatever its length; one that fits nowhere goes (its title is in the section path).
    """
    minimum, most = max(1, chunk_size // 4), chunk_size * 3 // 2

    def heading_only(piece: _Piece) -> bool:
        return not text[piece.body : piece.start + len(piece.text)].strip()

    def small(piece: _Piece) -> bool:
        return len(piece.text) < minimum or heading_only(piece)

    def join(first: _Piece, second: _Piece) -> _Piece:
        end = max(first.start + len(first.text), second.start + len(second.text))
        return _Piece(_common(first.path, second.path), text[first.start : end], first.start, first.body)

    def span(first: _Piece, second: _Piece) -> int:
        return max(first.start + len(first.text), second.start + len(second.text)) - first.start

    inside: list[_Piece] = []
    carry: _Piece | None = None
    for number, piece in enumerate(pieces):
        if carry is not None:
            piece, carry = join(carry, piece), None
        following = pieces[number + 1] if number + 1 < len(pieces) else None
        starts = not inside or inside[-1].path != piece.path
        if small(piece) and following is not None and following.path == piece.path:
            if starts or span(inside[-1], piece) > most:
                if span(piece, following) <= most:
                    carry = piece
                    continue
        if inside and not starts and small(piece) and span(inside[-1], piece) <= most:
            inside[-1] = join(inside[-1], piece)
            continue
        inside.append(piece)
    if carry is not None:
        inside.append(carry)
    packed: list[_Piece] = []
    for piece in inside:
        if packed and packed[-1].path != piece.path:
            last = packed[-1]
            if span(last, piece) <= (most if small(piece) or small(last) else chunk_size):
                packed[-1] = join(last, piece)
                continue
        packed.append(piece)
    return [piece for piece in packed if not heading_only(piece)]


def _common(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    common = []
    for a, b in zip(first, second):
        if a != b:
            break
        common.append(a)
    return tuple(common)


def splitter_profile(chunk_size: int, chunk_overlap: int, embed_tokens: int = 0) -> dict[str, object]:
    """What a collection records about how its chunks were cut, and how much of each was embedded."""
    return {"splitter": SPLITTER_ID, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "embed_tokens": embed_tokens}
