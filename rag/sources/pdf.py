"""PDF text with pypdf, one entry per page; encrypted, truncated and damaged files refused with the reason."""

from __future__ import annotations

from rag.sources.errors import LoadError


def parse_pdf(body: bytes) -> tuple[str | None, list[tuple[int, str]]]:
    """(title, [(page number from 1, text)]) of a PDF; refuses truncated and encrypted files."""
    import io

    from pypdf import PdfReader
    from pypdf import errors as pdf_errors
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError, PyPdfError

    # pypdf's own guards (decompressed size, stream length, token and array counts, self-references)
    limit_reached = getattr(pdf_errors, "LimitReachedError", ())

    if not body.lstrip()[:5].startswith(b"%PDF-"):
        raise LoadError("not a PDF file (no %PDF- header)")
    if b"%%EOF" not in body[-2048:]:
        raise LoadError("truncated or damaged PDF (no %%EOF marker at the end)")
    try:
        reader = PdfReader(io.BytesIO(body), strict=False)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")  # many PDFs only restrict printing/copying
            except (NotImplementedError, PdfReadError) as error:
                raise LoadError(f"encrypted PDF that cannot be opened: {error}") from None
            if not unlocked:
                raise LoadError("encrypted PDF: it needs a password; save a copy without one to index it")
        title = None
        try:
            metadata = reader.metadata
            title = (metadata.title or "").strip() or None if metadata else None
        except (PdfReadError, PdfStreamError, KeyError, TypeError, ValueError):
            title = None
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            if text.strip():
                pages.append((number, text))
    except LoadError:
        raise
    except FileNotDecryptedError:
        raise LoadError("encrypted PDF: it needs a password; save a copy without one to index it") from None
    except DependencyError:  # raised when pypdf tries the empty password on an AES-encrypted file
        raise LoadError("encrypted PDF (AES): opening it needs the cryptography package (pip install 'pypdf[crypto]')") from None
    except limit_reached as error:
        raise LoadError(f"PDF over a safety limit of the PDF reader (a compression bomb or a damaged file): {str(error)[:200]}") from None
    except (PyPdfError, KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError) as error:
        raise LoadError(f"damaged PDF: {type(error).__name__}: {str(error)[:200]}") from None
    if not pages:
        raise LoadError("no extractable text in the PDF (a scan? OCR it first)")
    return title, pages
