"""rag.sources.load: reading files and URLs within the limits, dispatch by kind, document metadata, options from Settings."""

from __future__ import annotations

import dataclasses

import pytest

from rag.settings import Settings
from rag.sources import LoadError, LoadOptions, UnsupportedSource, load_source, load_sources
from tests.local_site import LocalSite, Page, redirect
from tests.pdf_files import make_pdf
from tests.sources.pages import PAGE

LOCAL = LoadOptions(allow_private_network=True, fetch_timeout=5, source_timeout=10)


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


def test_named_files_are_taken_whatever_their_type_so_errors_are_reported(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    result = load_sources([tmp_path / "data.csv"])
    assert [failure.reason.split(";")[0] for failure in result.failures] == ["unsupported file type .csv"]


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


# --- options --------------------------------------------------------------------------------------


def test_load_options_are_the_settings_of_the_same_name_with_their_defaults():
    for option in dataclasses.fields(LoadOptions):
        assert option.default == Settings.model_fields[option.name].default, option.name
    custom = Settings(max_source_bytes=5, fetch_timeout=1.5, source_timeout=2.5, allow_private_network=True, strip_boilerplate=False)
    assert LoadOptions.from_settings(custom) == LoadOptions(5, 1.5, 2.5, True, False)
