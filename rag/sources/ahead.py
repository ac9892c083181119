"""Loading ahead: sources loaded and split in a background thread, a couple ahead of the consumer.

Files are read and hashed in the thread; only changed ones, and URLs, go to the child process
(:class:`~rag.sources.process.IsolatedLoader`), which fetches and parses them under the time and
memory limits while the consumer embeds.

Example::

    from rag.sources.ahead import load_ahead
    with contextlib.closing(load_ahead(iter(requests), IsolatedLoader(60, 2048))) as outcomes:
        for outcome in outcomes:
            outcome.status, outcome.chunks
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from rag.sources.process import IsolatedLoader, LoadOutcome, LoadRequest, check_unchanged, load_and_split


def load_ahead(requests: Iterator[LoadRequest], loader: IsolatedLoader | None) -> Iterator[LoadOutcome]:
    """Each request's outcome, in order, loaded ahead by ``loader`` (closed at the end); in this thread without one.

    Close the generator (``contextlib.closing``) to stop early: the source being loaded is
    abandoned, not waited for.
    """
    if loader is None:
        for request in requests:
            yield load_and_split(request)
        return
    results: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for request in requests:
                if stop.is_set():
                    return
                checked = check_unchanged(request)  # unchanged files never reach the child process
                outcome = checked if isinstance(checked, LoadOutcome) else loader.load(checked)
                while not stop.is_set():
                    try:
                        results.put(outcome, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the consumer, which re-raises it
            if not stop.is_set():
                results.put(error)
        finally:
            if not stop.is_set():
                results.put(done)

    thread = threading.Thread(target=work, name="rag-loader", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = results.get()
            if item is done:
                finished = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not finished:
            loader.abort()  # stopped early (an error or Ctrl-C): do not wait for the current source
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
        loader.close()
