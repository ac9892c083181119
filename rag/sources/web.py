"""Fetching web pages safely: http(s) only, bounded in time and size, every address checked.

Known ways a document fetcher gets turned against its host (SSRF through
LangChain's recursive URL loader, CVE-2023-46229 and CVE-2024-0243; redirects
to internal addresses followed by ``requests``) are closed here:

- only ``http`` and ``https`` URLs;
- the host's addresses are checked before connecting, and the address actually
  connected to is checked again (so DNS rebinding between the two cannot slip
  through);
- redirects are followed by hand, each hop checked the same way;
- link-local and cloud-metadata addresses are always refused; loopback and
  private ranges only when the caller opts in (``allow_private_network``);
- connect/read timeouts, an overall deadline and a maximum body size (counted
  after decompression); proxies and ``.netrc`` from the environment are ignored.
  The deadline also holds while the status line and headers arrive (a server
  trickling headers forever keeps every read within its timeout): shortly after
  it passes, the fetch's sockets are shut down.

A re-fetch can be conditional: given the ``ETag`` and ``Last-Modified`` of the last
fetch, the request carries ``If-None-Match`` / ``If-Modified-Since`` and a server that
honours them answers ``304 Not Modified`` without the body (``FetchedPage.not_modified``);
one that ignores them sends the page as usual.

Example::

    from rag.settings import Settings
    from rag.sources.web import FetchPolicy, fetch
    page = fetch("https://example.org/", FetchPolicy.from_settings(Settings()))
    page.url, page.content_type, page.charset, len(page.body)
    again = fetch(page.url, validators=page.validators)   # again.not_modified: nothing downloaded
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from rag.errors import RagError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.sources.load import LoadOptions

logger = logging.getLogger(__name__)

USER_AGENT = "rag/0.1 (local document ingest)"
REDIRECT_STATUSES = {301, 302, 303, 307, 308}

# Never reachable, whatever the user allows: link-local (cloud metadata lives
# there), the metadata services' other addresses, and addresses that are not
# hosts at all (unspecified, multicast, reserved, broadcast).
ALWAYS_BLOCKED = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "169.254.0.0/16",  # link-local; AWS/GCP/Azure/Oracle metadata 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata (older Pythons count it as global)
        "168.63.129.16/32",  # Azure wireserver
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "fd20:ce::254/128",  # GCP metadata over IPv6
        "ff00::/8",
    )
)


# IPv6 ranges whose last 32 bits are an IPv4 address that a host or a NAT64 gateway may
# reach in its place: IPv4-compatible, IPv4-translated, NAT64 well-known and local-use.
EMBEDDING_IPV4 = tuple(ipaddress.ip_network(network) for network in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48"))


class FetchError(RagError):
    """A URL could not be fetched; the message says why."""


class BlockedAddress(FetchError):
    """The URL points at an address this fetcher refuses to reach."""


_SETTINGS = Settings.model_fields  # the defaults below are the settings' defaults, set in one place
MAX_REDIRECTS = 5  # a limit of the protocol's use, not a setting: browsers stop at about 20, curl at 50
# The watchdog shuts a fetch's sockets this long after its deadline: the deadline checks between
# reads act first, and so does the loader process's own limit (the same number of seconds).
WATCHDOG_GRACE = 1.0


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one fetch; the defaults are those of the :class:`~rag.settings.Settings` fields named below."""

    allow_private_network: bool = _SETTINGS["allow_private_network"].default
    max_bytes: int = _SETTINGS["max_source_bytes"].default
    timeout: float = _SETTINGS["fetch_timeout"].default  # connect and read, each
    deadline: float = _SETTINGS["source_timeout"].default  # whole fetch, redirects included
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Settings | LoadOptions) -> FetchPolicy:
        """The limits ``settings`` ask for: a :class:`~rag.settings.Settings` or the
        :class:`~rag.sources.load.LoadOptions` made from one (their fields have the same names)."""
        return cls(
            allow_private_network=settings.allow_private_network,
            max_bytes=settings.max_source_bytes,
            timeout=settings.fetch_timeout,
            deadline=settings.source_timeout,
        )


@dataclass(frozen=True)
class FetchedPage:
    url: str  # after redirects
    status: int
    content_type: str  # lower case, without parameters, e.g. "text/html"
    charset: str | None  # from the Content-Type header, if any
    body: bytes
    validators: tuple[str | None, str | None] = (None, None)  # (ETag, Last-Modified) as the server sent them

    @property
    def not_modified(self) -> bool:
        """The server answered a conditional request with 304: the page is as it was, ``body`` is empty."""
        return self.status == 304


def conditional_headers(validators: tuple[str | None, str | None] | None) -> dict[str, str]:
    """``If-None-Match`` / ``If-Modified-Since`` for the (ETag, Last-Modified) of an earlier fetch."""
    etag, last_modified = validators or (None, None)
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    return headers


def check_address(address: str, allow_private_network: bool) -> None:
    """Raise :class:`BlockedAddress` unless ``address`` (an IP literal) may be reached."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif int(ip) > 1 and any(ip in network for network in EMBEDDING_IPV4):  # not :: nor ::1
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in network for network in ALWAYS_BLOCKED):
        raise BlockedAddress(f"refusing to connect to {ip}: link-local, cloud-metadata or reserved address")
    if not ip.is_global and not allow_private_network:
        raise BlockedAddress(
            f"refusing to connect to {ip}: loopback or private network address. "
            "Allow it with --allow-private-network (RAG_ALLOW_PRIVATE_NETWORK=1) if you trust the URL"
        )


def check_url(url: str, allow_private_network: bool) -> tuple[str, int]:
    """Check scheme and every address the host resolves to; returns (host, port)."""
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed [IPv6 address
        raise FetchError(f"not a valid URL: {url} ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {parts.scheme or '(none)'!r} in {url}: only http and https")
    if not parts.hostname:
        raise FetchError(f"no host in URL {url}")
    connected = _connection_host(url)
    if connected != _host_key(parts.hostname):
        # e.g. http://127.0.0.1\@example.org/: checking one host and connecting to the other
        raise FetchError(f"ambiguous URL {url}: its host reads as {parts.hostname!r} to one URL parser and {connected!r} to another")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise FetchError(f"bad port in URL {url}: {error}") from None
    try:
        infos = socket.getaddrinfo(connected, port, type=socket.SOCK_STREAM)  # the name urllib3 will connect to
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(f"cannot resolve host {parts.hostname!r}: {error}") from None
    for info in infos:
        try:
            check_address(info[4][0], allow_private_network)
        except BlockedAddress as error:
            raise BlockedAddress(f"{url}: {error}") from None
    return parts.hostname, port


class _Watchdog:
    """Shuts down every socket of one fetch once its deadline passes, waking any read blocked on it."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _connection_host(url: str) -> str:
    """The host ``requests`` (urllib3) connects to for ``url``, which may differ from what ``urlsplit`` reads."""
    from urllib3.exceptions import LocationParseError
    from urllib3.util import parse_url

    try:
        host = parse_url(url).host
    except LocationParseError as error:
        raise FetchError(f"not a valid URL: {url} ({error})") from None
    return _host_key(host or "")


def _host_key(host: str) -> str:
    """``host`` as urllib3 writes it: lower case, no brackets, international names IDNA-2008 encoded."""
    import idna  # a dependency of requests; urllib3 encodes with it

    host = host.strip("[]").lower()
    if host.isascii():
        return host
    try:
        return idna.encode(host, strict=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return host


def _guarded_session(policy: FetchPolicy, watchdog: _Watchdog):
    """A ``requests`` session whose every new connection checks the peer's address and is watched by ``watchdog``."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def checked(connection_class):
        class Checked(connection_class):
            def _new_conn(self):
                sock = super()._new_conn()
                try:
                    check_address(sock.getpeername()[0], policy.allow_private_network)
                except BlockedAddress:
                    sock.close()
                    raise
                watchdog.watch(sock)
                return sock

        return Checked

    class CheckedHTTPPool(HTTPConnectionPool):
        ConnectionCls = checked(HTTPConnection)

    class CheckedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = checked(HTTPSConnection)

    class CheckedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": CheckedHTTPPool, "https": CheckedHTTPSPool}

    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    session.headers["User-Agent"] = USER_AGENT
    session.mount("http://", CheckedAdapter(max_retries=0))
    session.mount("https://", CheckedAdapter(max_retries=0))
    return session


def fetch(url: str, policy: FetchPolicy | None = None, validators: tuple[str | None, str | None] | None = None) -> FetchedPage:
    """Fetch one URL within ``policy``; raises :class:`FetchError` with the reason.

    ``validators``: the (ETag, Last-Modified) of an earlier fetch; the request is then
    conditional, and a ``304`` answer comes back as a page with ``not_modified`` set, no
    body, and the validators the server sent (else those given).
    """
    import requests

    policy = policy or FetchPolicy()
    headers = conditional_headers(validators)
    deadline = time.monotonic() + policy.deadline
    late = FetchError(f"{url} took longer than {policy.deadline:g} s to fetch (redirects included)")
    with _Watchdog(policy.deadline + WATCHDOG_GRACE) as watchdog, _guarded_session(policy, watchdog) as session:
        current = url
        for _hop in range(policy.max_redirects + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise late
            wait = min(policy.timeout, left)  # no hop, nor any read in it, may outlast the deadline
            check_url(current, policy.allow_private_network)
            try:
                response = session.get(current, stream=True, allow_redirects=False, timeout=(wait, wait), headers=headers)
            except BlockedAddress as error:
                raise BlockedAddress(f"{current}: {error}") from None
            except requests.exceptions.ConnectionError as error:
                blocked = _find_cause(error, BlockedAddress)
                if blocked is not None:
                    raise BlockedAddress(f"{current}: {blocked}") from None
                if watchdog.expired:  # its sockets were shut down mid-answer
                    raise late from None
                raise FetchError(f"cannot connect to {current}: {_short(error)}") from None
            except requests.exceptions.Timeout:
                if wait < policy.timeout or watchdog.expired:
                    raise late from None
                raise FetchError(f"timed out after {policy.timeout:g} s waiting for {current}") from None
            except requests.exceptions.RequestException as error:
                if watchdog.expired:
                    raise late from None
                raise FetchError(f"fetching {current} failed: {_short(error)}") from None
            except ValueError as error:  # requests parses a redirect's Location before returning: "http://[::1"
                raise FetchError(f"fetching {current} failed: {_short(error)} (a malformed URL, or a redirect to one)") from None
            with response:
                if response.status_code in REDIRECT_STATUSES and response.headers.get("Location"):
                    try:
                        target = urljoin(current, response.headers["Location"])
                    except ValueError:
                        raise FetchError(f"{current} redirects to an invalid URL: {response.headers['Location'][:200]!r}") from None
                    logger.debug("redirect %s -> %s", current, target)
                    current = target
                    continue
                if response.status_code >= 400 or (response.status_code == 304 and not headers):
                    raise FetchError(f"HTTP {response.status_code} {response.reason} for {current}")
                sent = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
                content_type, charset = _parse_content_type(response.headers.get("Content-Type", ""))
                if response.status_code == 304:
                    old_etag, old_modified = validators or (None, None)
                    return FetchedPage(current, 304, content_type, charset, b"", (sent[0] or old_etag, sent[1] or old_modified))
                body = _read_limited(response, policy, deadline, current)
                if watchdog.expired:  # the body ended because its socket was shut down: it is cut short
                    raise FetchError(f"{current} took longer than {policy.deadline:g} s to download")
                return FetchedPage(current, response.status_code, content_type, charset, body, sent)
        raise FetchError(f"too many redirects (more than {policy.max_redirects}) from {url}")


def _read_limited(response, policy: FetchPolicy, deadline: float, url: str) -> bytes:
    import requests
    import urllib3

    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(f"{url} is {int(declared) / 1e6:.1f} MB, over the {policy.max_bytes / 1e6:.1f} MB limit (max_source_bytes)")
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            part = response.raw.read1(65536, decode_content=True)  # returns what has arrived, not a full block
            if not part:
                break
            size += len(part)
            if size > policy.max_bytes:
                raise FetchError(f"{url} is larger than the {policy.max_bytes / 1e6:.1f} MB limit (max_source_bytes)")
            if time.monotonic() > deadline:
                raise FetchError(f"{url} took longer than {policy.deadline:g} s to download")
            parts.append(part)
    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as error:
        if time.monotonic() >= deadline:  # the read timed out because the deadline was near
            raise FetchError(f"{url} took longer than {policy.deadline:g} s to download") from None
        raise FetchError(f"reading {url} failed: {_short(error)}") from None
    return b"".join(parts)


def _parse_content_type(header: str) -> tuple[str, str | None]:
    kind, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip().strip("\"'").lower()
    return kind.strip().lower(), charset


def _find_cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        stack.extend(item for item in (current.__cause__, current.__context__, *current.args) if isinstance(item, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return None


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."
