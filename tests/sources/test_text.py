"""rag.sources.text: strict decoding (BOMs, UTF-16 without one, declared charsets, cp1252, binary refused) and text titles."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.sources import LoadError, load_source
from rag.sources.text import decode_text


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
