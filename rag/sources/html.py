"""HTML to Markdown-like text: the charset, the page's main content without boilerplate, its title.

The charset comes from the HTTP header, a BOM or ``<meta charset>``; scripts and styles
always go, and site boilerplate (``nav``, ``header``, ``footer``, ``aside``, navigation
roles and classes) goes unless ``strip_boilerplate`` is off. What is left becomes
Markdown-like text (headings, list items, paragraphs) so the splitter can cut at its structure.

Example::

    from rag.sources.html import html_to_text
    title, text = html_to_text(b"<title>Tides</title><main><h1>Tides</h1><p>High water</p></main>")
"""

from __future__ import annotations

import codecs
import re

from rag.sources.text import decode_text

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "embed", "canvas", "head", "select", "button", "input", "textarea"}
_BOILERPLATE_TAGS = {"nav", "header", "footer", "aside", "form", "dialog", "menu"}
_BOILERPLATE_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "dialog", "alert"}
# Matched against whole class names and ids only ("site-nav", "sidebar"), never parts of
# longer ones ("sidebar-layout" may wrap the whole page).
_BOILERPLATE_NAMES = re.compile(
    r"(?:site|page|main|global|top|primary|secondary)?[-_]?"
    r"(?:nav|navbar|navigation|menu|sidebar|breadcrumbs?|footer|masthead|cookie-?banner|cookies?|skip-?links?)",
    re.IGNORECASE,
)
_BLOCK_TAGS = {
    "address", "article", "blockquote", "body", "dd", "details", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "hr", "main", "ol", "p", "section", "summary", "table", "tbody", "thead", "tfoot", "ul", "caption", "center",
}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_INTERNAL_DTD = re.compile(r"<!DOCTYPE[^\[>]*\[.*?\]\s*>", re.IGNORECASE | re.DOTALL)


def html_to_text(raw: bytes, declared_charset: str | None = None, strip_boilerplate: bool = True) -> tuple[str | None, str]:
    """(title, text) of an HTML page; the text is Markdown-like (``#`` headings, ``-`` items)."""
    from bs4 import BeautifulSoup

    charset = declared_charset
    if charset is None and not raw.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        match = _META_CHARSET.search(raw[:4096])
        charset = match.group(1).decode("ascii").lower() if match else None
    text, _encoding = decode_text(raw, charset)
    # An internal DTD subset (the "billion laughs" entity bomb lives there) is never
    # expanded by this parser; drop it so its text does not leak into the page.
    text = _INTERNAL_DTD.sub("", text[:65536], count=1) + text[65536:]
    soup = BeautifulSoup(text, "html.parser")
    title = None
    if soup.title is not None:
        title = " ".join(soup.title.get_text(" ").split()) or None
    body = _render_blocks(_content_root(soup), True) if strip_boilerplate else ""
    if not body:  # nothing but boilerplate: better the whole page than nothing
        body = _render_blocks(soup.body or soup, False)
    if title is None:
        match = re.search(r"^# (.+)$", body, re.MULTILINE)
        title = match.group(1).strip() if match else None
    return title, body


def _content_root(soup):
    for candidate in (soup.find("main"), soup.find(attrs={"role": "main"})):
        if candidate is not None:
            return candidate
    articles = soup.find_all("article", limit=2)
    if len(articles) == 1:
        return articles[0]
    return soup.body or soup


def _is_boilerplate(tag, inside_article: bool) -> bool:
    if tag.name in _BOILERPLATE_TAGS:
        # An article's own header/footer (its title, byline) belongs to it.
        return not (inside_article and tag.name in ("header", "footer"))
    attrs = tag.attrs or {}
    role = attrs.get("role")
    if isinstance(role, str) and role.lower() in _BOILERPLATE_ROLES:
        return True
    if attrs.get("aria-hidden") == "true" or "hidden" in attrs:
        return True
    classes = attrs.get("class") or []
    names = [*(classes.split() if isinstance(classes, str) else classes), attrs.get("id") or ""]
    return any(_BOILERPLATE_NAMES.fullmatch(name) for name in names if name)


def _render_blocks(root, strip_boilerplate: bool) -> str:
    """Walk the tree without recursion (deeply nested pages are fine) and write Markdown-like text."""
    from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

    skipped_strings = (Comment, Declaration, Doctype, ProcessingInstruction)
    out = _TextWriter()
    stack: list[tuple[object, bool, bool]] = [(root, False, False)]  # node, exiting, inside an article
    while stack:
        node, exiting, in_article = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, skipped_strings):
                out.text(str(node))
            continue
        if not isinstance(node, Tag):
            continue
        name = node.name
        if exiting:
            if name == "pre":
                out.end_pre()
            elif name in ("li", "tr"):
                out.line()
            elif name in _BLOCK_TAGS or name in _HEADINGS:
                out.paragraph()
            continue
        if name in _SKIP_TAGS:
            continue
        if strip_boilerplate and node is not root and _is_boilerplate(node, in_article):
            continue
        if name in _HEADINGS:
            out.paragraph()
            out.raw("#" * _HEADINGS[name] + " ")
        elif name == "li":
            out.line()
            out.raw("- ")
        elif name == "br":
            out.line()
        elif name == "pre":
            out.start_pre()
        elif name in ("td", "th"):
            out.raw(" | ")
        elif name == "tr":
            out.line()
        elif name in _BLOCK_TAGS:
            out.paragraph()
        elif name == "img" and node.get("alt"):
            out.text(f" {node['alt']} ")
        stack.append((node, True, in_article))
        child_in_article = in_article or name == "article"
        stack.extend((child, False, child_in_article) for child in reversed(node.contents))
    return out.result()


class _TextWriter:
    """Collects text pieces; collapses whitespace outside ``<pre>``; joins blocks with blank lines."""

    _PRE = re.compile("\ue000(\\d+)\ue001")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pre_blocks: list[list[str]] = []
        self.pre_depth = 0

    def text(self, value: str) -> None:
        value = value.replace("\ue000", "").replace("\ue001", "")
        if self.pre_depth:
            self.pre_blocks[-1].append(value.replace("\r\n", "\n").replace("\r", "\n"))
        else:
            self.parts.append(re.sub(r"\s+", " ", value))

    def raw(self, value: str) -> None:
        if not self.pre_depth:
            self.parts.append(value)

    def line(self) -> None:
        self._newlines(1)

    def paragraph(self) -> None:
        self._newlines(2)

    def _newlines(self, count: int) -> None:
        """End the current line or paragraph unless it already ends so (spaces aside)."""
        if self.pre_depth:
            return
        tail = "".join(self.parts[-4:]).rstrip(" ")
        have = len(tail) - len(tail.rstrip("\n"))
        if have < count:
            self.parts.append("\n" * (count - have))

    def start_pre(self) -> None:
        if not self.pre_depth:
            self.pre_blocks.append([])
            self.parts.append(f"\n\n\ue000{len(self.pre_blocks) - 1}\ue001\n\n")
        self.pre_depth += 1

    def end_pre(self) -> None:
        self.pre_depth = max(0, self.pre_depth - 1)

    def result(self) -> str:
        text = "\n".join(line.strip() for line in "".join(self.parts).split("\n"))
        text = re.sub(r"^(#+ |- )\s+", r"\1", text, flags=re.MULTILINE)
        text = re.sub(r"^(?:#+|-)$", "", text, flags=re.MULTILINE)  # empty headings and items
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        return self._PRE.sub(lambda match: "".join(self.pre_blocks[int(match.group(1))]).strip("\n"), text)
