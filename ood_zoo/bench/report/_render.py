"""The report as HTML (inline CSS, embedded images, no script) and as Markdown."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ._blocks import Block, Bullets, Cell, Figure, Heading, Para, Table

#: Cells with at most this many characters are not wrapped.
_SHORT = 24

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1f2328; background: #fff; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0 0 .3em; }
h2 { font-size: 1.35em; margin: 2em 0 .5em; padding-top: .6em; border-top: 2px solid #d0d7de; }
h3 { font-size: 1.1em; margin: 1.6em 0 .4em; }
h4 { font-size: 1em; margin: 1.2em 0 .3em; }
p { margin: .5em 0; }
.note { color: #59636e; font-size: .9em; }
.missing { color: #9a3412; background: #fff7ed; border: 1px solid #fdba74; padding: 6px 10px;
  border-radius: 4px; }
nav ul { columns: 2; margin: .3em 0; }
.scroll { overflow-x: auto; margin: .5em 0 1em; }
table { border-collapse: collapse; font-size: .86em; font-variant-numeric: tabular-nums; }
table.small { font-size: .78em; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; font-weight: 600; }
tbody tr:nth-child(even) td { background-color: #fafbfc; }
td.num { text-align: right; }
td.num, td.short { white-space: nowrap; }
td .sub { display: block; color: #6e7781; font-size: .82em; }
td.best { background-color: #dafbe1 !important; font-weight: 700; }
td.best .sub { font-weight: 400; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: .9em; color: #59636e; margin-top: .2em; }
details { margin: 1em 0; }
summary { cursor: pointer; font-weight: 600; }
code { font-size: .92em; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_cell(cell: Cell) -> str:
    flags = (("num", cell.num), ("best", cell.best), ("short", len(cell.text) <= _SHORT))
    classes = " ".join(c for c, on in flags if on)
    attrs = f' class="{classes}"' if classes else ""
    if cell.title:
        attrs += f' title="{_e(cell.title)}"'
    if cell.shade is not None and not cell.best:
        attrs += f' style="background-color: rgba(9, 105, 218, {0.35 * cell.shade:.2f})"'
    sub = f'<span class="sub">{_e(cell.sub)}</span>' if cell.sub else ""
    return f"<td{attrs}>{_e(cell.text)}{sub}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_e(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_e(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f'<p class="note">{_e(block.text)}</p>' if block.note else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        # a break opportunity after each underscore keeps long detector names narrow
        head = "".join(f"<th>{_e(h).replace('_', '_<wbr>')}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>"
                       for row in block.rows)
        css = ' class="small"' if block.small else ""
        return (f'<div class="scroll"><table{css}><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")
    if isinstance(block, Figure):
        if block.path is None:
            return f'<p class="missing">{_e(block.problem)}</p>'
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    inner = "\n".join(_html_block(b) for b in block.blocks)
    return f"<details><summary>{_e(block.summary)}</summary>\n{inner}\n</details>"


def _contents(blocks: Sequence[Block]) -> list[tuple[str, str]]:
    return [(b.anchor, b.text) for b in blocks if isinstance(b, Heading) and b.level == 2]


def render_html(title: str, blocks: Sequence[Block]) -> str:
    """The page: inline CSS, embedded images, no script; a policy blocks any outside fetch."""
    nav = "".join(f'<li><a href="#{_e(a)}">{_e(t)}</a></li>' for a, t in _contents(blocks))
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n<nav><strong>Contents</strong><ul>{nav}</ul></nav>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------- Markdown
def _md_text(text: str, *, block: bool = False) -> str:
    """Markdown-escaped inline text: no accidental emphasis, code, links, HTML or table cells;
    with ``block``, no heading, quote or list either."""
    out = text.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for char in "`*|<[]&":
        out = out.replace(char, "\\" + char)
    return "\\" + out if block and out[:1] in ("#", ">", "-", "+") else out


def _md_block(block: Block, out_dir: Path) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_md_text(block.text)}"
    if isinstance(block, Para):
        text = _md_text(block.text, block=True)
        return f"_{text}_" if block.note else text
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_text(i, block=True)}" for i in block.items)
    if isinstance(block, Table):
        def cell(c: Cell) -> str:
            text = _md_text(f"{c.text} {c.sub}".strip())
            return f"**{text}**" if c.best and text else text

        lines = ["| " + " | ".join(_md_text(h) for h in block.headers) + " |",
                 "|" + "|".join("---" for _ in block.headers) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        if block.path is None:
            return f"> **Note:** {_md_text(block.problem)}"
        target = quote(Path(os.path.relpath(block.path.resolve(), out_dir.resolve())).as_posix())
        return f"![{_md_text(block.caption)}]({target})"
    inner = "\n\n".join(_md_block(b, out_dir) for b in block.blocks)
    return f"**{_md_text(block.summary)}**\n\n{inner}"


def render_markdown(title: str, blocks: Sequence[Block], out_dir: Path) -> str:
    """The Markdown twin: the same tables; figures by path relative to ``out_dir``."""
    contents = "\n".join(f"- {_md_text(t)}" for _, t in _contents(blocks))
    body = "\n\n".join(_md_block(b, out_dir) for b in blocks)
    return f"# {_md_text(title)}\n\n**Contents**\n\n{contents}\n\n{body}\n"
