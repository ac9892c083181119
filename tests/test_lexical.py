"""The lexical index: tokens for code and any script, queries that never break FTS5, writes and recovery."""

from __future__ import annotations

import pytest

from rag.lexical import LexicalIndex, match_expression, named_terms, query_terms, terms


@pytest.fixture
def index(tmp_path):
    with LexicalIndex(tmp_path, "docs") as opened:
        opened.add(
            [
                ("mv", "git-mv", "Use git mv -k to skip renames that would fail.", "git-mv"),
                ("re", "python-re", "re.sub(pattern, repl) replaces; *? is the lazy quantifier."),
                ("cafe", "menu", "Le café crème est servi chaud."),
                ("jp", "guide", "日本語のテキストを検索する"),
                ("gc", "git-gc", "Prune loose objects older than gc.pruneExpire allows."),
            ]
        )
        yield opened


def test_code_tokens_are_kept_whole_beside_their_words():
    found = terms("Run `git mv -k`, then re.sub and *? with --force.")
    assert {"git", "mv", "k", "re", "sub", "force"} <= set(found)
    for token in ("-k", "re.sub", "*?", "--force"):
        assert "x" + token.encode().hex() in found


@pytest.mark.parametrize(
    ("query", "expected"),
    [("re.sub", "re"), ("*?", "re"), ("mv -k", "mv"), ("gc.pruneExpire", "gc"), ("cafe", "cafe"), ("Café", "cafe"), ("日本", "jp"), ("skipping renames", "mv")],
)
def test_search_finds_code_tokens_accents_cjk_and_stems(index, query, expected):
    assert index.search(query, 3)[0][0] == expected


@pytest.mark.parametrize("query", ['"', "*", "NEAR(", "AND", "OR NOT", "(", ")", "^", ":", "-", "x" * 100_000, "a" * 5 + '"' * 50, "", "   ", "\x00"])
def test_fts5_syntax_and_odd_queries_never_raise(index, query):
    assert isinstance(index.search(query, 5), list)


@pytest.mark.parametrize(
    ("question", "names"),
    [
        ("How do I configure Git LFS for large video files?", ["LFS"]),
        ("What pool_mode should pgbouncer use?", ["pool_mode"]),
        ("Is re.sub() faster than gc.pruneExpire, e.g. on QuokkaDB?", ["re.sub", "gc.pruneExpire", "QuokkaDB"]),
        ("Where do UUIDs and HEAD go?", ["UUIDs", "HEAD"]),
        ("How do I put files under project-1.0/ in Kestrel Point's archive?", []),  # versions and capitalized words are not names
        ("Which client-side hook runs after a push?", []),
    ],
)
def test_named_terms_are_code_identifiers_acronyms_and_mixed_case_names(question, names):
    assert named_terms(question) == names


def test_a_question_names_at_most_64_things():
    assert len(named_terms(" ".join(f"N{number}X" for number in range(1000)))) == 64


def test_unmentioned_names_are_those_whose_words_no_chunk_holds_in_a_row(index):
    assert index.unmentioned(["re.sub", "gc.pruneExpire", "LFS", "pool_mode", "Café", "re.compile"]) == ["LFS", "pool_mode", "re.compile"]
    assert index.unmentioned([]) == [] and index.unmentioned(['"', "NEAR("]) == ["NEAR("]  # syntax is only text


def test_a_name_is_mentioned_only_by_its_own_words_not_by_their_stems(tmp_path):
    with LexicalIndex(tmp_path, "git") as index:
        index.add([("eol", "gitattributes", "Convert CRLF line endings to LF when committing."), ("uuid", "types", "The UUID type stores identifiers.")])
        assert index.search("LFS", 1)  # the stemmer makes both "lf"
        assert index.unmentioned(["LFS", "UUIDs", "CRLF"]) == ["LFS"]  # a plural s aside, words are compared as written


def test_queries_are_quoted_terms_joined_by_or():
    assert match_expression('NEAR( "a" AND b*') == '"near" OR "b" OR "x622a"'  # stop words a, and left out
    assert match_expression("???") == '"x3f3f3f"' and match_expression("") is None
    assert len(query_terms(" ".join(f"w{n}" for n in range(500)))) == 64


def test_stop_words_are_left_out_unless_nothing_else_remains():
    assert query_terms("how do I rename a branch") == ["rename", "branch"]
    assert query_terms("what is it") == ["what", "is", "it"]


def test_add_replaces_and_delete_removes(index):
    index.add([("mv", "git-mv", "now about submodules")])
    assert index.search("renames", 5) == [] and index.search("submodules", 5)[0][0] == "mv"
    index.delete(["mv", "unknown"])
    assert "mv" not in index.ids() and index.ids("git-gc") == {"gc"}
    assert index.count() == 4


class FakeCollection:
    """What reconcile reads of a Chroma collection: ids, texts and metadata."""

    def __init__(self, chunks: dict[str, tuple[str, dict]]):
        self.chunks = chunks

    def get(self, ids=None, include=()):
        wanted = list(self.chunks) if ids is None else [i for i in ids if i in self.chunks]
        return {"ids": wanted, "documents": [self.chunks[i][0] for i in wanted], "metadatas": [self.chunks[i][1] for i in wanted]}


def test_reconcile_makes_the_ids_exactly_the_vector_indexs(index):
    index.mark_dirty()
    assert index.dirty
    collection = FakeCollection({"mv": ("git mv", {"source": "git-mv"}), "new": ("brand new chunk", {"source": "n"})})
    assert index.reconcile(collection) == (1, 4)
    assert index.ids() == {"mv", "new"} and not index.dirty
    assert index.search("brand", 3)[0][0] == "new"


def test_collections_are_separate_and_drop_empties_one(tmp_path, index):
    with LexicalIndex(tmp_path, "other") as other:
        other.add([("x", "s", "git mv")])
        other.drop()
        assert other.count() == 0
    assert index.count() == 5


def test_a_heading_term_weighs_more_than_the_same_term_in_the_text(tmp_path):
    with LexicalIndex(tmp_path, "docs") as index:
        index.add([("body", "a", "Prune the worktree entries here.", "git-gc"), ("head", "b", "Remove stale entries here.", "git-worktree > prune")])
        assert [chunk_id for chunk_id, _ in index.search("prune worktree", 2)] == ["head", "body"]


def test_an_index_of_one_column_is_rebuilt_from_the_vector_index(tmp_path):
    import sqlite3

    from rag.lexical import LEXICAL_FILE

    old = sqlite3.connect(tmp_path / LEXICAL_FILE)
    old.execute('CREATE TABLE "docs:ids" (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, source TEXT NOT NULL)')
    old.execute("""CREATE VIRTUAL TABLE "docs:fts" USING fts5(terms)""")
    old.execute("""INSERT INTO "docs:ids" VALUES (1, 'mv', 'git-mv')""")
    old.execute("""INSERT INTO "docs:fts" (rowid, terms) VALUES (1, 'git mv')""")
    old.commit()
    old.close()
    with LexicalIndex(tmp_path, "docs") as index:
        assert index.count() == 0  # emptied, so the next search or ingest reconciles it
        index.reconcile(FakeCollection({"mv": ("git mv", {"source": "git-mv", "section": "OPTIONS", "title": "git-mv"})}))
        assert index.search("options", 1)[0][0] == "mv"  # the heading is indexed
