"""The API's limits: one generation at a time with a bounded queue, body size, API key, loopback binds.

Example::

    slot = GenerationSlot(queue_size=4)
    await slot.acquire(gone=request.is_disconnected)   # ApiError 429 (Retry-After) when 4 requests wait, 499 if the client leaves
    ...                                                # the model is ours until slot.release()
    body = await read_body(request, limit=1_000_000)   # ApiError(413) beyond the limit
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
import socket
from collections.abc import Awaitable, Callable

from fastapi import Request

from rag.serve.schemas import ApiError



def client_gone() -> ApiError:
    """The error of a request whose client left while it waited for the model (nobody reads it: it ends the request)."""
    return ApiError(499, "client closed the request while it waited for the model", code="client_closed")


class GenerationSlot:
    """The loaded LLM, held by one generation at a time; at most ``queue_size`` requests wait for it.

    ``seconds_per_run`` (a running mean of how long generations hold the slot) sets the
    ``Retry-After`` of a refused request.
    """

    POLL_SECONDS = 0.1

    def __init__(self, queue_size: int):
        self.queue_size = queue_size
        self.waiting = 0
        self.seconds_per_run = 2.0
        self._lock = asyncio.Lock()
        self._held_since: float | None = None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def acquire(self, gone: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Wait for the model; :class:`ApiError` 429 with ``Retry-After`` when the queue is full.

        ``gone`` (the request's ``is_disconnected``) is polled while waiting: a client that
        leaves the queue gets :class:`ApiError` 499 and never holds the model.
        """
        if self._lock.locked() and self.waiting >= self.queue_size:
            retry = max(1, math.ceil(self.seconds_per_run * (self.waiting + 1)))
            raise ApiError(
                429,
                f"the model is busy and {self.waiting} request(s) already wait for it: retry in about {retry} s",
                code="model_busy",
                headers={"Retry-After": str(retry)},
            )
        self.waiting += 1
        acquiring = asyncio.ensure_future(self._lock.acquire())
        try:
            while not acquiring.done():
                await asyncio.wait({acquiring}, timeout=self.POLL_SECONDS)
                if not acquiring.done() and gone is not None and await gone():
                    raise client_gone()
            if gone is not None and await gone():  # left just as its turn came
                raise client_gone()
        except BaseException:
            self._give_up(acquiring)
            raise
        finally:
            self.waiting -= 1
        self._held_since = asyncio.get_running_loop().time()

    def _give_up(self, acquiring: asyncio.Future) -> None:
        """Leave the queue: cancel the wait, or free the model if the wait had already won it."""
        acquiring.cancel()
        acquiring.add_done_callback(lambda done: None if done.cancelled() or done.exception() else self._lock.release())

    def release(self) -> None:
        """Free the model (called on the event loop once its generation has really stopped)."""
        if self._held_since is not None:
            held = asyncio.get_running_loop().time() - self._held_since
            self.seconds_per_run = 0.8 * self.seconds_per_run + 0.2 * held
            self._held_since = None
        self._lock.release()

    def to_dict(self) -> dict:
        return {"busy": self.busy, "waiting": self.waiting, "queue_size": self.queue_size}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read no further than ``limit`` bytes: :class:`ApiError` 413 beyond it."""
    too_large = ApiError(413, f"the request body is larger than {limit} bytes (the server's max_request_bytes)", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def check_api_key(request: Request, api_key: str | None) -> None:
    """:class:`ApiError` 401 unless the request carries ``Authorization: Bearer <api_key>`` (no key set: no check)."""
    if not api_key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only ever binds loopback interfaces."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)
