"""Keep native libraries' console noise (gpt4all's CUDA ``dlopen`` warning, llama.cpp logs) off the CLI."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence C-level stderr inside the block; Python exceptions still propagate."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (e.g. some notebook kernels)
        yield
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
