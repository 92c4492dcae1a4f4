"""The report's page template and the few HTML builders it needs.

The template lives in code rather than a package data file so an installed wheel always has it,
and the page takes no scripts, fonts or stylesheets from anywhere: the report is shared by mail
and opened offline. Every piece of text that came from data passes through :func:`esc`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from string import Template

__all__ = ["Cell", "esc", "img", "page", "section", "table"]

_CSS = """
:root { --go: #1b7f3b; --nogo: #b3261e; --ink: #1d1d1f; --muted: #5f6368; --rule: #dadce0; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1080px; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--rule); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.verdict { border-radius: 8px; padding: 16px 20px; color: #fff; margin: 12px 0 8px; }
.verdict.go { background: var(--go); } .verdict.nogo { background: var(--nogo); }
.verdict .big { font-size: 30px; font-weight: 700; letter-spacing: .5px; }
.verdict ul { margin: 8px 0 0 18px; padding: 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--rule); padding: 5px 10px; vertical-align: top; }
.l { text-align: left; } .r { text-align: right; }
th { background: #f6f8fa; font-weight: 600; }
td.pass { color: var(--go); font-weight: 600; } td.fail { color: var(--nogo); font-weight: 600; }
td.na { color: var(--muted); }
.ci { color: var(--muted); font-size: 12px; white-space: nowrap; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: 13px; }
.note { color: var(--muted); font-size: 13px; }
code { font-size: 12.5px; background: #f6f8fa; padding: 1px 4px; border-radius: 3px; }
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>$title</title>
<style>$css</style>
</head>
<body>
$body
</body>
</html>
""")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str) -> str:
    """A whole document. The content security policy forbids every outside resource, so a
    report that renders offline renders everywhere."""
    return _PAGE.substitute(title=esc(title), css=_CSS, body=body)


def section(title: str, body: str, *, anchor: str | None = None) -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}>\n<h2>{esc(title)}</h2>\n{body}\n</section>"


@dataclass(frozen=True)
class Cell:
    """A table cell with a CSS class (``pass``, ``fail``, ``na``); ``html`` is markup."""

    html: str
    klass: str


def table(headers: Sequence[str], rows: Iterable[Sequence[str | Cell]], *, align: str = "") -> str:
    """Cells are markup already (callers escape data and may add spans); headers are text.
    ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    spec = align or "l" + "r" * (len(headers) - 1)
    head = "".join(f"<th class='{spec[i]}'>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(_cell(c, spec[i]) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _cell(cell: str | Cell, align: str) -> str:
    if isinstance(cell, Cell):
        return f"<td class='{align} {esc(cell.klass)}'>{cell.html}</td>"
    return f"<td class='{align}'>{cell}</td>"


def img(png_b64: str, alt: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{png_b64}" alt="{esc(alt)}">{cap}</figure>'
