"""Citations for generated text (rag.citations): points, markers, and which source each point came from."""

from __future__ import annotations

from langchain_core.documents import Document

from rag.citations import cite_points, marker_numbers, split_points, strip_markers


def test_points_are_bullets_or_sentences_with_their_markers():
    assert split_points("- First point [1]\n- Second [2, 3]") == ["First point [1]", "Second [2, 3]"]
    assert split_points("It rained [1]. Then it snowed. [2] Later, sun.") == ["It rained [1].", "Then it snowed. [2]", "Later, sun."]
    assert marker_numbers("a [1, 3] b [2-4] c [3]") == [1, 3, 2, 4]
    assert strip_markers("It rained [1].") == "It rained."


def test_citations_use_valid_markers_else_word_overlap_else_none():
    docs = [
        Document(page_content="The lighthouse keeper Edith Marrow lived on Kestrel Point.", metadata={"chunk": 0}),
        Document(page_content="Solar boats race across Lake Varen every June.", metadata={"chunk": 1}),
    ]
    points = cite_points(
        "Edith Marrow kept the light [1]. Solar boats race on Lake Varen [9]. Quantum gravity remains unsolved.",
        docs,
        lambda number, doc: {"chunk": doc.metadata["chunk"]},
    )
    assert [(c["chunk"], c["how"]) for c in points[0].citations] == [(0, "marker")]
    assert [(c["chunk"], c["how"]) for c in points[1].citations] == [(1, "overlap")]  # [9] does not exist
    assert points[2].citations == [] and points[2].supported is False
