"""How a command stops: SIGTERM the way Ctrl-C does, with its own exit status; read-only commands at once.

Ctrl-C raises ``KeyboardInterrupt`` in the main thread; every long run (ingest, a batch job,
``rag serve``) already stops cleanly on it and keeps what it finished. :func:`stop_on_sigterm`
makes SIGTERM (``kill PID``, a service manager, a container stop) raise :class:`Terminated`,
a ``KeyboardInterrupt``, so the same clean-up runs; :func:`exit_status` then tells the two
apart (130 for Ctrl-C, 143 for SIGTERM, the shells' ``128 + signal`` convention).

Example::

    from rag.signals import exit_status, stop_on_sigterm
    stop_on_sigterm()                 # in a command-line entry point, main thread
    try:
        run()
    except KeyboardInterrupt as stopped:
        sys.exit(exit_status(stopped))

:func:`run_ending_quickly` runs the command-line group; ``ask``, ``search``, ``models``,
``sources`` and ``ingest`` then end without the interpreter's teardown, which took 0.3-0.4 s
after ``rag ask`` had printed its answer and 0.2-0.3 s after ``rag ingest``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM was received: stop as on Ctrl-C (finished work is kept)."""

    def __init__(self) -> None:
        super().__init__("terminated by SIGTERM")


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def stop_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (a no-op elsewhere, or where there is no SIGTERM).

    Meant for entry points (the ``rag`` command): a library should leave its host's signal
    handlers alone. A process that ignores SIGTERM (``nohup``-style) keeps ignoring it.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, _raise_terminated)


def was_terminated(error: BaseException | None) -> bool:
    """Whether ``error``, or an exception it was raised from or during, is a :class:`Terminated`."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Terminated):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def exit_status(error: BaseException) -> int:
    """The exit status for a run stopped by ``error``: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if was_terminated(error) else EXIT_INTERRUPTED


# Commands that leave nothing for the interpreter's teardown to flush: each SQLite write is committed
# when made, and Chroma has written its vector index files when an upsert returns (a store whose
# ingest ended this way reopens with every chunk findable: tests/test_cli.py).
QUICK_EXIT_COMMANDS = frozenset({"ask", "search", "models", "sources", "ingest"})


def run_ending_quickly(group) -> None:
    """Run a click ``group`` as ``rag``; a command of :data:`QUICK_EXIT_COMMANDS` exits once its output is flushed."""
    try:
        group(prog_name="rag")
    except SystemExit as done:
        if QUICK_EXIT_COMMANDS.intersection(sys.argv[1:2]):
            exit_now(done.code)
        raise


def exit_now(code: int | str | None) -> None:
    """End the process at once with ``code`` (as ``sys.exit`` reads it), output flushed, no teardown."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    logging.shutdown()
    os._exit(code if isinstance(code, int) else (1 if code else 0))
