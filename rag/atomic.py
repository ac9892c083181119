"""Replace a file in one step, so readers (and a re-run after a crash) see the old file or the new one.

Example::

    from rag.atomic import write_atomic
    write_atomic(Path("out/manifest.json"), json.dumps(manifest))
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the new one.

    The temporary file is ``.NAME.PID.THREAD.tmp`` beside ``path``, removed if writing fails.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
