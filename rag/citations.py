"""Citations for generated text: which numbered source each point of a summary came from.

A summary is cut into points (its bullet lines, else its sentences). A point that
carries markers such as ``[2]`` or ``[1, 3]`` cites those sources (``how="marker"``)
when the numbers exist; a point without valid markers is attributed to the sources
whose words it shares most (``how="overlap"``, weighted by how rare each word is
among the sources). A point that shares nothing with any source is kept with no
citation and ``supported=False``: it is not invented.

Example::

    from rag.citations import cite_points
    points = cite_points("Kestrel Point has a lighthouse [1].", docs, lambda number, doc: {"source": doc.metadata["source"]})
    points[0].citations   # [{"ref": 1, "how": "marker", "source": ...}]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from langchain_core.documents import Document

# A source number has at most 9 digits: longer ones are no citation (and int() refuses over 4,300 digits).
MARKER = re.compile(r"\[(\d{1,9}(?:\s*(?:[,;–-]|and)\s*\d{1,9})*)\]")
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\[\"'(A-Z0-9])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    "the and for are but not you all any can had her was one our out has have this that with from they will would there"
    " their what about which when make like time just into than then them these some could other more also its it's"
    " were been being such only over very most each where while who whom whose how why our ours your yours his hers"
    " document documents summary text passage passages main themes theme".split()
)

MIN_OVERLAP = 0.25
"""Share of a point's (rarity-weighted) words a source must hold to be cited by overlap."""

Describe = Callable[[int, Document], dict]
"""What a citation records about source ``number`` (1-based) and its document."""


@dataclass
class Point:
    """One point of a summary and the sources it cites."""

    text: str
    citations: list[dict] = field(default_factory=list)
    supported: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def split_points(text: str) -> list[str]:
    """The points of a summary: its bullet or numbered lines, else its sentences.

    Markers that open a sentence (``... falls. [2] The ...``) belong to the sentence before.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pieces: list[str] = []
    for line in lines:
        if _BULLET.match(line):
            pieces.append(_BULLET.sub("", line))
        else:
            pieces.extend(part.strip() for part in _SENTENCE_END.split(line) if part.strip())
    points: list[str] = []
    for piece in pieces:
        leading = re.match(r"^((?:\[[\d,;\s–-]+\]\s*)+)(.*)$", piece, re.DOTALL)
        if leading and points:
            points[-1] = f"{points[-1]} {leading.group(1).strip()}"
            piece = leading.group(2).strip()
        if piece and re.search(r"\w", piece):
            points.append(piece)
    return points


def marker_numbers(text: str) -> list[int]:
    """The source numbers cited by markers in ``text``: ``[1]``, ``[1, 3]``, ``[2-4]``, in order, once each."""
    numbers: list[int] = []
    for match in MARKER.finditer(text):
        body = match.group(1)
        for low, high in re.findall(r"(\d+)\s*[–-]\s*(\d+)", body):
            if int(high) - int(low) <= 50:
                numbers.extend(range(int(low), int(high) + 1))
        body = re.sub(r"\d+\s*[–-]\s*\d+", " ", body)
        numbers.extend(int(number) for number in re.findall(r"\d+", body))
    return list(dict.fromkeys(numbers))


def strip_markers(text: str) -> str:
    return re.sub(r"\s+([.,;:!?])", r"\1", MARKER.sub("", text)).strip()


def cite_points(text: str, sources: Sequence[Document], describe: Describe) -> list[Point]:
    """Split ``text`` into points and attach to each the sources (numbered from 1) it came from."""
    index = _OverlapIndex([source.page_content for source in sources])
    points = []
    for raw in split_points(text):
        numbers = [number for number in marker_numbers(raw) if 1 <= number <= len(sources)]
        clean = strip_markers(raw)
        how = "marker"
        if not numbers:
            numbers, how = index.best(clean), "overlap"
        citations = [{"ref": number, "how": how, **describe(number, sources[number - 1])} for number in numbers]
        points.append(Point(clean, citations, supported=bool(citations)))
    return points


def unique_citations(points: Sequence[Point]) -> list[dict]:
    """Every source cited by any point, once, in order of first citation (without ``how``)."""
    seen: dict[int, dict] = {}
    for point in points:
        for citation in point.citations:
            seen.setdefault(citation["ref"], {key: value for key, value in citation.items() if key != "how"})
    return list(seen.values())


def _words(text: str) -> set[str]:
    return {word for word in (match.lower() for match in _WORD.findall(text)) if len(word) > 2 and word not in _STOPWORDS}


class _OverlapIndex:
    """Rarity-weighted word overlap between a point and each source."""

    def __init__(self, texts: Sequence[str]):
        self.sources = [_words(text) for text in texts]
        counts = Counter(word for words in self.sources for word in words)
        total = len(self.sources)
        self.weight = {word: math.log(1 + total / count) for word, count in counts.items()}

    def best(self, text: str, at_most: int = 2) -> list[int]:
        """Numbers (1-based) of the sources holding the most of the point's words; ``[]`` when none holds enough."""
        words = _words(text)
        if not words or not self.sources:
            return []
        # Words no source has count as common ones: a point of invented words scores low.
        total = sum(self.weight.get(word, math.log(2)) for word in words)
        scores = [
            (sum(self.weight[word] for word in words & source) / total, number) for number, source in enumerate(self.sources, 1)
        ]
        scores.sort(key=lambda item: (-item[0], item[1]))
        top = scores[0][0]
        if top < MIN_OVERLAP:
            return []
        return [number for score, number in scores[:at_most] if score >= max(MIN_OVERLAP, 0.9 * top)]
