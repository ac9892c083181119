"""Decoding text files strictly (byte-order marks, UTF-16 without one, declared charsets, cp1252, detection) and finding a text file's title.

Decoding never drops a character silently, and binary data is refused (:class:`LoadError`).

Example::

    from rag.sources.text import decode_text
    decode_text("café".encode("cp1252"), declared="iso-8859-1")  # ("café", "cp1252")
"""

from __future__ import annotations

import codecs
import re

from rag.sources.errors import LoadError

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Python codecs a page or server may name that are no character set: escapes are interpreted, domain names encoded.
_NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode"}
# What browsers do (WHATWG Encoding): these labels mean windows-1252.
_WINDOWS_1252_LABELS = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii", "cp819", "windows-1252", "cp1252"}


def decode_text(raw: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode bytes to text strictly; returns (text, encoding).

    Order: byte-order mark, UTF-16 without one (NULs in every other byte), the
    declared charset, UTF-8, then detection (charset-normalizer). Raises
    :class:`LoadError` for binary data or bytes that no encoding decodes without loss.
    """
    if not raw:
        raise LoadError("empty file")
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return _strict_decode(raw, encoding), encoding
    byte_order = _utf16_byte_order(raw)
    if byte_order is not None:  # before UTF-8: all-ASCII UTF-16 is valid UTF-8 too, NULs and all
        encoding = f"utf-16-{byte_order}"
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            pass
        else:
            _refuse_binary(text)
            return text, encoding
    candidates: list[str] = []
    if declared and _is_charset(declared.strip().lower()):
        label = declared.strip().lower()
        candidates.append("cp1252" if label in _WINDOWS_1252_LABELS else label)
    candidates.append("utf-8")
    for encoding in candidates:
        try:
            text = raw.decode(encoding)
        except (ValueError, LookupError):  # UnicodeError is a ValueError; LookupError: a codec that is no text encoding (base64)
            continue
        _refuse_binary(text)
        return text, encoding
    if b"\x00" in raw[:65536] and _utf16_byte_order(raw) is None:
        raise LoadError("binary data, not text (NUL bytes); is the file extension right?")
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        raise LoadError("binary data, not text (no text encoding fits); is the file extension right?")
    best = matches[0]
    encoding = best.encoding
    # Short Western European texts are easily mis-detected (cp775, mac_roman, ...); when
    # cp1252, what Windows editors write, fits about as well, take it.
    if any(match.encoding == "cp1252" and match.chaos <= best.chaos + 0.1 for match in matches):
        encoding = "cp1252"
    text = _strict_decode(raw, encoding)
    _refuse_binary(text)
    return text, encoding


def _is_charset(label: str) -> bool:
    """Whether a declared label names a character set: not an unknown name, nor a codec that rewrites text (``unicode_escape``)."""
    try:
        return codecs.lookup(label).name not in _NOT_CHARSETS
    except (LookupError, ValueError):
        return False


def _strict_decode(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise LoadError(f"not valid {encoding} text at byte {error.start}: {error.reason}") from None


def _utf16_byte_order(raw: bytes) -> str | None:
    """``"le"`` or ``"be"`` when NULs fill one byte of many pairs and hardly any of the other (UTF-16 text), else ``None``."""
    sample = raw[:4096]
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    half = max(len(sample) // 2, 1)
    if max(even_nuls, odd_nuls) <= 0.3 * half or min(even_nuls, odd_nuls) >= 0.05 * half:
        return None
    return "le" if odd_nuls > even_nuls else "be"  # little-endian ASCII: the letter, then NUL


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _refuse_binary(text: str) -> None:
    sample = text[:65536]
    if sample and len(_CONTROL.findall(sample)) > max(2, len(sample) // 100):
        raise LoadError("binary data, not text (control characters); is the file extension right?")


def text_title(text: str, kind: str) -> str | None:
    """The title a text file gives itself (a Markdown ``#`` heading, an underlined reST heading, a first line alone), if any."""
    lines = text[:20000].splitlines()
    if kind == "markdown":
        for index, line in enumerate(lines):
            if line.startswith("# "):
                return line[2:].strip().strip("#").strip() or None
            if index + 1 < len(lines) and line.strip() and re.fullmatch(r"=+\s*", lines[index + 1]):
                return line.strip()
    if kind == "rst":
        for index, line in enumerate(lines[:-1]):
            underline = lines[index + 1]
            if line.strip() and re.fullmatch(r"([=\-~`#*^\"'+:.])\1{2,}\s*", underline) and len(underline.rstrip()) >= len(line.strip()):
                return line.strip()
    if kind == "text":
        # A short first line standing alone, as in "Title\n\nBody ...".
        if len(lines) > 1 and 0 < len(lines[0].strip()) <= 100 and not lines[1].strip():
            return lines[0].strip()
    return None
