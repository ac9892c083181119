"""rag.sources.pdf: one document per page, titles, encrypted and damaged files refused."""

from __future__ import annotations

import pytest

from rag.sources import LoadError, load_source
from tests.pdf_files import encrypt_pdf, make_pdf, truncate


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
