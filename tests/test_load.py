"""Loaders: encodings, HTML main content, PDFs, folders, URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.load import (
    LoadError,
    LoadFailure,
    LoadOptions,
    UnsupportedSource,
    decode_text,
    display_form,
    expand_inputs,
    html_to_text,
    load_source,
    load_sources,
    normalize_url,
)
from tests.local_site import LocalSite, Page, redirect
from tests.pdf_files import encrypt_pdf, make_pdf, truncate

LOCAL = LoadOptions(allow_private_network=True, fetch_timeout=5, source_timeout=10)

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Tide tables | Harbour Office</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT TEXT";</script></head>
<body>
<header><a href="/">Harbour Office</a> <a href="/contact">Contact us</a></header>
<nav><ul><li><a href="/a">Opening hours</a></li><li><a href="/b">Moorings</a></li></ul></nav>
<div class="breadcrumbs">Home &gt; Tides</div>
<main>
  <h1>Tide tables</h1>
  <p>High water at Kestrel Point is
     two hours after Dover.</p>
  <h2>Spring tides</h2>
  <ul><li>Range up to 6 m</li><li>Strong currents at the bar</li></ul>
  <pre>time   height
06:10  5.9 m</pre>
</main>
<aside>Sponsored: buy a boat</aside>
<footer>Copyright Harbour Office. All rights reserved.</footer>
</body></html>"""


# --- text and encodings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8", "Grüße, naïve café — “quotes” and emoji 🚤"),
        ("utf-8-sig", "BOM first: Ærø and ñ"),
        ("utf-16", "UTF-16 with BOM: Ærø, ñ, 日本語"),
        ("utf-16-be", "\ufeffbig-endian with BOM: Ærø"),
        ("cp1252", "Le cœur a ses raisons que la raison ne connaît point. Déjà vu, garçon! €5 – “ok”"),
        ("cp1252", "café – naïve “quotes” €5 and more text here."),
    ],
)
def test_text_is_decoded_without_losing_characters(encoding, text):
    decoded, _ = decode_text(text.encode(encoding))
    assert decoded.lstrip("\ufeff") == text.lstrip("\ufeff")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_text_even_when_all_ascii(tmp_path, encoding):
    text = "Plain ASCII notes\n\nsaved by a Windows tool as UTF-16, no byte-order mark.\n"
    assert decode_text(text.encode(encoding)) == (text, encoding)
    path = tmp_path / "notes.txt"
    path.write_bytes(text.encode(encoding))
    assert load_source(str(path)).documents[0].page_content == text


def test_utf16_without_a_bom_keeps_non_ascii_characters():
    text = "Crème brûlée, naïve café and plain words around them."
    assert decode_text(text.encode("utf-16-le")) == (text, "utf-16-le")


def test_nul_padded_binary_is_still_refused():
    with pytest.raises(LoadError, match="binary"):
        decode_text(bytes([1, 0, 2, 0, 3, 0, 4, 0]) * 200)  # 16-bit numbers, not characters


def test_declared_latin1_means_windows_1252_as_in_browsers():
    assert decode_text("“smart” – quotes".encode("cp1252"), declared="iso-8859-1")[0] == "“smart” – quotes"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 40, "binary"),
        (b"\x7fELF\x02\x01\x01\x00" + b"\x00\x01\x02\x03" * 500, "binary"),
        (b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes(range(0, 32)) * 50, "binary"),
    ],
)
def test_binary_and_empty_data_is_refused(raw, reason):
    with pytest.raises(LoadError, match=reason):
        decode_text(raw)


def test_text_files_get_a_title(tmp_path):
    (tmp_path / "a.md").write_text("Intro line\n\n# Real Title\n\nBody.\n", encoding="utf-8")
    (tmp_path / "b.rst").write_text("=======\nQuokka\n=======\n\nBody.\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("Short Title\n\nThe body.\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text("A long first line that just runs into the next one\nwithout a break.\n", encoding="utf-8")
    titles = {Path(path).name: load_source(str(path)).title for path in sorted(tmp_path.iterdir())}
    assert titles == {"a.md": "Real Title", "b.rst": "Quokka", "c.txt": "Short Title", "d.txt": "d"}


def test_every_document_has_source_title_and_kind(tmp_path):
    path = tmp_path / "note.md"
    path.write_text("# Note\n\nText.\n", encoding="utf-8")
    (document,) = load_source(str(path)).documents
    assert document.metadata == {"source": str(path.resolve()), "title": "Note", "kind": "markdown"}


def test_unsupported_file_type_is_a_readable_error(tmp_path):
    path = tmp_path / "photo.jpeg"
    path.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(UnsupportedSource, match=r"unsupported file type \.jpeg; supported: .*\.md"):
        load_source(str(path))


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 2_000)
    with pytest.raises(LoadError, match="over the 0.0 MB limit"):
        load_source(str(path), LoadOptions(max_source_bytes=1_000))


# --- HTML -----------------------------------------------------------------------------------------


def test_html_keeps_the_main_content_and_drops_boilerplate():
    title, text = html_to_text(PAGE)
    assert title == "Tide tables | Harbour Office"
    assert text.startswith("# Tide tables\n\nHigh water at Kestrel Point is two hours after Dover.")
    assert "## Spring tides\n\n- Range up to 6 m\n- Strong currents at the bar" in text
    assert "time   height\n06:10  5.9 m" in text  # <pre> keeps its spacing
    for boilerplate in ("Contact us", "Opening hours", "Home > Tides", "Sponsored", "Copyright", "SCRIPT TEXT", "color: red"):
        assert boilerplate not in text


def test_boilerplate_can_be_kept_but_scripts_never():
    _, text = html_to_text(PAGE, strip_boilerplate=False)
    assert "Opening hours" in text and "Copyright" in text and "Tide tables" in text
    assert "SCRIPT TEXT" not in text


def test_html_without_semantic_tags_uses_class_and_id_hints():
    page = b"""<html><body><div id="navbar"><a>Home</a><a>Blog</a></div>
    <div id="content"><h1>Article</h1><p>Body text that matters.</p></div>
    <div class="site-footer">Legal stuff</div></body></html>"""
    assert html_to_text(page) == ("Article", "# Article\n\nBody text that matters.")


def test_article_header_stays_when_it_holds_the_title():
    page = b"<html><body><nav>menu</nav><article><header><h1>Post title</h1></header><p>Post body.</p></article></body></html>"
    assert html_to_text(page)[1] == "# Post title\n\nPost body."


def test_page_made_only_of_boilerplate_keeps_its_text_rather_than_nothing():
    assert html_to_text(b"<html><body><nav>Only navigation here</nav></body></html>")[1] == "Only navigation here"


@pytest.mark.parametrize("encoding", ["cp1252", "iso-8859-1", "shift_jis", "utf-8"])
def test_html_charset_from_meta(encoding):
    text = "日本語のページです" if encoding == "shift_jis" else "Crème brûlée à la carte"
    page = f'<html><head><meta charset="{encoding}"><title>t</title></head><body><p>{text}</p></body></html>'.encode(encoding)
    assert html_to_text(page)[1] == text


def test_html_charset_from_the_http_header_wins():
    page = "<html><head><meta charset='utf-8'></head><body><p>Crème</p></body></html>".encode("cp1252")
    assert html_to_text(page, declared_charset="windows-1252")[1] == "Crème"


def test_deeply_nested_html_is_parsed_without_recursion():
    depth = 50_000
    page = ("<html><body>" + "<div>" * depth + "<p>deep text</p>" + "</div>" * depth + "</body></html>").encode()
    assert html_to_text(page)[1] == "deep text"


def test_xml_entity_bomb_is_not_expanded():
    lol = "".join(f'<!ENTITY lol{n} "{"&lol%d;" % (n - 1) * 10}">' for n in range(1, 10))
    page = f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY lol0 "lol">{lol}]><html><body><p>&lol9;</p><p>Real text.</p></body></html>'
    title, text = html_to_text(page.encode())
    assert "Real text." in text
    assert len(text) < 100 and "lollol" not in text


# --- PDF ------------------------------------------------------------------------------------------


def test_pdf_pages_become_documents_with_page_numbers(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(["Page one says hello.", "Page two (with parentheses)."], title="Annual Report"))
    loaded = load_source(str(path))
    assert [(doc.page_content, doc.metadata["page"], doc.metadata["title"]) for doc in loaded.documents] == [
        ("Page one says hello.", 1, "Annual Report"),
        ("Page two (with parentheses).", 2, "Annual Report"),
    ]
    assert all(doc.metadata["kind"] == "pdf" for doc in loaded.documents)


def test_pdf_without_a_title_is_named_after_its_file(tmp_path):
    path = tmp_path / "minutes.pdf"
    path.write_bytes(make_pdf(["Text."]))
    assert load_source(str(path)).title == "minutes"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: encrypt_pdf(make_pdf(["Secret text."])), "encrypted PDF: it needs a password"),
        (lambda: truncate(make_pdf(["Some text."])), "truncated or damaged PDF"),
        (lambda: b"%PDF-1.4\nnot really a pdf\n%%EOF\n", "damaged PDF"),
        (lambda: b"<html>not a pdf</html>", "not a PDF"),
        (lambda: make_pdf([""]), "no extractable text"),
    ],
)
def test_bad_pdfs_are_refused_with_the_reason(tmp_path, make, reason):
    path = tmp_path / "bad.pdf"
    path.write_bytes(make())
    with pytest.raises(LoadError, match=reason):
        load_source(str(path))


# --- folders --------------------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _names(found, root: Path) -> list[str]:
    return [Path(source).relative_to(root.resolve()).as_posix() for source in found.sources]


def test_folders_are_walked_recursively_skipping_hidden_and_unsupported(tmp_path):
    _tree(tmp_path, {"a.md": "a", "sub/b.txt": "b", "sub/deeper/c.html": "c", ".hidden.md": "h", ".git/x.md": "x", "image.png": "p"})
    assert _names(expand_inputs([tmp_path]), tmp_path) == ["a.md", "sub/b.txt", "sub/deeper/c.html"]
    with_hidden = _names(expand_inputs([tmp_path], include_hidden=True), tmp_path)
    assert with_hidden == [".git/x.md", ".hidden.md", "a.md", "sub/b.txt", "sub/deeper/c.html"]


def test_include_and_exclude_globs(tmp_path):
    _tree(tmp_path, {"a.md": "a", "b.txt": "b", "docs/c.md": "c", "docs/drafts/d.md": "d", "node_modules/e.md": "e"})
    assert _names(expand_inputs([tmp_path], include=["*.md"]), tmp_path) == ["a.md", "docs/c.md", "docs/drafts/d.md", "node_modules/e.md"]
    assert _names(expand_inputs([tmp_path], include=["docs/*.md"]), tmp_path) == ["docs/c.md", "docs/drafts/d.md"]
    assert _names(expand_inputs([tmp_path], exclude=["drafts", "node_modules", "*.txt"]), tmp_path) == ["a.md", "docs/c.md"]
    assert _names(expand_inputs([tmp_path], exclude=["docs/drafts/*"]), tmp_path) == ["a.md", "b.txt", "docs/c.md", "node_modules/e.md"]


def test_symlink_loops_end_and_files_are_listed_once(tmp_path):
    _tree(tmp_path, {"real/a.md": "a", "real/sub/b.md": "b"})
    os.symlink(tmp_path / "real", tmp_path / "real" / "sub" / "loop")
    os.symlink(tmp_path / "real", tmp_path / "again")
    os.symlink(tmp_path / "real" / "a.md", tmp_path / "link-to-a.md")
    assert _names(expand_inputs([tmp_path]), tmp_path) == ["real/a.md", "real/sub/b.md"]


def test_a_self_looping_symlink_in_a_folder_is_reported(tmp_path):
    _tree(tmp_path, {"a.md": "a"})
    os.symlink("loop.md", tmp_path / "loop.md")
    os.symlink("loop", tmp_path / "loop")  # no extension: it could have been a folder
    os.symlink(".hidden-loop", tmp_path / ".hidden-loop")
    os.symlink("skipped.md", tmp_path / "skipped.md")
    found = expand_inputs([tmp_path], exclude=["skipped.md"])
    assert _names(found, tmp_path) == ["a.md"]
    assert sorted((Path(f.source).name, f.reason.split(":")[0]) for f in found.failures) == [("loop", "symlink loop"), ("loop.md", "symlink loop")]


def test_a_self_looping_symlink_named_directly_is_a_loop_not_missing(tmp_path):
    os.symlink("loop.md", tmp_path / "loop.md")
    found = expand_inputs([tmp_path / "loop.md"])
    assert found.sources == [] and found.missing == []
    assert [(Path(f.source).name, f.reason.split(":")[0]) for f in found.failures] == [("loop.md", "symlink loop")]


def test_names_with_newlines_and_control_characters_are_shown_on_one_line(tmp_path):
    path = tmp_path / "two\nlines\x1b[31m.md"
    path.write_text("# Odd name\n", encoding="utf-8")
    (source,) = expand_inputs([tmp_path]).sources
    assert source == str(path.resolve())  # the source itself is the real name
    assert display_form(source) == str(tmp_path.resolve()) + "/two\\nlines\\x1b[31m.md"
    failure = LoadFailure(source, "cannot read file:\nreason")
    assert "\n" not in failure.display and "\x1b" not in failure.display
    assert failure.display.endswith("two\\nlines\\x1b[31m.md: cannot read file:\\nreason")
    assert display_form("plain/name — é.md") == "plain/name — é.md"
    assert display_form("bad\udcffbyte\u2028end") == "bad\\udcffbyte\\u2028end"


def test_a_malformed_url_is_a_failure_not_a_crash():
    found = expand_inputs(["http://[::1/notes"])
    assert found.sources == [] and [f.reason.split(":")[0] for f in found.failures] == ["not a valid URL"]


def test_missing_paths_and_empty_folders_are_failures(tmp_path):
    (tmp_path / "empty").mkdir()
    found = expand_inputs([tmp_path / "nope.md", tmp_path / "empty"])
    assert found.sources == []
    assert [(Path(f.source).name, f.reason.split(" (")[0]) for f in found.failures] == [
        ("nope.md", "no such file or folder"),
        ("empty", "no supported files found"),
    ]


def test_named_files_are_taken_whatever_their_type_so_errors_are_reported(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    result = load_sources([tmp_path / "data.csv"])
    assert [failure.reason.split(";")[0] for failure in result.failures] == ["unsupported file type .csv"]


def test_urls_are_normalized_as_source_ids():
    assert normalize_url("HTTPS://Example.ORG/a/b?x=1#section") == "https://example.org/a/b?x=1"
    assert expand_inputs(["https://example.org", "https://example.org/#top"]).sources == ["https://example.org/"]


# --- URLs -----------------------------------------------------------------------------------------


def test_web_pages_load_with_title_url_and_main_content():
    with LocalSite({"/tides": redirect("/tides.html"), "/tides.html": Page(PAGE)}) as site:
        loaded = load_source(site.url("/tides"), LOCAL)
    (document,) = loaded.documents
    assert document.metadata == {"source": site.url("/tides"), "title": "Tide tables | Harbour Office", "kind": "html", "url": site.url("/tides.html")}
    assert "two hours after Dover" in document.page_content and "Opening hours" not in document.page_content


def test_web_content_type_decides_the_parser():
    routes = {
        "/notes": Page("# Notes\n\nCafé.".encode("cp1252"), content_type="text/markdown; charset=windows-1252"),
        "/doc.pdf": Page(make_pdf(["PDF over HTTP."]), content_type="application/pdf"),
        "/blob": Page(b"\x00\x01", content_type="application/octet-stream"),
    }
    with LocalSite(routes) as site:
        notes = load_source(site.url("/notes"), LOCAL)
        pdf = load_source(site.url("/doc.pdf"), LOCAL)
        with pytest.raises(UnsupportedSource, match="unsupported content type application/octet-stream"):
            load_source(site.url("/blob"), LOCAL)
    assert (notes.kind, notes.title, notes.documents[0].page_content) == ("markdown", "Notes", "# Notes\n\nCafé.")
    assert (pdf.kind, pdf.documents[0].page_content, pdf.documents[0].metadata["page"]) == ("pdf", "PDF over HTTP.", 1)


def test_private_addresses_are_refused_by_default():
    with LocalSite({"/": Page(PAGE)}) as site:
        with pytest.raises(LoadError, match="--allow-private-network"):
            load_source(site.url("/"), LoadOptions())
