"""Replace a file in one step, so readers (and a re-run after a crash) see the old file or the new one.

Example::

    from rag.atomic import write_atomic
    write_atomic(Path("out/manifest.json"), json.dumps(manifest))
"""

from __future__ import annotations

import glob
import os
import threading
import uuid
from pathlib import Path

from rag.errors import RagError


class WriteError(RagError, OSError):
    """A file could not be written; the message names it and the reason."""


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` to write it through: ``.NAME.PID.TOKEN.tmp``.

    Rename it onto ``path`` once complete; :func:`remove_stale_temporaries` removes those
    left by a process that died mid-write.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` whose writing process is gone (a live writer's stay)."""
    for temporary in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        pid = Path(temporary).name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            Path(temporary).unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the new one.

    The temporary file is ``.NAME.PID.THREAD.tmp`` beside ``path``, removed if writing fails.

    Raises:
        WriteError: the file could not be written (the message names it).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # the folder itself is the problem
            pass
        if isinstance(error, OSError) and not isinstance(error, RagError):
            raise WriteError(f"cannot write {path}: {error.strerror or error}") from error
        raise
