"""The safe fetcher against a real HTTP server on 127.0.0.1 (the tests opt in to private addresses)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.local_site import LocalSite, Page, delayed, endless, gzip_bomb, redirect, trickle
from rag.sources.web import BlockedAddress, FetchError, FetchPolicy, check_address, fetch

LOCAL = FetchPolicy(allow_private_network=True, max_bytes=1_000_000, timeout=5, deadline=10)


@pytest.fixture
def site():
    with LocalSite() as running:
        yield running


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "169.254.0.1", "fd00:ec2::254", "fd20:ce::254", "100.100.100.200", "fe80::1", "0.0.0.0", "224.0.0.1", "::ffff:169.254.169.254"],
)
def test_link_local_and_metadata_addresses_are_refused_even_when_private_is_allowed(address):
    with pytest.raises(BlockedAddress, match="link-local, cloud-metadata or reserved"):
        check_address(address, allow_private_network=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "::1", "fc00::1", "100.64.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1"])
def test_loopback_and_private_addresses_need_the_opt_in(address):
    with pytest.raises(BlockedAddress, match="--allow-private-network"):
        check_address(address, allow_private_network=False)
    check_address(address, allow_private_network=True)


def test_public_addresses_pass():
    check_address("93.184.216.34", allow_private_network=False)
    check_address("2606:2800:220:1:248:1893:25c8:1946", allow_private_network=False)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "gopher://127.0.0.1:70/", "javascript:alert(1)"])
def test_only_http_and_https(url):
    with pytest.raises(FetchError, match="scheme|only http"):
        fetch(url, LOCAL)


def test_fetches_a_page_with_its_type_and_charset(site):
    site.routes["/page"] = Page("<p>héllo</p>".encode("latin-1"), content_type="text/html; charset=ISO-8859-1")
    page = fetch(site.url("/page"), LOCAL)
    assert (page.status, page.content_type, page.charset, page.body) == (200, "text/html", "iso-8859-1", b"<p>h\xe9llo</p>")


def test_loopback_server_is_refused_without_the_opt_in(site):
    site.routes["/page"] = Page(b"secret")
    with pytest.raises(BlockedAddress, match="loopback or private"):
        fetch(site.url("/page"), FetchPolicy())
    assert site.requests == []  # refused before connecting


def test_redirects_are_followed_and_each_hop_checked(site):
    site.routes["/start"] = redirect("/middle")
    site.routes["/middle"] = redirect(site.url("/end"), status=301)
    site.routes["/end"] = Page(b"done", content_type="text/plain")
    page = fetch(site.url("/start"), LOCAL)
    assert (page.url, page.body) == (site.url("/end"), b"done")


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "file:///etc/passwd", "http://0.0.0.0:1/"]
)
def test_redirect_to_metadata_or_other_schemes_is_refused(site, target):
    site.routes["/go"] = redirect(target)
    with pytest.raises(FetchError, match="refusing|scheme"):
        fetch(site.url("/go"), LOCAL)


def test_redirect_loops_end(site):
    site.routes["/a"] = redirect("/b")
    site.routes["/b"] = redirect("/a")
    with pytest.raises(FetchError, match="too many redirects"):
        fetch(site.url("/a"), LOCAL)


def test_http_errors_name_the_status(site):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(site.url("/missing"), LOCAL)


def test_declared_size_over_the_limit_is_refused(site):
    site.routes["/big"] = Page(b"x" * 2_000_000, content_type="text/plain")
    with pytest.raises(FetchError, match="over the 1.0 MB limit"):
        fetch(site.url("/big"), LOCAL)


def test_endless_body_is_cut_at_the_limit(site):
    site.routes["/endless"] = endless()
    with pytest.raises(FetchError, match="larger than the 1.0 MB limit"):
        fetch(site.url("/endless"), LOCAL)


def test_decompressed_size_counts(site):
    site.routes["/bomb"] = gzip_bomb(50_000_000)
    started = time.monotonic()
    with pytest.raises(FetchError, match="larger than the 1.0 MB limit"):
        fetch(site.url("/bomb"), LOCAL)
    assert time.monotonic() - started < 5


def test_read_timeout(site):
    def silent(handler):
        time.sleep(3)

    site.routes["/silent"] = silent
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch(site.url("/silent"), FetchPolicy(allow_private_network=True, timeout=0.5))
    assert time.monotonic() - started < 2.5


def test_overall_deadline_stops_a_trickling_server(site):
    site.routes["/slow"] = trickle(seconds=30)
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch(site.url("/slow"), FetchPolicy(allow_private_network=True, max_bytes=10, timeout=5, deadline=1))
    assert time.monotonic() - started < 8


def test_overall_deadline_covers_a_chain_of_slow_redirects(site):
    hops = 6
    for hop in range(hops):
        site.routes[f"/hop{hop}"] = delayed(redirect(f"/hop{hop + 1}"), 0.8)  # each well within the 2 s read timeout
    site.routes[f"/hop{hops}"] = Page(b"finally", content_type="text/plain")
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 2 s to fetch"):
        fetch(site.url("/hop0"), FetchPolicy(allow_private_network=True, timeout=2, deadline=2, max_redirects=10))
    assert time.monotonic() - started < 3.2  # the whole chain would take 4.8 s
    assert len(site.requests) < hops


def test_address_connected_to_is_checked_again(site, monkeypatch):
    """DNS rebinding: the name resolves to a public address for the check, then to loopback."""
    site.routes["/page"] = Page(b"internal")
    real_getaddrinfo = socket.getaddrinfo
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]])

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            for answer in answers:
                return answer
            return real_getaddrinfo("127.0.0.1", port, *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = site.server.server_address[1]
    with pytest.raises(BlockedAddress, match="127.0.0.1"):
        fetch(f"http://rebind.test:{port}/page", FetchPolicy())
    assert site.requests == []


def test_proxy_settings_from_the_environment_are_ignored(site, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://169.254.169.254:3128")
    monkeypatch.setenv("http_proxy", "http://169.254.169.254:3128")
    site.routes["/page"] = Page(b"ok", content_type="text/plain")
    assert fetch(site.url("/page"), LOCAL).body == b"ok"


def test_fetch_limits_default_to_the_settings_defaults_and_follow_them():
    from rag.settings import Settings
    from rag.sources import LoadOptions

    assert FetchPolicy() == FetchPolicy.from_settings(LoadOptions()) == FetchPolicy.from_settings(Settings.model_construct())
    custom = Settings(max_source_bytes=5, fetch_timeout=1.5, source_timeout=2.5, allow_private_network=True)
    assert FetchPolicy.from_settings(custom) == FetchPolicy(allow_private_network=True, max_bytes=5, timeout=1.5, deadline=2.5)
    assert FetchPolicy.from_settings(LoadOptions.from_settings(custom)) == FetchPolicy.from_settings(custom)
