"""What comes in: sources named by paths, folders, globs and URLs, read within limits and parsed into Documents.

- :mod:`rag.sources.expand`: inputs to the list of sources; ``is_url``, ``source_key``
- :mod:`rag.sources.load`: ``LoadOptions``; reading and parsing one source (dispatch by kind)
- :mod:`rag.sources.text`, :mod:`rag.sources.html`, :mod:`rag.sources.pdf`: the parsers
- :mod:`rag.sources.web`: the SSRF-safe fetcher
- :mod:`rag.sources.process`: loading in a time- and memory-limited child process
- :mod:`rag.sources.ahead`: loading a couple of sources ahead of the consumer, in a thread
- :mod:`rag.sources.errors`: ``LoadError``, ``LoadFailure``, ``display_form``

Example::

    from rag.sources import LoadOptions, expand_inputs, load_source
    found = expand_inputs(["notes/", "https://example.org/"], include=["*.md"])
    loaded = load_source(found.sources[0], LoadOptions())
    loaded.documents[0].metadata["title"]
"""

from rag.sources.errors import LoadError, LoadFailure, UnsupportedSource, display_form
from rag.sources.expand import SUPPORTED_SUFFIXES, ExpandedInputs, expand_inputs, is_url, normalize_url, source_key
from rag.sources.load import LoadedSource, LoadOptions, LoadResult, RawSource, load_source, load_sources, parse_source, read_source

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ExpandedInputs",
    "LoadError",
    "LoadFailure",
    "LoadOptions",
    "LoadResult",
    "LoadedSource",
    "RawSource",
    "UnsupportedSource",
    "display_form",
    "expand_inputs",
    "is_url",
    "load_source",
    "load_sources",
    "normalize_url",
    "parse_source",
    "read_source",
    "source_key",
]
