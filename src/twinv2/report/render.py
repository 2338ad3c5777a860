"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Inline text uses two Markdown marks only: **bold** and `code`; HTML rendering escapes everything else.
Figures are linked by relative path in Markdown and embedded as base64 PNG in HTML.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class H:
    level: int
    text: str


@dataclass
class P:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Code:
    text: str


@dataclass
class Details:
    summary: str
    text: str


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Doc:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> None:
        self.blocks.extend(b for b in blocks if b is not None)


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Doc, base: Path) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, H):
            out += ["#" * (b.level + 1) + " " + b.text, ""]
        elif isinstance(b, P):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {x}" for x in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [b.caption, ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
        elif isinstance(b, Details):
            out += [f"{b.summary}:", "", "```", b.text.rstrip("\n"), "```", ""]
        elif isinstance(b, Figure):
            rel = Path(b.path).resolve().relative_to(base.resolve()).as_posix()
            out += [f"![{b.caption}]({rel})", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(s: str) -> str:
    s = html.escape(str(s), quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
img{max-width:100%}figcaption{font-style:italic;color:#555}.cap{color:#444;margin-bottom:.2em}"""


def to_html(doc: Doc) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(doc.title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{_inline(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, H):
            out.append(f"<h{b.level + 1}>{_inline(b.text)}</h{b.level + 1}>")
        elif isinstance(b, P):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            if b.caption:
                out.append(f"<div class='cap'>{_inline(b.caption)}</div>")
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
        elif isinstance(b, Code):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{_inline(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b.caption, quote=True)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
