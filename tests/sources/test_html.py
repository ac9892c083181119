"""rag.sources.html: main content without boilerplate, charsets, titles, hostile pages."""

from __future__ import annotations

import pytest

from rag.sources.html import html_to_text
from tests.sources.pages import PAGE


def test_html_keeps_the_main_content_and_drops_boilerplate():
    title, text = html_to_text(PAGE)
    assert title == "Tide tables | Harbour Office"
    assert text.startswith("# Tide tables\n\nHigh water at Kestrel Point is two hours after Dover.")
    assert "## Spring tides\n\n- Range up to 6 m\n- Strong currents at the bar" in text
    assert "time   height\n06:10  5.9 m" in text  # <pre> keeps its spacing
    for boilerplate in ("Contact us", "Opening hours", "Home > Tides", "Sponsored", "Copyright", "SCRIPT TEXT", "color: red"):
        assert boilerplate not in text


def test_boilerplate_can_be_kept_but_scripts_never():
    _, text = html_to_text(PAGE, strip_boilerplate=False)
    assert "Opening hours" in text and "Copyright" in text and "Tide tables" in text
    assert "SCRIPT TEXT" not in text


def test_html_without_semantic_tags_uses_class_and_id_hints():
    page = b"""<html><body><div id="navbar"><a>Home</a><a>Blog</a></div>
    <div id="content"><h1>Article</h1><p>Body text that matters.</p></div>
    <div class="site-footer">Legal stuff</div></body></html>"""
    assert html_to_text(page) == ("Article", "# Article\n\nBody text that matters.")


def test_article_header_stays_when_it_holds_the_title():
    page = b"<html><body><nav>menu</nav><article><header><h1>Post title</h1></header><p>Post body.</p></article></body></html>"
    assert html_to_text(page)[1] == "# Post title\n\nPost body."


def test_page_made_only_of_boilerplate_keeps_its_text_rather_than_nothing():
    assert html_to_text(b"<html><body><nav>Only navigation here</nav></body></html>")[1] == "Only navigation here"


@pytest.mark.parametrize("encoding", ["cp1252", "iso-8859-1", "shift_jis", "utf-8"])
def test_html_charset_from_meta(encoding):
    text = "日本語のページです" if encoding == "shift_jis" else "Crème brûlée à la carte"
    page = f'<html><head><meta charset="{encoding}"><title>t</title></head><body><p>{text}</p></body></html>'.encode(encoding)
    assert html_to_text(page)[1] == text


def test_html_charset_from_the_http_header_wins():
    page = "<html><head><meta charset='utf-8'></head><body><p>Crème</p></body></html>".encode("cp1252")
    assert html_to_text(page, declared_charset="windows-1252")[1] == "Crème"


@pytest.mark.integration  # timing/servers: seconds of waiting, kept out of the fast tier
def test_deeply_nested_html_is_parsed_without_recursion():
    depth = 50_000
    page = ("<html><body>" + "<div>" * depth + "<p>deep text</p>" + "</div>" * depth + "</body></html>").encode()
    assert html_to_text(page)[1] == "deep text"


def test_xml_entity_bomb_is_not_expanded():
    lol = "".join(f'<!ENTITY lol{n} "{"&lol%d;" % (n - 1) * 10}">' for n in range(1, 10))
    page = f'<?xml version="1.0"?><!DOCTYPE html [<!ENTITY lol0 "lol">{lol}]><html><body><p>&lol9;</p><p>Real text.</p></body></html>'
    title, text = html_to_text(page.encode())
    assert "Real text." in text
    assert len(text) < 100 and "lollol" not in text
