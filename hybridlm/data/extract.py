"""Stage 1, extraction: raw records -> plain-text documents.

Bytes are decoded in this order: a byte-order mark (UTF-8, UTF-16, UTF-32) wins; then strict UTF-8;
then the charset an HTML page declares in its first 2 KB; then UTF-8 with replacement characters if
the bytes are clearly UTF-8 with a few damaged sequences; else cp1252, the superset of latin-1 that
browsers use for pages labelled latin-1 (WHATWG). Replacement characters (U+FFFD) introduced by
decoding are counted and reported.

HTML becomes text with the standard library's html.parser: scripts, styles, navigation, headers,
footers, asides, forms and elements whose class/id/role say they are menus, banners or sidebars are
dropped; paragraphs, headings, list items (as "- item") and tables keep their line structure, and
<pre> keeps its whitespace exactly. When a page has <main> or <article> elements, only their text is
kept.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from html.parser import HTMLParser
from typing import Iterable

from .documents import Document, StageReport, progress
from .sources import Raw

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
FALLBACK_ENCODING = "cp1252"


def _decode_counting(data: bytes, encoding: str) -> tuple[str, int]:
    text = data.decode(encoding, errors="replace")
    # U+FFFD already present in the source is not a decoding loss
    return text, text.count("\ufffd") - data.decode(encoding, errors="ignore").count("\ufffd")


def declared_charset(data: bytes) -> str | None:
    """The charset an HTML page declares in a <meta> tag near its start, if Python knows it."""
    match = _META_CHARSET.search(data[:2048])
    if not match:
        return None
    try:
        return codecs.lookup(match.group(1).decode("ascii")).name
    except LookupError:
        return None


def decode_bytes(data: bytes, html: bool = False) -> tuple[str, str, int]:
    """(text, encoding used, replacement characters introduced) for the bytes of one file."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text, bad = _decode_counting(data[len(bom):], encoding.replace("-sig", ""))
            return text, encoding, bad
    try:
        return data.decode("utf-8"), "utf-8", 0
    except UnicodeDecodeError:
        pass
    declared = declared_charset(data) if html else None
    if declared and declared != "utf-8":
        text, bad = _decode_counting(data, declared)
        return text, declared, bad
    text, bad = _decode_counting(data, "utf-8")
    decoded_multibyte = sum(1 for ch in text if ord(ch) > 127) - text.count("\ufffd")
    if decoded_multibyte > 0 and bad <= decoded_multibyte // 10:
        return text, "utf-8", bad  # UTF-8 with a few damaged sequences, not a legacy encoding
    text, bad = _decode_counting(data, FALLBACK_ENCODING)
    return text, FALLBACK_ENCODING, bad


# -- HTML -----------------------------------------------------------------------------------------
_DROPPED_TAGS = {"script", "style", "noscript", "template", "head", "nav", "header", "footer", "aside", "form",
                 "button", "select", "textarea", "iframe", "svg", "canvas", "menu", "dialog", "object"}
_DROPPED_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "dialog"}
_BOILERPLATE_WORDS = {"nav", "navbar", "navigation", "menu", "footer", "header", "sidebar", "cookie", "cookies",
                      "breadcrumb", "breadcrumbs", "advert", "advertisement", "ads", "share", "social", "banner",
                      "popup", "newsletter", "related", "comments"}
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
              "track", "wbr"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl",
               "dt", "dd", "table", "blockquote", "figure", "figcaption", "address", "details", "summary", "body"}
_LINE_TAGS = {"li", "tr", "br", "hr"}
_CONTENT_TAGS = {"main", "article"}


def _is_boilerplate(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    if tag in _DROPPED_TAGS:
        return True
    attrs_map = {k: (v or "").lower() for k, v in attrs}
    if attrs_map.get("role") in _DROPPED_ROLES or attrs_map.get("aria-hidden") == "true" or "hidden" in attrs_map:
        return True
    words = set(re.split(r"[\s_\-]+", attrs_map.get("class", "") + " " + attrs_map.get("id", "")))
    return bool(words & _BOILERPLATE_WORDS)


class _TextExtractor(HTMLParser):
    """Collects text blocks, outside dropped elements, and notes which lie inside <main>/<article>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, bool, bool]] = []  # (text, inside main/article, a list item or row)
        self.line: list[str] = []
        self.item = False  # the current line was opened by <li>, <tr> or <br>
        self.skip: tuple[str, int] | None = None  # (tag being dropped, nesting depth of that tag)
        self.pre = 0
        self.content = 0  # depth of <main>/<article>
        self.seen_content = False

    def _break(self) -> None:
        text = "".join(self.line)
        if not self.pre:
            text = re.sub(r"[ \t\r\n\f\v]+", " ", text).strip()
        if text.strip():
            self.blocks.append((text, self.content > 0, self.item))
        self.line, self.item = [], False

    def handle_starttag(self, tag, attrs):
        if self.skip:
            if tag == self.skip[0] and tag not in _VOID_TAGS:
                self.skip = (tag, self.skip[1] + 1)
            return
        # an article's own <header> holds its title; a page's holds the site banner
        if tag not in _VOID_TAGS and _is_boilerplate(tag, attrs) and not (tag == "header" and self.content):
            self.skip = (tag, 1)
            return
        if tag in _BLOCK_TAGS or tag in _LINE_TAGS or tag == "pre":
            self._break()
            self.item = tag in _LINE_TAGS
        if tag in _CONTENT_TAGS:
            self.content += 1
            self.seen_content = True
        if tag == "pre":
            self.pre += 1
        elif tag == "li":
            self.line.append("- ")
        elif tag in ("td", "th") and self.line:
            self.line.append(" | ")

    def handle_startendtag(self, tag, attrs):
        if not self.skip and tag in _LINE_TAGS:
            self._break()
            self.item = True

    def handle_endtag(self, tag):
        if self.skip:
            if tag == self.skip[0]:
                depth = self.skip[1] - 1
                self.skip = (tag, depth) if depth else None
            return
        if tag in _BLOCK_TAGS or tag in _LINE_TAGS or tag == "pre":
            self._break()
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in _CONTENT_TAGS and self.content:
            self.content -= 1

    def handle_data(self, data):
        if not self.skip:
            self.line.append(data)


def html_to_text(html: str) -> str:
    """The readable text of an HTML page, boilerplate stripped; paragraphs are separated by
    blank lines, list items and table rows by line breaks."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    parser._break()
    out, prev_item = [], False
    for text, in_content, item in parser.blocks:
        if in_content or not parser.seen_content:
            if out:  # list items and table rows one per line; everything else a paragraph apart
                out.append("\n" if item and prev_item else "\n\n")
            out.append(text)
            prev_item = item
    return "".join(out)


# -- the stage ------------------------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """One newline convention, no lone surrogates (JSON can carry them), no NULs, no outer blank space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if _SURROGATE.search(text):  # a regex, not a loop over characters: this ran for a fifth of curation
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.strip()


def extract(records: Iterable[Raw], show_progress: bool = False) -> tuple[list[Document], StageReport]:
    """Raw records -> documents. Removes records with no text (reasons: empty, bad_json, no_text_field, ...)."""
    report = StageReport("extract")
    encodings: Counter = Counter()
    replaced = 0
    docs: list[Document] = []
    for raw in progress(records, "extract", show_progress):
        if raw.problem is not None:
            report.remove(raw.source, raw.problem)
            continue
        text = raw.payload
        if isinstance(text, bytes):
            text, encoding, bad = decode_bytes(text, html=raw.html)
            encodings[encoding] += 1
            replaced += bad
        if raw.html:
            text = html_to_text(text)
        text = clean_text(text)
        if not text:
            report.remove(raw.source, "empty")
            continue
        doc = Document(text, raw.source, raw.origin)
        report.keep(doc)
        docs.append(doc)
    report.info = {"encodings": dict(encodings), "replacement_chars": replaced}
    return docs, report
