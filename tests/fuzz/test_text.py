"""Fuzzing rag.sources.text.decode_text: any bytes give text or a LoadError, and unambiguous encodings round-trip."""

from __future__ import annotations

import codecs

from hypothesis import assume, example, given
from hypothesis import strategies as st

from rag.sources import LoadError
from rag.sources.text import decode_text

LABELS = ["utf-8", "latin-1", "iso-8859-1", "windows-1252", "utf-16", "utf-16-le", "shift_jis", "koi8-r", "ascii"]
# Labels a page may declare that are no text encoding, or none Python knows, or odd codecs.
ODD_LABELS = ["base64", "hex", "zlib", "rot13", "undefined", "idna", "punycode", "unicode_escape", "utf-7", "x-nonsense", "utf\x00"]

# Text a person writes: no control characters but newlines and tabs, no NUL.
written_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufeff") | st.sampled_from("\n\t"),
    min_size=1,
    max_size=300,
)


def _bytes_with_structure():
    """Bytes near the decoder's branches: BOMs, NUL-interleaved halves (UTF-16-like), text, noise."""
    prefix = st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE])
    interleaved = st.binary(max_size=200).map(lambda data: bytes(b for byte in data for b in (byte, 0)))
    body = st.one_of(st.binary(max_size=400), interleaved, written_text.map(lambda text: text.encode("utf-8")))
    return st.tuples(prefix, body, st.binary(max_size=8)).map(lambda parts: b"".join(parts))


@given(raw=st.one_of(st.binary(max_size=2000), _bytes_with_structure()), declared=st.none() | st.sampled_from(LABELS + ODD_LABELS) | st.text(max_size=12))
@example(raw=b"abc", declared="undefined")  # UnicodeError, not UnicodeDecodeError: was uncaught
@example(raw=b"xn--", declared="idna")  # idna: "label empty or too long", a plain UnicodeError
@example(raw=b"abc", declared="utf\x00")  # ValueError ("embedded null character") from the codec lookup
@example(raw=b"\xff\xfe\x00\x00\x00", declared=None)  # a UTF-32 BOM with a truncated code unit
def test_any_bytes_decode_to_text_or_a_load_error(raw, declared):
    try:
        text, encoding = decode_text(raw, declared)
    except LoadError as error:
        assert str(error)
        return
    assert isinstance(text, str) and isinstance(encoding, str)
    assert raw.decode(encoding) == text, "the text is exactly the bytes in the encoding it names: nothing dropped"


@given(text=written_text, bom=st.booleans())
def test_utf8_round_trips(text, bom):
    raw = (codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8")
    assert decode_text(raw)[0] == text


@given(text=written_text, order=st.sampled_from(["le", "be"]))
def test_utf16_with_a_bom_round_trips(text, order):
    raw = (codecs.BOM_UTF16_LE if order == "le" else codecs.BOM_UTF16_BE) + text.encode(f"utf-16-{order}")
    assert decode_text(raw)[0] == text


# Without a BOM, UTF-16 is recognised by its NUL bytes: unambiguous for Latin-1-range text. The same text
# declared latin-1 is cp1252 (as browsers read it), which agrees with latin-1 outside the C1 controls left out here.
latin_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_categories=("Cc",)) | st.sampled_from("\n\t"), min_size=1, max_size=300)


@given(text=latin_text, order=st.sampled_from(["le", "be"]))
def test_utf16_without_a_bom_round_trips(text, order):
    assert decode_text(text.encode(f"utf-16-{order}")) == (text, f"utf-16-{order}")


@given(text=latin_text, label=st.sampled_from(["latin-1", "iso-8859-1", "ISO-8859-1 "]))
def test_declared_latin1_round_trips(text, label):
    raw = text.encode("latin-1")
    assume(not raw.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)))  # a BOM wins over a declared charset
    assert decode_text(raw, declared=label)[0] == text


@given(text=written_text, label=st.sampled_from(["unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined"]))
@example(text="a\\x41 \\N{BULLET} \\>", label="unicode_escape")  # was read as "aA • \\>": the declared codec rewrote the text
def test_a_declared_codec_that_is_no_charset_is_ignored(text, label):
    assert decode_text(text.encode("utf-8"), declared=label) == (text, "utf-8")
