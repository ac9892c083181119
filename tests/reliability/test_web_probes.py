"""SSRF and resource probes against the safe fetcher, as tables: every probe must be refused.

These extend tests/sources/test_web.py without repeating it: the addresses there are
checked as IP literals (``check_address``) and a few redirects; here each address is
written in the notations an attacker uses (decimal, octal, hex, short, IPv6-mapped,
-compatible and NAT64 forms, names resolving to it, URLs two parsers read differently),
fetched directly and through a redirect from a real server on 127.0.0.1, and the
servers misbehave in ways test_web.py does not try (headers forever, status lines
trickled, nested compression, chunked bodies without end). Names are resolved by
a fake resolver (monkeypatched ``getaddrinfo``), never by DNS.

Each collected test case is one probe refused (``pytest --collect-only -q`` counts them).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import pytest

from rag.sources.web import BlockedAddress, FetchError, FetchPolicy, fetch
from tests.conftest import REPO_ROOT
from tests.local_site import LocalSite, Page, redirect

DEFAULT = FetchPolicy(timeout=2, deadline=4)  # loopback and private networks refused
LOCAL = FetchPolicy(allow_private_network=True, max_bytes=1_000_000, timeout=2, deadline=4)
ALWAYS = "link-local, cloud-metadata or reserved"
OPT_IN = "--allow-private-network"

# Loopback and private addresses in every notation: refused unless the user opts in.
LOOPBACK_URLS = [
    "http://2130706433/",  # decimal
    "http://017700000001/",  # octal, whole
    "http://0177.0.0.1/",  # octal, dotted
    "http://0x7f000001/",  # hex, whole
    "http://0x7f.0.0.1/",  # hex, dotted
    "http://127.1/",  # short
    "http://127.0.1/",
    "http://127.000.000.001/",  # zero-padded
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",  # IPv4-mapped, hex
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated; routed to IPv4 where sit0 is up)
    "http://[64:ff9b::7f00:1]/",  # NAT64
    "http://localhost/",  # a name for loopback (the hosts file, no DNS)
    "http://example.org@127.0.0.1/",  # user info before the real host
    "HTTP://127.0.0.1/",
    "http://10.0.0.1/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://[fc00::1]/",  # unique local
]

# Link-local, cloud-metadata and non-host addresses in every notation: refused even with the opt-in.
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",  # decimal
    "http://0xa9fea9fe/",  # hex
    "http://0251.0376.0251.0376/",  # octal
    "http://169.254.43518/",  # short
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped, hex
    "http://[::a9fe:a9fe]/",  # IPv4-compatible
    "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated (SIIT)
    "http://[2002:a9fe:a9fe::1]/",  # 6to4
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 well-known prefix
    "http://[64:ff9b:1::a9fe:a9fe]/",  # NAT64 local-use prefix
    "http://[fe80::a9fe:a9fe]/",  # IPv6 link-local
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "http://100.100.100.200/",  # Alibaba Cloud metadata
    "http://168.63.129.16/",  # Azure wireserver
    "http://192.0.0.192/",  # Oracle Cloud metadata
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://255.255.255.255/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
]

# Schemes not tried by test_web.py (which tries file:, ftp:, gopher:, javascript:).
SCHEME_URLS = ["data:text/html,<p>hi</p>", "dict://127.0.0.1:11211/stat", "ldap://127.0.0.1/", "jar:http://127.0.0.1!/", "netdoc:///etc/passwd", "//127.0.0.1/", "http:/127.0.0.1/"]

# Names that resolve to metadata or loopback addresses (by the fake resolver below).
RESOLVED = {
    "metadata.google.internal": ["169.254.169.254"],
    "xn--bcher-kva.example": ["127.0.0.1"],  # bücher.example
    "xn--fa-hia.example": ["169.254.169.254"],  # faß.example (IDNA 2008)
    "instance-data.ec2.internal": ["169.254.169.254"],
    "metadata.azure.internal": ["fd00:ec2::254"],
    "half-internal.test": ["93.184.216.34", "127.0.0.1"],  # one public address does not excuse the other
}


@pytest.fixture
def resolver(monkeypatch):
    """``getaddrinfo`` answering the names in RESOLVED, and ``example.org`` with a public address; others as before."""
    real = socket.getaddrinfo
    names = {**RESOLVED, "example.org": ["93.184.216.34"]}

    def fake(host, port, *args, **kwargs):
        if isinstance(host, str) and host.lower() in names:
            return [
                (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 80))
                for address in names[host.lower()]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.fixture
def site():
    with LocalSite() as running:
        yield running


@pytest.mark.parametrize("url", LOOPBACK_URLS)
def test_loopback_and_private_urls_in_every_notation_need_the_opt_in(url):
    with pytest.raises(BlockedAddress, match=OPT_IN):
        fetch(url, DEFAULT)


@pytest.mark.parametrize("url", METADATA_URLS)
def test_metadata_and_link_local_urls_in_every_notation_are_always_refused(url):
    for policy in (DEFAULT, LOCAL):
        with pytest.raises(BlockedAddress, match=ALWAYS):
            fetch(url, policy)


@pytest.mark.parametrize("url", SCHEME_URLS)
def test_other_schemes_and_hostless_urls_are_refused(url):
    with pytest.raises(FetchError, match="scheme|no host"):
        fetch(url, LOCAL)


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_names_resolving_to_internal_addresses_are_refused(resolver, name):
    if "169.254.169.254" in RESOLVED[name] or "fd00:ec2::254" in RESOLVED[name]:
        policy, reason = LOCAL, ALWAYS
    else:
        policy, reason = DEFAULT, OPT_IN
    with pytest.raises(BlockedAddress, match=reason):
        fetch(f"http://{name}/computeMetadata/v1/", policy)


@pytest.mark.parametrize(
    "make_url",
    [
        lambda port: f"http://127.0.0.1:{port}\\@example.org/",  # urlsplit reads example.org, urllib3 connects to 127.0.0.1
        lambda port: "http://169.254.169.254\\@example.org/",
        lambda port: f"http://example.org:{port}\\@127.0.0.1:{port}/",  # the other way round
        lambda port: f"http://%31%32%37.0.0.1:{port}/",  # percent-encoded: urllib3 decodes it
    ],
    ids=["backslash-to-loopback", "backslash-to-metadata", "backslash-from-loopback", "percent-encoded-host"],
)
def test_urls_two_parsers_read_differently_are_refused_before_connecting(resolver, site, make_url):
    site.routes["/"] = Page(b"internal secret")
    with pytest.raises(FetchError, match="ambiguous URL"):
        fetch(make_url(site.server.server_address[1]), FetchPolicy(timeout=2, deadline=4))
    assert site.requests == []


def test_international_names_are_checked_as_the_connection_will_use_them(resolver):
    """Not mistaken for ambiguous, and resolved in the IDNA 2008 form urllib3 connects to (not Python's IDNA 2003 one)."""
    with pytest.raises(BlockedAddress, match=OPT_IN):
        fetch("http://Bücher.example/", DEFAULT)
    with pytest.raises(BlockedAddress, match=ALWAYS):
        fetch("http://faß.example/", LOCAL)  # IDNA 2003 would read fass.example


REDIRECT_TARGETS = [*METADATA_URLS, "data:text/html,<p>hi</p>", "gopher://127.0.0.1:70/_GET", "dict://127.0.0.1:11211/", "//169.254.169.254/latest"]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
def test_redirects_to_refused_targets_are_refused(site, target):
    """The first hop is allowed (loopback, opted in); where it redirects is checked like a URL given directly."""
    site.routes["/go"] = redirect(target, status=307)
    with pytest.raises(FetchError, match=f"{ALWAYS}|scheme"):
        fetch(site.url("/go"), LOCAL)
    assert site.requests == ["/go"]


def test_redirect_to_an_ambiguous_or_invalid_url_is_refused(resolver, site):
    site.routes["/ambiguous"] = redirect("http://169.254.169.254\\@example.org/")
    site.routes["/invalid"] = redirect("http://[::1/")
    with pytest.raises(FetchError, match="ambiguous URL"):
        fetch(site.url("/ambiguous"), LOCAL)
    with pytest.raises(FetchError, match="malformed URL, or a redirect to one"):  # before the fix: a ValueError
        fetch(site.url("/invalid"), LOCAL)


# --- servers that misbehave -----------------------------------------------------------------------


def headers_forever(line: bytes = b"X-Filler: a\r\n", pause: float = 0.05):
    """A status line, then header lines one by one, never the blank line that ends them."""

    def respond(handler) -> None:
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100_000):
                handler.wfile.write(line)
                handler.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass

    return respond


def one_endless_header(handler) -> None:
    """A header whose value never ends, one byte at a time (each read is within its timeout)."""
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(100_000):
            handler.wfile.write(b"a")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def trickled_status_line(handler) -> None:
    """A status line sent one byte at a time, then spaces without end."""
    try:
        for byte in b"HTTP/1.1 200 OK" + b" " * 100_000:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def endless_chunks(handler) -> None:
    """Chunked transfer encoding, chunks without end."""
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    try:
        for _ in range(100_000):
            handler.wfile.write(chunk)
    except OSError:
        pass


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
@pytest.mark.parametrize("respond", [headers_forever(), one_endless_header, trickled_status_line], ids=["headers-forever", "endless-header-line", "trickled-status-line"])
def test_the_deadline_holds_while_headers_arrive(site, respond):
    site.routes["/slow"] = respond
    started = time.monotonic()
    with pytest.raises(FetchError, match="took longer than 1 s"):
        fetch(site.url("/slow"), FetchPolicy(allow_private_network=True, timeout=5, deadline=1))
    assert time.monotonic() - started < 4  # deadline + WATCHDOG_GRACE; before the fix: 5 s for 100 headers, an hour for the endless line


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_a_server_that_accepts_and_never_answers_is_left_at_the_deadline():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="took longer than 1 s"):
            fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/", FetchPolicy(allow_private_network=True, timeout=5, deadline=1))
        assert time.monotonic() - started < 3
    finally:
        for connection in accepted:
            connection.close()
        listener.close()


def test_too_many_headers_are_refused(site):
    site.routes["/many"] = headers_forever(pause=0)
    with pytest.raises(FetchError, match="more than 100 headers"):
        fetch(site.url("/many"), LOCAL)


def test_endless_chunked_body_is_cut_at_the_limit(site):
    site.routes["/chunks"] = endless_chunks
    with pytest.raises(FetchError, match="larger than the 1.0 MB limit"):
        fetch(site.url("/chunks"), LOCAL)


def _gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join(compressor.compress(block) for _ in range(size // len(block))) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "make_body"),
    [
        ("gzip, gzip", lambda: gzip.compress(_gzip_of_zeros(150 << 20))),  # 150 MB in 1 KB
        ("deflate", lambda: zlib.compress(bytes(100 << 20), 9)),
        ("gzip, " * 10 + "gzip", lambda: gzip.compress(b"x")),  # a chain of decoders
    ],
    ids=["nested-gzip-bomb", "deflate-bomb", "eleven-encodings"],
)
def test_compression_bombs_are_cut_without_inflating(site, encoding, make_body):
    site.routes["/bomb"] = Page(make_body(), content_type="text/plain", headers={"Content-Encoding": encoding})
    tracemalloc.start()
    try:
        with pytest.raises(FetchError, match="larger than the 1.0 MB limit|content encodings|failed"):
            fetch(site.url("/bomb"), LOCAL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"{peak >> 20} MB allocated while fetching"


@pytest.mark.integration  # the real CLI, its loader process
def test_the_cli_refuses_every_notation_and_reports_each(tmp_path):
    urls = [LOOPBACK_URLS[0], LOOPBACK_URLS[2], LOOPBACK_URLS[10], METADATA_URLS[1], METADATA_URLS[5], METADATA_URLS[7], "http://0.0.0.0/"]
    run = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", *urls, "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "RAG_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 4, run.stderr  # nothing could be done
    assert "Traceback" not in run.stderr
    reasons = {failure["source"]: failure["reason"] for failure in json.loads(run.stdout)["failures"]}
    assert len(reasons) == len(urls)
    assert all("refusing to connect" in reason for reason in reasons.values()), reasons
