"""Fuzzing FTS5 query building (rag.lexical): any query string gives results or none, never an SQLite error."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rag.lexical import MAX_QUERY_TERMS, LexicalIndex, match_expression, query_terms

CHUNKS = [
    ("c1", "a.md", "Kestrel Point lighthouse was first lit in 1887."),
    ("c2", "b.md", "Use re.sub and git mv -k; --force is NEAR the end. AND OR NOT are words here."),
    ("c3", "c.md", "日本語のテキスト: 灯台 and “quoted” words, naïve café, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢."),
]
fts_syntax = st.sampled_from(
    ['"', '""', "*", "^", "NEAR(", "NEAR(a b, 3)", ")", "(", "AND", "OR", "NOT", ":", "col:", "-", "+", "{a b}", "terms:", "'", "\\", "\x00",
     "git", "re.sub", "--force", "*?", "灯台", "naïve", "ǅ", "ﬁ", "\u0301", "_", "__", "x00", "x2a"]
)  # fmt: skip
query = st.text(max_size=200) | st.lists(fts_syntax | st.text(max_size=5), max_size=30).map(" ".join)


@pytest.fixture(scope="module")
def index():
    with tempfile.TemporaryDirectory() as folder, LexicalIndex(folder, "fuzz") as lexical:
        lexical.add(CHUNKS)
        yield lexical


@given(text=query, n=st.integers(min_value=-1, max_value=20))
@example(text='NEAR("a" b', n=5)
@example(text="\u0301 _ \u200b", n=5)  # terms that FTS5's own tokenizer reads as no token at all
@example(text='" OR "" AND * NOT col:x ^y', n=5)
def test_any_query_gives_results_or_none_never_an_sqlite_error(index, text, n):
    results = index.search(text, n)
    assert len(results) <= max(n, 0)
    assert all(chunk_id in {"c1", "c2", "c3"} and isinstance(score, float) for chunk_id, score in results)
    expression = match_expression(text)
    assert expression is None or expression.count(" OR ") < MAX_QUERY_TERMS
    assert (expression is None) == (not query_terms(text))


@pytest.fixture(scope="module")
def scratch_index():
    with tempfile.TemporaryDirectory() as folder, LexicalIndex(folder, "own") as lexical:
        yield lexical


@given(text=st.text(max_size=200))
def test_indexed_text_is_found_by_its_own_words(scratch_index, text):
    scratch_index.drop()
    scratch_index.add([("only", "s.md", text)])
    results = [chunk_id for chunk_id, _ in scratch_index.search(text, 3)]
    assert results in ([], ["only"])
    if any(term.isalnum() for term in query_terms(text)):
        assert results == ["only"], "a chunk is found by the words it holds"
