"""Fuzzing citation parsing (rag.citations, and the eval metric built on it): any answer text gives citations of existing sources only."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from langchain_core.documents import Document

from rag.citations import cite_points, marker_numbers, split_points, strip_markers, unique_citations

number = st.integers(min_value=-3, max_value=12).map(str) | st.sampled_from(["0", "007", "99999999999", "٣", "1" * 5000])
marker = st.lists(number, min_size=1, max_size=4).flatmap(
    lambda numbers: st.lists(st.sampled_from([",", ", ", ";", "-", "–", " and ", " - "]), min_size=len(numbers) - 1, max_size=len(numbers) - 1).map(
        lambda separators: "[" + "".join(n + s for n, s in zip(numbers, [*separators, ""])) + "]"
    )
)
token = st.one_of(
    st.sampled_from(["Kestrel", "lighthouse", "tide", "harbour", "the", "1887", "keeper", ".", "!", "?", "\n", "\n- ", "\n1. ", "* ", "[", "]", "[[", "]]"]),
    marker,
    st.text(max_size=6),
)
answer = st.lists(token, max_size=40).map(" ".join) | st.text(max_size=300)
sources = st.lists(st.lists(st.sampled_from(["Kestrel", "lighthouse", "tide", "harbour", "keeper", "1887", "lamp", "rock"]), max_size=12).map(" ".join), max_size=5)


class _Passage:
    """What the metric reads of a retrieved source: its chunk text."""

    def __init__(self, chunk: str) -> None:
        self.chunk = chunk


def _describe(number: int, document: Document) -> dict:
    return {"source": document.metadata["source"]}


@given(text=answer, texts=sources)
@example(text="Lit in 1887 [" + "1" * 5000 + "].", texts=["lit 1887"])  # int() beyond 4300 digits: ValueError
@example(text="A [1-" + "9" * 4400 + "] range.", texts=["range"])
def test_any_answer_cites_only_existing_sources(text, texts):
    documents = [Document(page_content=body, metadata={"source": f"s{index}"}) for index, body in enumerate(texts, start=1)]
    points = cite_points(text, documents, _describe)
    for point in points:
        assert isinstance(point.text, str)
        refs = [citation["ref"] for citation in point.citations]
        assert all(1 <= ref <= len(documents) for ref in refs), f"citation of a source that does not exist: {refs}"
        assert len(set(refs)) == len(refs)
        assert all(citation["source"] == f"s{citation['ref']}" and citation["how"] in ("marker", "overlap") for citation in point.citations)
        assert point.supported == bool(point.citations)
    cited = unique_citations(points)
    assert [citation["ref"] for citation in cited] == list(dict.fromkeys(c["ref"] for point in points for c in point.citations))


@given(text=answer)
@example(text="[" + "2" * 5000 + "]")
def test_marker_parsing_never_raises(text):
    numbers = marker_numbers(text)
    assert all(isinstance(value, int) and value >= 0 for value in numbers) and len(set(numbers)) == len(numbers)
    assert isinstance(strip_markers(text), str)
    assert all(point.strip() for point in split_points(text))


@given(text=answer, count=st.integers(min_value=0, max_value=4))
@example(text="[" + "3" * 5000 + "]", count=2)
def test_grounding_metric_never_raises(text, count):
    from rag.eval.metrics import grounding

    assert grounding(text, [_Passage("Kestrel lighthouse tide harbour keeper") for _ in range(count)]) in ("citation", "quote", None)
