"""Loading and splitting sources in a child process with a time limit and a memory cap.

Parsers meet hostile input (deeply nested HTML, damaged PDFs, servers that
trickle bytes forever). Running them in a child process lets the parent enforce
a per-source wall-clock limit (the child is killed and replaced) and an
address-space cap (``RLIMIT_AS``), and keeps a crash in a parser from taking the
ingest run down. Children are reused between sources and between runs in one
process; they exit with it.

Example::

    from rag.sources.load import LoadOptions
    from rag.sources.process import LoadRequest, load_isolated
    result = load_isolated(LoadRequest("/notes/a.md", LoadOptions()), timeout=60, memory_mb=2048)
    result.status, result.reason, len(result.chunks)
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.sources.load import LoadOptions, RawSource

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")
# The niceness of ingest's child (Linux, where its time without a CPU can be excused from the limit):
# parsing ahead must not take a core from the embedder, whose threads wait for each other (on 2 cores,
# an ingest overlapping its loader at equal priority took 1.15-1.45x as long).
LOADER_NICENESS = 19 if sys.platform.startswith("linux") else 0
_DEADLINE_CHECK_S = 0.25  # how often a wait for the child looks at its deadline (and samples the child)
_memory_limit_mb = 0  # set in the child
_reserve: bytearray | None = None  # set in the child: memory to give back when it runs out


def _release_reserve() -> None:
    global _reserve
    _reserve = None


@dataclass(frozen=True)
class LoadRequest:
    source: str
    options: LoadOptions
    chunk_size: int = 500
    chunk_overlap: int = 0
    known_hash: str | None = None  # skip parsing when the bytes still hash to this
    validators: tuple[str | None, str | None] | None = None  # a URL's (ETag, Last-Modified) when its bytes hashed to known_hash
    raw: RawSource | None = None  # the bytes, when the caller has read them already
    split: bool = True  # False: the outcome's chunks are the whole documents (one per PDF page, else one)


@dataclass
class LoadOutcome:
    """``status`` is ``loaded``, ``unchanged`` or ``failed`` (then ``reason`` says why)."""

    source: str
    status: str
    content_hash: str | None = None
    kind: str | None = None
    title: str | None = None
    chunks: list[tuple[str, dict]] = field(default_factory=list)
    reason: str | None = None
    retire: bool = False  # the process that made this should not be reused (its memory is spent)
    validators: tuple[str | None, str | None] | None = None  # a URL's (ETag, Last-Modified), to send on the next fetch


def check_unchanged(request: LoadRequest) -> LoadOutcome | LoadRequest:
    """Read a local file here (cheap, bounded by its size): unchanged, failed, or the request with its bytes.

    URLs are left to :func:`load_and_split` in the child, where a hard time limit applies.
    """
    from rag.sources.expand import is_url
    from rag.sources.load import read_source

    if is_url(request.source):
        return request
    try:
        raw = read_source(request.source, request.options)
    except RagError as error:
        return LoadOutcome(request.source, "failed", reason=str(error))
    if request.known_hash is not None and raw.content_hash == request.known_hash:
        return LoadOutcome(request.source, "unchanged", content_hash=raw.content_hash)
    return dataclasses.replace(request, raw=raw)


def load_and_split(request: LoadRequest) -> LoadOutcome:
    """Read, parse and split one source (in whatever process calls it); never raises for bad input."""
    from rag.sources.load import parse_source, read_source
    from rag.split import split_documents

    try:
        # A conditional fetch only when the recorded bytes are what the validators stand for.
        validators = request.validators if request.known_hash is not None else None
        raw = request.raw if request.raw is not None else read_source(request.source, request.options, validators)
        if raw.not_modified:  # 304: nothing downloaded
            return LoadOutcome(request.source, "unchanged", content_hash=request.known_hash, validators=raw.validators)
        if request.known_hash is not None and raw.content_hash == request.known_hash:
            return LoadOutcome(request.source, "unchanged", content_hash=raw.content_hash, validators=raw.validators)
        loaded = parse_source(raw, request.options)
        validators = raw.validators
        del raw
        chunks = split_documents(loaded.documents, request.chunk_size, request.chunk_overlap) if request.split else loaded.documents
        return LoadOutcome(
            request.source,
            "loaded",
            content_hash=loaded.content_hash,
            kind=loaded.kind,
            title=loaded.title,
            chunks=[(chunk.page_content, chunk.metadata) for chunk in chunks],
            validators=validators,
        )
    except RagError as error:
        return LoadOutcome(request.source, "failed", reason=str(error))
    except MemoryError:
        _release_reserve()
        limit = f"the {_memory_limit_mb} MB limit" if _memory_limit_mb else "memory"
        reason = f"ran out of memory while loading ({limit}: loader_memory_mb)"
        return LoadOutcome(request.source, "failed", reason=reason, retire=True)
    except RecursionError:
        return LoadOutcome(request.source, "failed", reason="structure nested too deeply to parse")
    except Exception as error:  # a parser bug on odd input: report it as this source's failure
        logger.debug("loader error on %s", request.source, exc_info=True)
        return LoadOutcome(request.source, "failed", reason=f"unexpected {type(error).__name__}: {str(error)[:300]}")


class LoaderCrashed(RagError, RuntimeError):
    """The loader process died or was stopped; the message says how."""


class _Starvation:
    """Seconds a child process spent ready to run without getting a CPU, from samples of ``/proc`` (Linux).

    Each sample that finds the child runnable counts the wall time since the previous sample
    less the CPU time it had meanwhile. A child waiting on the network sleeps and counts
    nothing; one parsing at full speed counts nothing. Elsewhere (no ``/proc``) it stays 0.
    """

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/stat")
        self.seconds = 0.0
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, bool] | None:
        try:
            fields = self.path.read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, IndexError, ValueError):
            return None
        return time.monotonic(), cpu, fields[0] == "R"

    def update(self) -> float:
        sample = self._sample()
        if sample is not None and self._last is not None and sample[2]:
            self.seconds += max(0.0, (sample[0] - self._last[0]) - (sample[1] - self._last[1]))
        self._last = sample or self._last
        return self.seconds


class LoaderProcess:
    """One child running :func:`load_and_split` on request."""

    def __init__(self, memory_mb: int, niceness: int = 0) -> None:
        self.memory_mb = memory_mb
        self.niceness = niceness
        quiet = not logging.getLogger("rag").isEnabledFor(logging.DEBUG)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _child_command(memory_mb, niceness)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL if quiet else None,
                close_fds=True,
            )
        except OSError as error:
            raise LoaderCrashed(f"cannot start the loader process: {error.strerror or error}") from None
        self.busy = False  # a request was sent and its answer not read: never reuse it

    def alive(self) -> bool:
        return self.process.poll() is None

    def fits(self, memory_mb: int, niceness: int) -> bool:
        return (self.memory_mb, self.niceness) == (memory_mb, niceness)

    def run(self, request: LoadRequest, timeout: float) -> LoadOutcome:
        """Send one request and wait for its result at most ``timeout`` seconds, plus the time the
        child was ready to run but had no CPU (a low-priority child on a busy machine).

        Raises ``TimeoutError`` (the child is then killed) or :class:`LoaderCrashed`.
        """
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        self.busy = True
        try:
            self.process.stdin.write(_HEADER.pack(len(payload)) + payload)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise LoaderCrashed(self._death()) from None
        limit = time.monotonic() + timeout
        starvation = _Starvation(self.process.pid)

        def deadline() -> float:
            return limit + starvation.update()

        fd = self.process.stdout.fileno()
        header = _read_exact(fd, _HEADER.size, deadline)
        if header is None:
            self.kill()
            raise TimeoutError
        if not header:
            raise LoaderCrashed(self._death())
        (size,) = _HEADER.unpack(header)
        body = _read_exact(fd, size, lambda: deadline() + 30)  # the answer is on its way; allow it to arrive
        if not body:
            self.kill()
            raise LoaderCrashed("loader process stopped while answering")
        outcome = pickle.loads(body)
        self.busy = False
        return outcome

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "loader process stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"loader process was killed by {name} (a crash, or out of memory{self._limit_note()})"
        return f"loader process exited with status {code} (out of memory{self._limit_note()}?)"

    def _limit_note(self) -> str:
        return f": the {self.memory_mb} MB limit, loader_memory_mb" if self.memory_mb else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # the child's loop ends at EOF
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def _child_command(memory_mb: int, niceness: int) -> str:
    """Python code that starts the child; it imports this same ``rag`` (a checkout or an install)."""
    import sysconfig

    root = str(Path(__file__).resolve().parents[2])  # the folder holding rag/
    installed = {str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("purelib", "platlib")}
    prefix = "" if root in installed else f"import sys; sys.path.insert(0, {root!r}); "
    return prefix + f"from rag.sources.process import _child_main; _child_main({int(memory_mb)}, {int(niceness)})"


def _read_exact(fd: int, size: int, deadline: Callable[[], float]) -> bytes | None:
    """``size`` bytes from ``fd``; ``b""`` at end of file, ``None`` past the deadline (asked again as it may move)."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        wait = deadline() - time.monotonic()
        if wait <= 0:
            return None
        poller = select.poll()  # not select.select(): it fails on descriptors >= 1024 (a long-lived process has many open)
        poller.register(fd, select.POLLIN)
        if not poller.poll(min(wait, _DEADLINE_CHECK_S) * 1000):
            continue  # ask the deadline again: it may have moved
        part = os.read(fd, min(remaining, 1 << 20))
        if not part:
            return b""
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


# --- a small pool, so runs and tests do not pay the child's start-up for every source ------------

_idle: list[LoaderProcess] = []
_idle_lock = threading.Lock()


def _borrow(memory_mb: int, niceness: int) -> LoaderProcess:
    with _idle_lock:
        while _idle:
            process = _idle.pop()
            if process.alive() and process.fits(memory_mb, niceness):
                return process
            process.close()
    return LoaderProcess(memory_mb, niceness)


def _give_back(process: LoaderProcess) -> None:
    """Pool an idle child; one still working on a request (its answer unread) is killed instead."""
    if process.busy or not process.alive():
        process.kill()
        return
    with _idle_lock:
        if process not in _idle:
            _idle.append(process)


def prestart(memory_mb: int, niceness: int = 0) -> None:
    """Start a loader process now unless one is idle, so that its start-up (about 0.5 s of
    imports) overlaps the caller's own (opening the store, loading the embedder)."""
    with _idle_lock:
        if any(process.fits(memory_mb, niceness) for process in _idle):
            return
    process = LoaderProcess(memory_mb, niceness)
    with _idle_lock:
        _idle.append(process)


@atexit.register
def shutdown() -> None:
    """Stop the idle loader processes (done at exit anyway); they hold nothing, so they are not waited for."""
    with _idle_lock:
        processes = list(_idle)
        _idle.clear()
    for process in processes:
        process.kill()


class IsolatedLoader:
    """Runs :func:`load_and_split` for one request at a time in a pooled child process.

    ``abort()`` may be called from another thread: it kills the child mid-request.
    """

    def __init__(self, timeout: float, memory_mb: int, niceness: int = 0) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.niceness = niceness  # added to the child's: LOADER_NICENESS for a child that runs ahead of an embedder
        self._process: LoaderProcess | None = None
        self._lock = threading.Lock()
        self._aborted = False

    def load(self, request: LoadRequest) -> LoadOutcome:
        """The outcome of one request; a timeout or a crash of the child is a ``failed`` outcome.

        Raises :class:`LoaderCrashed` once :meth:`abort` (or :meth:`close` mid-request) stopped loading.
        """
        with self._lock:
            if self._aborted:
                raise LoaderCrashed("loading was stopped")
            if self._process is None or not self._process.alive():
                self._process = _borrow(self.memory_mb, self.niceness)
            process = self._process
            process.busy = True  # from here on, close() in another thread must not pool it
        try:
            outcome = process.run(request, self.timeout)
            if outcome.retire:
                self._forget(process)
            return outcome
        except TimeoutError:
            self._forget(process)
            return LoadOutcome(request.source, "failed", reason=f"took longer than the {self.timeout:g} s per-source limit (source_timeout)")
        except LoaderCrashed as error:
            self._forget(process)
            if self._aborted:
                raise LoaderCrashed("loading was stopped") from None
            return LoadOutcome(request.source, "failed", reason=str(error))
        except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:  # pipes closed under us by abort(), or a garbled answer
            self._forget(process)
            if self._aborted:
                raise LoaderCrashed("loading was stopped") from None
            return LoadOutcome(request.source, "failed", reason=f"loader process failed: {type(error).__name__}: {str(error)[:200]}")
        except BaseException:  # Ctrl-C mid-request: the child is still working on it, so it cannot be reused
            self._forget(process)
            raise

    def _forget(self, process: LoaderProcess) -> None:
        process.kill()
        with self._lock:
            if self._process is process:
                self._process = None

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            process, self._process = self._process, None
        if process is not None:
            process.kill()

    def close(self) -> None:
        """Return the idle child to the pool for the next run; one still loading (another thread's request) is stopped."""
        with self._lock:
            process, self._process = self._process, None
            if process is not None and process.busy:
                self._aborted = True  # the request in flight ends with LoaderCrashed, not with an answer
        if process is not None:
            _give_back(process)

    def __enter__(self) -> IsolatedLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_isolated(request: LoadRequest, timeout: float, memory_mb: int) -> LoadOutcome:
    """:func:`load_and_split` in a child process, killed after ``timeout`` seconds."""
    with IsolatedLoader(timeout, memory_mb) as loader:
        return loader.load(request)


def load_each(requests: Iterable[LoadRequest], timeout: float, memory_mb: int, isolate: bool = True) -> Iterator[LoadOutcome]:
    """The outcomes of ``requests`` in order, each loaded in the limited child process.

    With ``isolate`` off, or where the child cannot run (not POSIX), they load in this
    process without limits, as :func:`rag.indexing.ingest` does then.
    """
    if not isolate or os.name != "posix":
        for request in requests:
            yield load_and_split(request)
        return
    with IsolatedLoader(timeout, memory_mb) as loader:
        for request in requests:
            yield loader.load(request)


# --- the child ------------------------------------------------------------------------------------


def _child_main(memory_mb: int, niceness: int = 0) -> None:
    import importlib
    import warnings

    global _memory_limit_mb, _reserve

    warnings.simplefilter("ignore")
    if niceness:
        try:
            os.nice(niceness)
        except OSError:
            pass
    # Import the parsers before capping memory, so the cap measures the work, not the imports.
    for module in ("bs4", "charset_normalizer", "pypdf", "requests", "langchain_text_splitters", "rag.sources.load", "rag.split", "rag.sources.web"):
        importlib.import_module(module)
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            _memory_limit_mb = memory_mb
        except (ImportError, ValueError, OSError):
            pass
    # Keep the protocol's stdout apart from anything a library might print.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    protocol_in = sys.stdin.buffer
    _reserve = bytearray(8 << 20)  # freed when memory runs out, so the failure can still be reported
    while True:
        header = protocol_in.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        request = pickle.loads(protocol_in.read(size))
        try:
            outcome = load_and_split(request)
            payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            _release_reserve()
            reason = f"ran out of memory while loading (the {memory_mb} MB limit: loader_memory_mb)"
            payload = pickle.dumps(LoadOutcome(request.source, "failed", reason=reason, retire=True))
        protocol_out.write(_HEADER.pack(len(payload)) + payload)
        protocol_out.flush()
