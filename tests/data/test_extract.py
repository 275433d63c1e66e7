import codecs

from hybridlm.data.extract import decode_bytes, extract, html_to_text
from hybridlm.data.sources import ReadOptions, read_paths

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Site title | Example</title>
<style>body { color: red }</style><script>var tracking = "SCRIPTTEXT";</script></head>
<body>
<header><a href="/">HOMELINK</a></header>
<nav><ul><li>NAVITEM one</li><li>NAVITEM two</li></ul></nav>
<div class="cookie-banner">COOKIETEXT accept</div>
<main>
<article>
<header><h1>The Heading of the Article</h1></header>
<p>First paragraph with <b>bold</b> words &amp; an entity.</p>
<p>Second
   paragraph, wrapped   over lines.</p>
<ul><li>apples</li><li>pears</li></ul>
<pre>def f(x):
    return x  # indentation kept</pre>
<form><input name="q"><button>SEARCHBUTTON</button></form>
<footer>ARTICLEFOOTER author bio</footer>
</article>
</main>
<aside>ASIDETEXT related links</aside>
<div id="sidebar"><p>SIDEBARTEXT</p></div>
<footer>FOOTERTEXT copyright</footer>
</body></html>"""


def test_boilerplate_is_stripped_and_the_article_survives():
    text = html_to_text(PAGE)
    for boilerplate in ("SCRIPTTEXT", "color: red", "HOMELINK", "NAVITEM", "COOKIETEXT", "SEARCHBUTTON",
                        "ARTICLEFOOTER", "ASIDETEXT", "SIDEBARTEXT", "FOOTERTEXT", "Site title"):
        assert boilerplate not in text, boilerplate
    assert "The Heading of the Article" in text  # an article's own header is content
    assert "First paragraph with bold words & an entity." in text
    assert "Second paragraph, wrapped over lines." in text
    assert "- apples\n- pears" in text
    assert "def f(x):\n    return x  # indentation kept" in text


def test_a_page_without_main_keeps_its_body_text():
    text = html_to_text("<html><body><nav>MENU</nav><h2>Title</h2><p>Body text here.</p>"
                        "<table><tr><td>a</td><td>b</td></tr></table></body></html>")
    assert text == "Title\n\nBody text here.\n\na | b"


def test_encodings():
    assert decode_bytes("héllo wörld".encode("utf-8")) == ("héllo wörld", "utf-8", 0)
    assert decode_bytes(codecs.BOM_UTF8 + "café".encode()) == ("café", "utf-8-sig", 0)
    assert decode_bytes(codecs.BOM_UTF16_LE + "naïve".encode("utf-16-le")) == ("naïve", "utf-16-le", 0)
    # latin-1 bytes are not UTF-8: the cp1252 fallback reads them, smart quotes included
    assert decode_bytes("café “quoted” naïve".encode("cp1252")) == ("café “quoted” naïve", "cp1252", 0)
    # 0x81 is unassigned in cp1252: one replacement character, counted
    assert decode_bytes(b"caf\xe9 \x81") == ("café \ufffd", "cp1252", 1)
    # UTF-8 with one damaged byte stays UTF-8, with the damage counted
    damaged = "ünïcödé text ".encode() * 5 + b"\xff"
    text, encoding, bad = decode_bytes(damaged)
    assert (encoding, bad) == ("utf-8", 1) and text.startswith("ünïcödé")
    # an HTML page's declared charset is used when the bytes are not UTF-8
    page = '<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251")
    assert decode_bytes(page, html=True)[:2] == ('<meta charset="windows-1251"><p>Привет</p>', "cp1251")


def test_stage_reports_encodings_and_empty_files(tmp_path):
    (tmp_path / "latin.txt").write_bytes("Un café très naïf.".encode("latin-1"))
    (tmp_path / "bom.md").write_bytes(codecs.BOM_UTF8 + "# Title\r\n\r\nText with a BOM.\r\n".encode())
    (tmp_path / "page.html").write_text(PAGE, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n\n ")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs, report = extract(read_paths([tmp_path], "web", ReadOptions()))
    texts = {d.origin.rsplit("/", 1)[-1]: d.text for d in docs}
    assert texts["latin.txt"] == "Un café très naïf."
    assert texts["bom.md"] == "# Title\n\nText with a BOM."  # no U+FEFF, one newline convention
    assert "SCRIPTTEXT" not in texts["page.html"] and "First paragraph" in texts["page.html"]
    assert (report.docs_in, report.kept, dict(report.removed)) == (4, 3, {"empty": 1})
    assert report.info["encodings"] == {"cp1252": 1, "utf-8-sig": 1, "utf-8": 2}
    assert report.by_source["web"]["kept"] == 3
