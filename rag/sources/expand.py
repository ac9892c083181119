"""Which sources the inputs name: files, folders (walked, hidden and symlink loops handled), globs, URLs, and the source key of one input.

Example::

    from rag.sources.expand import expand_inputs, source_key
    found = expand_inputs(["notes/", "https://Example.org/#top"], include=["*.md"])
    found.sources, found.failures
    source_key("notes/a.md")  # "/home/me/notes/a.md"
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat as stat_kinds
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from rag.sources.errors import LoadFailure

logger = logging.getLogger(__name__)

# Each kind of source: the file suffixes and the web content types read as that kind.
KINDS = {
    "text": ((".txt", ".text"), ("text/plain",)),
    "markdown": ((".md", ".markdown"), ("text/markdown", "text/x-markdown")),
    "rst": ((".rst",), ("text/x-rst",)),
    "html": ((".html", ".htm", ".xhtml"), ("text/html", "application/xhtml+xml")),
    "pdf": ((".pdf",), ("application/pdf",)),
}
SUFFIX_KINDS = {suffix: kind for kind, (suffixes, _content_types) in KINDS.items() for suffix in suffixes}
CONTENT_TYPE_KINDS = {content_type: kind for kind, (_suffixes, content_types) in KINDS.items() for content_type in content_types}
SUPPORTED_SUFFIXES = frozenset(SUFFIX_KINDS)


@dataclass
class ExpandedInputs:
    """Sources found under the inputs, the inputs that failed, and the folders walked."""

    sources: list[str] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def is_url(text: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


def normalize_url(url: str) -> str:
    """The URL as a source id: scheme and host lower-cased, fragment dropped."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def source_key(item: str | os.PathLike) -> str:
    """The key a source is recorded under: a URL normalized (:func:`normalize_url`), a path made absolute with links resolved.

    The path need not exist (a deleted file is still forgotten by its key).
    """
    text = os.fspath(item)
    return normalize_url(text) if is_url(text) else str(Path(text).expanduser().resolve(strict=False))


def expand_inputs(
    inputs: Iterable[str | os.PathLike],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> ExpandedInputs:
    """Turn paths, folders and URLs into a sorted, duplicate-free list of sources.

    Folders are walked recursively (symlinked folders followed once, so loops end);
    hidden files and folders are skipped unless ``include_hidden``; only supported
    file types are taken, narrowed by ``include``/``exclude`` globs. A glob without
    ``/`` matches file or folder names (``*.md``, ``drafts``); one with ``/`` matches
    the path relative to the folder given (``docs/*.md``; ``*`` also crosses ``/``).
    Files named directly are taken whatever their type, so that an unsupported one
    is reported. A symbolic link that leads back to itself, named or found in a
    folder (unless hidden or excluded), is a failure: a symlink loop. So are, in a
    folder, a broken link, a named pipe, socket or device with a supported name
    (reading a pipe or ``/dev/zero`` would never end), a subfolder that cannot be read,
    and a file or folder whose name is not valid UTF-8 (it could not be recorded).
    """
    found = ExpandedInputs()
    seen: set[str] = set()

    def add(source: str) -> None:
        if source not in seen:
            seen.add(source)
            found.sources.append(source)

    for item in inputs:
        text = os.fspath(item)
        if is_url(text):
            try:
                add(normalize_url(text))
            except ValueError as error:  # e.g. an unclosed [IPv6 address
                found.failures.append(LoadFailure(text, f"not a valid URL: {error}"))
            continue
        path = Path(text).expanduser()
        if not _is_utf8(os.path.abspath(path)):
            found.failures.append(LoadFailure(_path_text(os.path.abspath(path)), NOT_UTF8))
            continue
        if path.is_dir():
            folder = path.resolve()
            found.folders.append(str(folder))
            before = len(found.sources)
            files, failures = _walk_folder(folder, include, exclude, include_hidden)
            for file in files:
                add(str(file))
            found.failures.extend(failures)
            if len(found.sources) == before:
                found.failures.append(LoadFailure(str(folder), _nothing_found_reason(include, exclude)))
        elif path.exists():
            add(str(path.resolve()))
        elif _is_symlink_loop(path):
            found.failures.append(LoadFailure(str(Path(os.path.abspath(path))), SYMLINK_LOOP))
        else:
            absolute = str(Path(os.path.abspath(path)))
            found.missing.append(absolute)
            found.failures.append(LoadFailure(absolute, "no such file or folder"))
    return found


def _nothing_found_reason(include: Sequence[str], exclude: Sequence[str]) -> str:
    reason = f"no supported files found (types: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
    if include:
        reason += f"; include: {', '.join(include)}"
    if exclude:
        reason += f"; exclude: {', '.join(exclude)}"
    return reason + ")"


def iter_files(
    folder: Path, include: Sequence[str] = (), exclude: Sequence[str] = (), include_hidden: bool = False
) -> Iterator[Path]:
    """Supported files below ``folder`` (resolved paths, sorted), see :func:`expand_inputs`."""
    yield from _walk_folder(folder, include, exclude, include_hidden)[0]


def _walk_folder(folder: Path, include: Sequence[str], exclude: Sequence[str], include_hidden: bool) -> tuple[list[Path], list[LoadFailure]]:
    """(supported files, resolved and sorted; the entries that cannot be read, with the reason) below ``folder``.

    A link that loops is neither file nor folder, so type and ``include`` cannot say
    whether it was wanted: every one not hidden or excluded is reported. Broken links
    and special files (pipes, sockets, devices) are reported when their name is wanted.
    """
    visited: set[tuple[int, int]] = set()
    results: set[Path] = set()
    failures: list[LoadFailure] = []

    def unreadable(error: OSError) -> None:
        logger.warning("skipping %s", error)
        failures.append(LoadFailure(_path_text(error.filename or folder), f"cannot read folder: {error.strerror or error}"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        try:
            stat = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in visited:  # a symlink loop or a second way in
            dirs[:] = []
            continue
        visited.add((stat.st_dev, stat.st_ino))
        relative_root = PurePosixPath(Path(root).relative_to(folder).as_posix())
        walked = sorted(
            name
            for name in dirs
            if (include_hidden or not name.startswith("."))
            and not _matches_any(relative_root / name, exclude)
        )
        failures.extend(LoadFailure(_path_text(Path(root) / name), NOT_UTF8) for name in walked if not _is_utf8(name))
        dirs[:] = [name for name in walked if _is_utf8(name)]
        for name in sorted(files):
            if not include_hidden and name.startswith("."):
                continue
            relative = relative_root / name
            if _matches_any(relative, exclude):
                continue
            path = Path(root) / name
            wanted = Path(name).suffix.lower() in SUPPORTED_SUFFIXES and not (include and not _matches_any(relative, include))
            try:
                if wanted and path.is_file():
                    resolved = path.resolve()
                    if _is_utf8(str(resolved)):
                        results.add(resolved)
                    else:
                        failures.append(LoadFailure(_path_text(resolved), NOT_UTF8))
                elif _is_symlink_loop(path):
                    failures.append(LoadFailure(_path_text(path), SYMLINK_LOOP))
                elif wanted and (reason := _not_a_file_reason(path)):
                    failures.append(LoadFailure(_path_text(path), reason))
            except OSError:
                continue
    return sorted(results), failures


SYMLINK_LOOP = "symlink loop: following the link leads back to it, never to a file or folder"
NOT_UTF8 = "the name is not valid UTF-8, so it cannot be recorded; rename it (e.g. convmv -f latin1 -t utf8) to index it"


def _is_utf8(name: str | os.PathLike) -> bool:
    """Whether a name read from the file system decodes as UTF-8 (else it holds surrogate escapes, which no store accepts)."""
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_text(path: str | os.PathLike) -> str:
    """``path`` as text that can be printed and stored: bytes that are not UTF-8 written as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_SPECIAL_KINDS = (
    (stat_kinds.S_ISFIFO, "a named pipe"),
    (stat_kinds.S_ISSOCK, "a socket"),
    (stat_kinds.S_ISCHR, "a character device"),
    (stat_kinds.S_ISBLK, "a block device"),
)


def _not_a_file_reason(path: Path) -> str | None:
    """Why ``path`` (found in a folder, not a regular file) cannot be read, or ``None`` for a folder."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symbolic link: its target {os.readlink(path)} does not exist" if path.is_symlink() else None
    if stat_kinds.S_ISDIR(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a file or folder")
    return f"not a regular file ({kind}), so it is not read"


def _is_symlink_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _matches_any(relative: PurePosixPath, patterns: Sequence[str]) -> bool:
    text = str(relative).removeprefix("./")
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(text, pattern.removeprefix("./")) or fnmatch.fnmatchcase(text, pattern.removeprefix("**/")):
                return True
        elif fnmatch.fnmatchcase(relative.name, pattern):
            return True
    return False
