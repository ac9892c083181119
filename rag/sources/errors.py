"""Errors and failures of the loading stage: LoadError (why a source cannot be loaded) and LoadFailure (a source and that reason, printable on one line)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.errors import RagError


class LoadError(RagError, ValueError):
    """A source could not be loaded; the message is the reason."""


class UnsupportedSource(LoadError):
    """The source's type cannot be read."""


@dataclass(frozen=True)
class LoadFailure:
    source: str
    reason: str

    @property
    def display(self) -> str:
        """``source: reason`` on one line, for plain-text output (see :func:`display_form`)."""
        return f"{display_form(self.source)}: {display_form(self.reason)}"


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def display_form(text: str) -> str:
    """``text`` as one printable line: control characters (newlines, tabs, terminal escapes), line separators
    and undecodable bytes of file names are written as Python escapes (``\\n``, ``\\x1b``, ``\\udcff``).

    For plain-text output of sources and reasons; JSON output keeps the text as it is.
    """
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)
