"""`report.html` next to every `report.md` (eval, search, attack and `t2vu run` folders): one renderer.

Why from the Markdown: the Markdown report already decides what a reader sees first (the headline
table, then base vs erased videos, then the long tables); rendering that one text keeps the two
files from ever telling different stories, and every report gets a page without code of its own.

The subset understood is the one the reports write: `#`/`##`/`###` headings (each `##` opens a
`<section id=slug>`), `- ` bullets, pipe tables, fenced code, paragraphs; inline `code`, **bold**,
![images](src) and [links](href), and backslash escapes (`\\|`, `\\*`, ...: how prompts, which are
user data, reach the Markdown literally). Every piece of text is HTML-escaped before any tag is
added, so a prompt can never become markup; an image or link whose address names a scheme other
than http(s) is written as text. An image pointing at a video file becomes a looping `<video>`.
A table row whose last cell starts with FLAG is marked (`<tr class="flagged">`, red): the eval report
puts it on rows whose videos are degenerate, whose prompt was truncated, or that show the concept
where it was not asked for.

The page is self-contained (inline CSS, no script); images are the run folder's own files,
addressed relative to it.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

FLAG = "⚑"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;display:block;overflow-x:auto;max-width:100%}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:middle}th{background:#f2f2f2}tr.flagged td{background:#fde2e2}tr.flagged td:first-child{
border-left:4px solid #c62828}section#headline table{font-size:1.1em}section#headline td:first-child{font-weight:600}
img,video{image-rendering:pixelated;max-width:100%}td img,td video{height:96px}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}
""".strip()

_ESC = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_TOKEN = "\x00{}\x00"


def md_escape(text: str) -> str:
    """`text` (a prompt, a file name: user data) as Markdown that shows it literally, on one line."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_{}\[\]()#!|<>~])", r"\\\1", text)


def _safe_url(url: str) -> str | None:
    url = url.strip()
    if _SCHEME.match(url) and not url.lower().startswith(("http://", "https://")):
        return None  # javascript:, data:, file: ... never from a report
    return url


def _inline(text: str) -> str:
    """One line of Markdown -> HTML; everything not markup is escaped."""
    kept: list[str] = []

    def keep(piece: str) -> str:
        kept.append(piece)
        return _TOKEN.format(len(kept) - 1)

    text = _ESC.sub(lambda m: keep(html.escape(m.group(1))), text)  # escaped characters are text, not markup
    text = re.sub(r"`([^`]*)`", lambda m: keep(f"<code>{html.escape(_unkeep(m.group(1), kept))}</code>"), text)

    def media(m: re.Match) -> str:
        alt, url = _unkeep(m.group(1), kept), _safe_url(_unkeep(m.group(2), kept))
        if url is None:
            return keep(html.escape(m.group(0)))
        a, u = html.escape(alt, quote=True), html.escape(url, quote=True)
        if url.lower().endswith(VIDEO_SUFFIXES):
            return keep(f'<video src="{u}" title="{a}" autoplay loop muted playsinline></video>')
        return keep(f'<img src="{u}" alt="{a}" title="{a}">')

    def link(m: re.Match) -> str:
        url = _safe_url(_unkeep(m.group(2), kept))
        label = _rest(m.group(1), kept)
        return keep(label if url is None else f'<a href="{html.escape(url, quote=True)}">{label}</a>')

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", media, text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, text)
    return _rest(text, kept)


def _unkeep(text: str, kept: list[str]) -> str:
    """A kept escape back as its plain character (inside code and addresses, escapes are literal)."""
    return re.sub("\x00(\\d+)\x00", lambda m: html.unescape(kept[int(m.group(1))]), text)


def _rest(text: str, kept: list[str]) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    for _ in range(3):  # kept pieces may hold kept pieces (an escape inside an image's alt text)
        out = re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], out)
    return out


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line[1:] if line.startswith("|") else line
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"[`*\\]", "", text).lower()).strip("-") or "section"


def _table(lines: list[str]) -> str:
    header, body = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr></thead>", "<tbody>"]
    for row in body:
        flagged = bool(row) and row[-1].startswith(FLAG)  # the last column only: a prompt may start with anything
        out.append(("<tr class=\"flagged\">" if flagged else "<tr>") + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    return "\n".join([*out, "</tbody>", "</table>"])


def markdown_to_html(md: str, title: str | None = None) -> str:
    """A whole page from the reports' Markdown (see the module docstring for the subset)."""
    lines = md.splitlines()
    body: list[str] = []
    in_section = False
    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"^(#{1,3})\s+(.*)$", s)
        if m:
            level, text = len(m.group(1)), m.group(2)
            if level == 2:
                body.append("</section>" if in_section else "")
                body.append(f'<section id="{_slug(text)}">')
                in_section = True
            title = title or (re.sub(r"[`*\\]", "", text) if level == 1 else None)
            body.append(f"<h{level}>{_inline(text)}</h{level}>")
            i += 1
            continue
        if s.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3}", lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table(lines[i:j]))
            i = j
            continue
        if s.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        if s:
            para = [s]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |```)", lines[i].strip()):
                para.append(lines[i].strip())
                i += 1
            body.append("<p>" + " ".join(_inline(x) for x in para) + "</p>")
            continue
        i += 1
    if in_section:
        body.append("</section>")
    head = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "report")}'
            f"</title><style>{_CSS}</style></head>")
    return head + "\n<body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n"


def write_html(md_path: str | Path) -> Path:
    """report.html next to `md_path` (atomic write), from that file's text."""
    from unlearn.fsutil import atomic_write_text

    md_path = Path(md_path)
    out = md_path.with_suffix(".html")
    atomic_write_text(out, markdown_to_html(md_path.read_text(encoding="utf-8")))
    return out
