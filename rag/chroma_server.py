"""A Chroma server as the store: the HTTP client, and the source record and write lock kept in the server itself.

With ``chroma_url`` set, every machine that ingests into one server must see the same
bookkeeping, so it lives in two small collections on that server instead of files
beside an embedded store:

- ``rag-sources``: one entry per (collection, source) with the fields of
  :class:`rag.store.SourceEntry` (pending while its chunks are written, then indexed);
- ``rag-locks``: numbered write leases per collection, each taken with Chroma's
  insert-if-absent ``add`` (the first writer of a number wins) and never overwritten
  by another client, so two clients never both hold one (:func:`server_lock`). The
  holder renews its lease every :data:`LEASE_SECONDS` / 4; a killed holder's lease
  expires after :data:`LEASE_SECONDS` and the next client takes the next number.

Even without the lock, chunk ids are derived from (source, text, occurrence) and
written with ``upsert``, so the same source ingested twice, at once or after a crash,
never leaves duplicate chunks.

Example::

    settings = Settings(chroma_url="http://127.0.0.1:8000", collection="notes")
    client = http_client(settings)
    with server_lock(client, settings, "rag ingest"):
        record = ServerSourceRecord(client, settings)
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

from rag.errors import RagError
from rag.settings import Settings
from rag.store import utc_timestamp

logger = logging.getLogger(__name__)

RECORD_COLLECTION = "rag-sources"
LOCK_COLLECTION = "rag-locks"
RESERVED_COLLECTIONS = (RECORD_COLLECTION, LOCK_COLLECTION)
LEASE_SECONDS = 60.0
_warned: set[str] = set()
URL_FIX = "set --chroma-url / RAG_CHROMA_URL to the server's http(s)://HOST:PORT"


class ChromaUnavailable(RagError, ConnectionError):
    """The Chroma server cannot be reached or refused the request."""


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """(host, port, ssl) of ``http(s)://HOST[:PORT]``; raise :class:`RagError` naming the fix otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise RagError(f"bad Chroma server URL {url!r}: {URL_FIX}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 8000)
    except ValueError:
        raise RagError(f"bad port in Chroma server URL {url!r}: {URL_FIX}") from None
    return parts.hostname, port, parts.scheme == "https"


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost`` or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(url: str) -> str | None:
    """The warning the CLI prints for a Chroma server that is not on loopback, else ``None``."""
    if is_loopback(url):
        return None
    return (
        f"the Chroma server {url} is not on loopback: Chroma has no authentication of its own and chromadb 1.x "
        "(up to 1.5.9) has an unfixed pre-authentication remote-code-execution advisory (CVE-2026-45829). "
        "Keep it on a private network behind an authenticating proxy; never expose it to the internet."
    )


def http_client(settings: Settings):
    """A ``chromadb.HttpClient`` for ``settings.chroma_url`` (token header if set, telemetry off), checked reachable."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    url = settings.chroma_url or ""
    host, port, ssl = parse_chroma_url(url)
    if url not in _warned and (warning := exposure_warning(url)):  # once per server and process; the CLI shows it on stderr
        _warned.add(url)
        logger.warning(warning)
    headers = {"Authorization": f"Bearer {settings.chroma_token.get_secret_value()}"} if settings.chroma_token else {}
    _check_reachable(url, headers, settings.request_timeout)
    return chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=headers or None, settings=ChromaSettings(anonymized_telemetry=False))


def _check_reachable(url: str, headers: dict[str, str], timeout: float) -> None:
    """Raise :class:`ChromaUnavailable` naming the fix if the server's heartbeat does not answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/api/v2/heartbeat", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=min(timeout, 10.0)):
            return
    except urllib.error.HTTPError as error:
        fix = "set RAG_CHROMA_TOKEN to the token it expects" if error.code in (401, 403) else "is it a Chroma 1.x server?"
        raise ChromaUnavailable(f"the Chroma server at {url} refused the request (HTTP {error.code}): {fix}") from None
    except OSError as error:  # refused, unreachable, timed out, TLS
        reason = getattr(error, "reason", error)
        raise ChromaUnavailable(
            f"cannot reach the Chroma server at {url} ({reason}): start it (`chroma run --host 127.0.0.1 --port PORT --path DIR`) or {URL_FIX}"
        ) from None


def _bookkeeping(client, name: str):
    return client.get_or_create_collection(name, embedding_function=None, metadata={"rag:bookkeeping": True})


# --- the source record ---------------------------------------------------------------------------------


class ServerSourceRecord:
    """:class:`rag.store.SourceRecord`'s interface over the server's ``rag-sources`` collection."""

    def __init__(self, client, settings: Settings) -> None:
        self.collection = settings.collection
        self.table = _bookkeeping(client, RECORD_COLLECTION)

    def close(self) -> None:
        pass

    def __enter__(self) -> ServerSourceRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _id(self, source: str) -> str:
        return hashlib.sha256(f"{self.collection}\0{source}".encode()).hexdigest()[:32]

    def _put(self, fields: dict) -> None:
        metadata = {key: value for key, value in {**fields, "collection": self.collection}.items() if value is not None}
        self.table.upsert(ids=[self._id(fields["source"])], embeddings=[[0.0]], documents=[fields["source"]], metadatas=[metadata])

    @staticmethod
    def _entry(metadata: dict):
        from rag.store import SourceEntry

        return SourceEntry(**{name: metadata.get(name) for name in SourceEntry.__dataclass_fields__})

    def get(self, source: str):
        found = self.table.get(ids=[self._id(source)], include=["metadatas"])
        return self._entry(found["metadatas"][0]) if found["ids"] else None

    def entries(self, under: str | None = None) -> list:
        from rag.store import entries_under

        found = self.table.get(where={"collection": self.collection}, include=["metadatas"])
        entries = sorted((self._entry(metadata) for metadata in found["metadatas"] or []), key=lambda entry: entry.source)
        return entries_under(entries, under)

    def mark_pending(self, source: str) -> None:
        previous = self.get(source)
        self._put({**(previous.to_dict() if previous else {"source": source, "chunks": 0}), "state": "pending"})

    def mark_indexed(
        self, source: str, *, chunks: int, title: str | None, kind: str | None, content_hash: str, pipeline: str, changed: bool,
        validators: tuple[str | None, str | None] | None = None,
    ) -> None:  # fmt: skip
        from rag.store import indexed_entry

        self._put(indexed_entry(self.get(source), source, chunks, title, kind, content_hash, pipeline, changed, validators).to_dict())

    def mark_checked(self, source: str, validators: tuple[str | None, str | None] | None = None) -> None:
        """Seen unchanged now; ``validators`` (ETag, Last-Modified), when given, replace the recorded ones."""
        previous = self.get(source)
        if previous is not None:
            changes = {"checked_at": utc_timestamp(), **(dict(zip(("etag", "last_modified"), validators)) if validators else {})}
            self._put({**previous.to_dict(), **changes})

    def delete(self, source: str) -> None:
        self.table.delete(ids=[self._id(source)])

    def drop_collection(self) -> None:
        self.table.delete(where={"collection": self.collection})


# --- the write lock ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def server_lock(client, settings: Settings, purpose: str, lease: float = LEASE_SECONDS) -> Iterator[None]:
    """Hold the write lease of ``settings.collection`` on the server; raise :class:`rag.store.StoreBusy` if another holds it.

    Leases are numbered: ``NAME@N``. A client takes the next number after the newest
    lease (once that one is released or expired) with ``add``, which keeps the first
    writer's entry and ignores the others; it holds the lock if the entry is its own and
    still the newest. No lease is ever overwritten by another client, so two clients can
    never both hold one; a holder stalled past its expiry loses it (and logs so).
    """
    from rag.store import StoreBusy

    locks = _bookkeeping(client, LOCK_COLLECTION)
    name = settings.collection
    token = uuid.uuid4().hex
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose, "command": " ".join(sys.argv)[:300], "since": utc_timestamp()}

    def leases() -> dict[int, dict]:
        found = locks.get(where={"collection": name}, include=["metadatas"])
        return {int(metadata["number"]): metadata for metadata in found["metadatas"] or []}

    def lease_metadata(number: int, expires: float) -> dict:
        return {"collection": name, "number": number, "token": token, "expires": expires, "holder": json.dumps(holder)}

    def busy(held: dict) -> StoreBusy:
        return StoreBusy(
            f"collection {name!r} on {settings.chroma_url} is being written by {_describe(held)}; wait for it to finish (or stop it) and try again"
        )

    number = None
    for _attempt in range(5):
        found = leases()
        newest = max(found, default=-1)
        if newest >= 0 and float(found[newest]["expires"]) > time.time():
            raise busy(found[newest])
        if newest >= 0 and found[newest]["expires"] > 0:
            logger.info("taking over the expired write lease of %r (%s)", name, _describe(found[newest]))
        candidate = newest + 1
        locks.add(ids=[f"{name}@{candidate}"], embeddings=[[0.0]], documents=[name], metadatas=[lease_metadata(candidate, time.time() + lease)])
        found = leases()  # first writer wins: ours only if no one added this number before us, and none is newer
        if found.get(candidate, {}).get("token") == token and max(found) == candidate:
            number = candidate
            break
        if candidate in found and found[candidate].get("token") != token and float(found[candidate]["expires"]) > time.time():
            raise busy(found[candidate])
    if number is None:
        raise StoreBusy(f"collection {name!r} on {settings.chroma_url} is being written by another client; try again")
    older = [f"{name}@{n}" for n in found if n < number]
    if older:
        locks.delete(ids=older)  # history; a client adding one of them again sees ours is newer
    stop = threading.Event()
    lease_id = f"{name}@{number}"

    def renew() -> None:
        while not stop.wait(lease / 4):
            try:
                if max(leases(), default=number) != number:
                    logger.warning("lost the write lease of collection %r (it expired and another client took it)", name)
                    return
                locks.update(ids=[lease_id], metadatas=[lease_metadata(number, time.time() + lease)])
            except Exception as error:  # the server is unreachable for a moment: try at the next beat
                logger.warning("could not renew the write lease of %r: %s", name, error)

    renewer = threading.Thread(target=renew, name="rag-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        with contextlib.suppress(Exception):  # unreachable: the lease expires on its own
            locks.update(ids=[lease_id], metadatas=[lease_metadata(number, 0.0)])  # released: the next client takes number + 1


def _describe(held: dict) -> str:
    try:
        holder = json.loads(held.get("holder") or "{}")
    except ValueError:
        holder = {}
    return f"{holder.get('purpose', 'another client')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')})"
