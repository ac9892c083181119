"""The one retriever: a LangChain BaseRetriever for search, ask, chat and eval; methods, bad queries, old stores."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda

import rag
from rag.cli import cli
from rag.errors import EmptyQuestion
from rag.indexing import ingest, search
from rag.lexical import LEXICAL_FILE
from rag.retrieval import hit_to_dict, retriever
from rag.store import EmptyStore, IncompatibleCollection, open_collection, write_profile
from tests.conftest import SAMPLE_DATA

CODE_PAGE = """# Regular expressions

## Substitution

Call re.sub(pattern, repl, string) to replace every match. The lazy quantifier *? matches as little as it can.

## Flags

Pass re.IGNORECASE to match without regard to case. Flags combine with the | operator.
"""


@pytest.fixture
def fake():
    return DeterministicFakeEmbedding(size=64)


@pytest.fixture
def store(settings, tmp_path, fake):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "regex.md").write_text(CODE_PAGE, encoding="utf-8")
    (folder / "other.md").write_text("# Gardening\n\nWater the tomatoes every morning in summer.\n", encoding="utf-8")
    ingest([folder], settings, fake)
    return settings


def test_it_is_a_langchain_retriever_exported_from_rag(store, fake):
    found = rag.retriever(store, fake)
    assert isinstance(found, BaseRetriever) and rag.RagRetriever is type(found)
    docs = found.invoke("re.sub")
    assert docs[0].metadata["source"].endswith("regex.md") and docs[0].metadata["rank"] == 1
    assert [len(batch) for batch in found.batch(["re.sub", "tomatoes"])] == [len(docs), len(found.invoke("tomatoes"))]
    chain = found | RunnableLambda(lambda docs: docs[0].metadata["section"])  # composes in LCEL
    assert chain.invoke("*? lazy quantifier").startswith("Regular expressions")


def test_lexical_finds_exact_code_tokens_a_fake_vector_cannot(store, fake):
    lexical = retriever(store.model_copy(update={"retrieval": "lexical"}), k=1).invoke("*?")
    assert lexical[0].metadata["method"] == "lexical" and "*?" in lexical[0].page_content
    hybrid = retriever(store, fake, k=1).invoke("re.IGNORECASE")
    assert "re.IGNORECASE" in hybrid[0].page_content and "lexical" in hybrid[0].metadata["method"]
    assert isinstance(hybrid[0].metadata["score"], float)  # cosine similarity, even for a lexical-only hit


def test_each_method_returns_k_distinct_chunks(store, fake):
    for method in ("vector", "lexical", "hybrid"):
        docs = retriever(store.model_copy(update={"retrieval": method}), fake, k=3).invoke("regular expressions tomatoes")
        assert len(docs) == len({doc.page_content for doc in docs}) and 1 <= len(docs) <= 3
        assert [doc.metadata["rank"] for doc in docs] == list(range(1, len(docs) + 1))


@pytest.mark.parametrize("query", ['"', "*", "NEAR(", "AND", "OR NOT (", "???", "x" * 100_000, "é" * 1000])
def test_bad_queries_give_a_normal_result(store, fake, query):
    docs = retriever(store, fake).invoke(query)
    assert isinstance(docs, list)


@pytest.mark.parametrize("query", ["", "   \n"])
def test_an_empty_query_is_refused(store, fake, query):
    with pytest.raises(EmptyQuestion):
        retriever(store, fake).invoke(query)


def test_search_json_items_carry_rank_score_method_source_title_section_text(store, fake, monkeypatch):
    monkeypatch.setattr("rag.embed.load_embeddings", lambda settings: fake)
    monkeypatch.setenv("RAG_DATA_DIR", str(store.data_dir))
    result = CliRunner().invoke(cli, ["search", "re.sub", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)[0]
    assert {"rank", "score", "method", "source", "title", "section", "text"} <= set(first)
    assert first["rank"] == 1 and first["section"].startswith("Regular expressions")
    assert first["text"].startswith("# Regular expressions") or first["text"].startswith("## Substitution")


def test_the_embedded_text_has_title_and_section_the_shown_text_does_not(store, fake):
    doc = retriever(store, fake, k=1).invoke("re.IGNORECASE")[0]
    assert not doc.page_content.startswith("regex") and doc.metadata["section"]


def test_neighbours_bring_the_chunks_around_a_hit_from_its_section(settings, tmp_path, fake):
    folder = tmp_path / "long"
    folder.mkdir()
    body = "\n\n".join(f"Paragraph {n} about topic{n} " + "filler words " * 30 for n in range(6))
    (folder / "long.md").write_text(f"# Long\n\n## Part\n\n{body}\n", encoding="utf-8")
    ingest([folder], settings, fake)
    plain = retriever(settings.model_copy(update={"retrieval": "lexical"}), k=1).invoke("topic3")[0]
    wide = retriever(settings.model_copy(update={"retrieval": "lexical", "neighbours": 1}), k=1).invoke("topic3")[0]
    assert plain.page_content in wide.page_content and len(wide.page_content) > 2 * len(plain.page_content)
    assert "topic2" in wide.page_content and "topic4" in wide.page_content and wide.metadata["neighbours"] == 2


def test_cut_offs_drop_far_weaker_chunks_and_say_so(store, fake):
    everything = retriever(store.model_copy(update={"retrieval": "vector"}), fake, k=4).invoke("tomatoes")
    best = everything[0].metadata["score"]
    relative = retriever(store.model_copy(update={"retrieval": "vector", "min_score_ratio": 1.0}), fake, k=4).invoke("tomatoes")
    assert len(relative) == 1 and len(relative[0].metadata["cut"]) == len(everything) - 1  # the best one always stays
    absolute = retriever(store.model_copy(update={"retrieval": "vector", "min_score": max(best, 0) + 0.01}), fake, k=4).invoke("tomatoes")
    assert absolute == []  # nothing reaches min_score: nothing is retrieved


def test_the_keyword_indexs_best_chunk_is_not_cut_when_another_reaches_the_floor(store, fake):
    keyword_best = retriever(store.model_copy(update={"retrieval": "lexical"}), fake, k=1).invoke("re.sub")[0]
    chosen = retriever(store.model_copy(update={"min_score_ratio": 1.0}), fake, k=4)  # the best score alone reaches the floor
    chosen.lexical_weight = 0.001  # the fused order is the vector order: the keyword index's best is not first
    hybrid = chosen.invoke("re.sub")
    assert [doc.page_content for doc in hybrid[1:]] == [keyword_best.page_content]  # below the floor, kept
    assert keyword_best.metadata["score"] < hybrid[0].metadata["score"]
    vector_only = retriever(store.model_copy(update={"retrieval": "vector", "min_score_ratio": 1.0}), fake, k=4).invoke("re.sub")
    assert keyword_best.page_content not in [doc.page_content for doc in vector_only]  # vector search alone cuts it


def test_search_is_the_retriever(store, fake):
    hits = search("re.sub", 2, store, fake)
    docs = retriever(store, fake, k=2).invoke("re.sub")
    assert [(doc.page_content, score) for doc, score in hits] == [(doc.page_content, doc.metadata["score"]) for doc in docs]
    assert hit_to_dict(hits[0][0])["method"] == hits[0][0].metadata["method"]


def test_an_empty_store_says_what_to_do(settings, fake):
    with pytest.raises(EmptyStore, match="rag ingest"):
        retriever(settings, fake)


def test_a_store_split_by_an_older_version_is_refused_with_the_reindex_hint(store, fake):
    write_profile(open_collection(store), {"splitter": "recursive-v2"})
    with pytest.raises(IncompatibleCollection, match="--reindex"):
        retriever(store, fake)


def test_a_store_without_a_lexical_index_is_refused_for_hybrid_but_not_vector(store, fake):
    (store.store_path / LEXICAL_FILE).unlink()
    with pytest.raises(IncompatibleCollection, match="--reindex"):
        retriever(store, fake)
    assert retriever(store.model_copy(update={"retrieval": "vector"}), fake).invoke("re.sub")


@pytest.mark.integration
def test_real_embedder_hybrid_finds_the_sample_answers(settings, embeddings):
    ingest([SAMPLE_DATA], settings, embeddings)
    for question, source in [("When was Kestrel Point Lighthouse first lit?", "kestrel-point-lighthouse.md"), ("Which port does QuokkaDB listen on?", "quokkadb.rst")]:
        docs = retriever(settings, embeddings, k=3).invoke(question)
        assert docs[0].metadata["source"].endswith(source)


@pytest.mark.integration
def test_real_embedder_marks_names_no_chunk_mentions_when_nothing_scores_well(settings, embeddings):
    ingest([SAMPLE_DATA], settings, embeddings)
    assert settings.unmentioned_max_score > 0  # on by default, measured on the question sets (README: Retrieval)
    weak = retriever(settings, embeddings, k=4).invoke("What is the LFS limit of the bakery?")
    assert weak and max(doc.metadata["score"] for doc in weak) < settings.unmentioned_max_score
    assert weak[0].metadata["unmentioned"] == ["LFS"]
    named = retriever(settings, embeddings, k=4).invoke("Which port does QuokkaDB listen on?")  # named and mentioned
    assert named and "unmentioned" not in named[0].metadata
    off = retriever(settings.model_copy(update={"unmentioned_max_score": 0}), embeddings, k=4).invoke("What is the LFS limit of the bakery?")
    assert off and "unmentioned" not in off[0].metadata


@pytest.mark.integration
def test_real_embedder_default_min_score_retrieves_nothing_for_a_question_no_document_touches(settings, embeddings):
    ingest([SAMPLE_DATA], settings, embeddings)
    assert settings.min_score > 0  # the default cut-off, measured on the question sets (README: Retrieval)
    assert retriever(settings, embeddings, k=4).invoke("What is the population of Arran Bay?") == []
    assert retriever(settings, embeddings, k=4).invoke("Under which license is QuokkaDB released?")
