"""Folders the user names (store, output): created and checked before anything is written there.

Example::

    from rag.paths import ensure_directory
    out = ensure_directory("runs/today", "output folder")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rag.errors import RagError


class UnusableFolder(RagError, OSError):
    """A folder the user named cannot be created, is not a folder, or cannot be written to."""


def ensure_directory(path: str | os.PathLike, what: str, fix: str = "choose a folder you can write to") -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written in it.

    Args:
        path: the folder the user named.
        what: what the folder is for, as the message names it ("store folder").
        fix: what the user can do about it, appended to the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UnusableFolder: one line naming the folder, the reason and ``fix``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UnusableFolder(f"the {what} {_shown(path)} is a file, not a folder: {fix}") from None
    except OSError as error:
        raise UnusableFolder(f"cannot create the {what} {_shown(path)}: {_reason(error, path)}; {fix}") from None
    try:  # mkdir succeeds on an existing folder; only writing tells whether it is usable
        handle, probe = tempfile.mkstemp(prefix=".rag-write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UnusableFolder(f"cannot write in the {what} {_shown(path)}: {error.strerror or error}; {fix}") from None
    return path


def _reason(error: OSError, path: Path) -> str:
    """The OS's reason, naming the part of the path it is about when that is not ``path`` itself."""
    reason = error.strerror or str(error)
    if error.filename and Path(os.fsdecode(error.filename)) not in (path, path.absolute()):
        reason = f"{_shown(Path(os.fsdecode(error.filename)))}: {reason}"
    return reason


def _shown(path: Path) -> str:
    """``path`` on one line: control characters (a newline in a name) escaped."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(path))
