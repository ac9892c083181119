"""The safe fetcher against a real HTTP server on 127.0.0.1 (the tests opt in to private addresses)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.local_site import ConditionalPage, LocalSite, Page, delayed, endless, gzip_bomb, redirect, trickle
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


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_read_timeout(site):
    def silent(handler):
        time.sleep(3)

    site.routes["/silent"] = silent
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch(site.url("/silent"), FetchPolicy(allow_private_network=True, timeout=0.5))
    assert time.monotonic() - started < 2.5


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_overall_deadline_stops_a_trickling_server(site):
    site.routes["/slow"] = trickle(seconds=30)
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 1 s"):
        fetch(site.url("/slow"), FetchPolicy(allow_private_network=True, max_bytes=10, timeout=5, deadline=1))
    assert time.monotonic() - started < 8


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
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


# --- conditional re-fetching (ETag / Last-Modified) -------------------------------------------------

ARTICLE = b"<html><head><title>Tides</title></head><body><main><p>" + b"The tide tables are printed every spring. " * 12 + b"</p></main></body></html>"


def test_a_conditional_fetch_of_an_unchanged_page_downloads_nothing():
    page = ConditionalPage(ARTICLE)
    with LocalSite({"/tides.html": page}) as site:
        first = fetch(site.url("/tides.html"), LOCAL)
        assert (first.status, first.body, first.validators) == (200, ARTICLE, ('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT"))
        again = fetch(site.url("/tides.html"), LOCAL, first.validators)
        assert again.not_modified and again.body == b"" and again.validators == first.validators
        page.change(ARTICLE + b"<p>new</p>")
        changed = fetch(site.url("/tides.html"), LOCAL, first.validators)
        assert not changed.not_modified and changed.body.endswith(b"<p>new</p>") and changed.validators[0] == '"v2"'
    assert (page.full, page.not_modified) == (2, 1)


def test_last_modified_alone_makes_the_fetch_conditional():
    page = ConditionalPage(ARTICLE, etag=None)
    with LocalSite({"/tides.html": page}) as site:
        first = fetch(site.url("/tides.html"), LOCAL)
        assert first.validators == (None, "Tue, 01 Dec 2026 10:00:00 GMT")
        assert fetch(site.url("/tides.html"), LOCAL, first.validators).not_modified
    assert (page.full, page.not_modified) == (1, 1)


def test_a_server_that_ignores_validators_still_sends_the_page():
    page = ConditionalPage(ARTICLE, honour=False)
    with LocalSite({"/tides.html": page}) as site:
        again = fetch(site.url("/tides.html"), LOCAL, ('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT"))
    assert (again.status, again.body, page.full, page.not_modified) == (200, ARTICLE, 1, 0)


def test_a_304_to_a_plain_request_is_an_error(site):
    site.routes["/odd"] = Page(b"", status=304)
    with pytest.raises(FetchError, match="HTTP 304"):
        fetch(site.url("/odd"), LOCAL)


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_reingest_of_unchanged_urls_gets_304s_and_adds_nothing(settings):
    """Through ingest and the loader process: the record keeps each URL's validators, the re-run sends them."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from rag.indexing import ingest
    from rag.store import recorded_sources

    settings = settings.with_overrides(allow_private_network=True)
    honouring, ignoring = ConditionalPage(ARTICLE), ConditionalPage(ARTICLE.replace(b"Tides", b"Ebb"), honour=False)
    embeddings = DeterministicFakeEmbedding(size=32)
    with LocalSite({"/tides.html": honouring, "/ebb.html": ignoring}) as site:
        urls = [site.url("/tides.html"), site.url("/ebb.html")]
        first = ingest(urls, settings, embeddings)
        assert first.sources_added == 2 and first.chunks_added > 0
        entries = {entry.source: entry for entry in recorded_sources(settings)}
        assert entries[urls[0]].validators == ('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")

        again = ingest(urls, settings, embeddings)
        assert (again.sources_skipped, again.chunks_added, again.embedded) == (2, 0, 0)
        assert (honouring.full, honouring.not_modified) == (1, 1)  # unchanged without downloading it
        assert (ignoring.full, ignoring.not_modified) == (2, 0)  # downloaded, found unchanged by its hash

        honouring.change(ARTICLE.replace(b"spring", b"autumn"))
        changed = ingest(urls, settings, embeddings)
        assert (changed.sources_updated, changed.sources_skipped) == (1, 1) and honouring.full == 2
        assert {entry.source: entry for entry in recorded_sources(settings)}[urls[0]].etag == '"v2"'
